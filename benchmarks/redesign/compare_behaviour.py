"""Record samples and densities on fixed seeds, and compare two records.

A refactoring must not change what the package computes. This script trains
small models with fixed seeds on a 2-d linear-Gaussian problem and records, for
each of them, samples from every sampler, every i.i.d. composition method and
every guidance transform, ODE log-densities, the joint model's conditionals and
the consistency model's one- and few-step samples. Run it on the code before
and after a change and compare the two records:

    python benchmarks/redesign/compare_behaviour.py record before.pt
    # ... change the code ...
    python benchmarks/redesign/compare_behaviour.py record after.pt
    python benchmarks/redesign/compare_behaviour.py compare before.pt after.pt

``compare`` prints the largest absolute difference per entry and exits with
status 1 if any entry differs by more than ``--atol`` (default 0: identical).
Only public imports are used, so the script runs on either layout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
from torch.distributions import MultivariateNormal

from sbi_diffusion import (
    ClassifierFreeGuidance,
    ConsistencyNPE,
    ConstraintGuidance,
    DiffusionNPE,
    FlowMatchingNPE,
    JointDiffusion,
    LikelihoodTemperature,
    PriorSwap,
)
from sbi_diffusion.guidance import interval_constraint

DIM = 2
NUM_SIMULATIONS = 600
NUM_SAMPLES = 64
SAMPLERS = {
    "heun": {},
    "euler": {},
    "euler_maruyama": {"steps": 60},
    "ddim": {"steps": 30},
    "dpm++2m": {},
    "dopri5": {},
    "adaptive_sde": {},
}
IID_METHODS = ("gauss", "jac", "factorized", "factorized_bridge")
TRAIN = {"max_num_epochs": 15, "training_batch_size": 100}


def problem() -> tuple[MultivariateNormal, Callable, torch.Tensor, torch.Tensor]:
    """Prior N(0, 4 I), simulator x = theta + N(0, 0.25 I); training data."""
    prior = MultivariateNormal(torch.zeros(DIM), 4.0 * torch.eye(DIM))

    def simulate(theta: torch.Tensor) -> torch.Tensor:
        return theta + 0.5 * torch.randn_like(theta)

    torch.manual_seed(0)
    theta = prior.sample((NUM_SIMULATIONS,))
    return prior, simulate, theta, simulate(theta)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def record_posterior(
    out: dict, name: str, posterior, x_o: torch.Tensor, samplers: dict
) -> None:
    for i, (sampler, options) in enumerate(samplers.items()):
        torch.manual_seed(100 + i)
        out[f"{name}/sample/{sampler}"] = posterior.sample(
            (NUM_SAMPLES,),
            x=x_o,
            sampler=sampler,
            generator=generator(100 + i),
            show_progress_bars=False,
            **options,
        )
    theta = torch.linspace(-2, 2, 2 * 8).reshape(8, DIM)
    out[f"{name}/log_prob"] = posterior.log_prob(theta, x=x_o)


def record(path: str) -> None:
    torch.set_num_threads(1)
    prior, simulate, theta, x = problem()
    torch.manual_seed(1)
    x_o = simulate(torch.tensor([[0.5, -1.0]]))
    trials = simulate(torch.tensor([[0.5, -1.0]]).expand(3, DIM))
    out: dict[str, torch.Tensor] = {}

    torch.manual_seed(2)
    diffusion = DiffusionNPE(prior, condition_dropout=0.1, show_progress_bars=False)
    diffusion.append_simulations(theta, x).train(**TRAIN, seed=0)
    posterior = diffusion.build_posterior()
    record_posterior(out, "diffusion", posterior, x_o, SAMPLERS)
    for i, method in enumerate(IID_METHODS):
        torch.manual_seed(200 + i)
        out[f"diffusion/iid/{method}"] = posterior.sample(
            (NUM_SAMPLES,),
            x=trials,
            iid_method=method,
            generator=generator(200 + i),
            show_progress_bars=False,
        )
    transforms = {
        "cfg": ClassifierFreeGuidance(2.0),
        "constraint": ConstraintGuidance(
            interval_constraint(low=torch.tensor([0.0, -1e9]))
        ),
        "prior_swap": PriorSwap(
            MultivariateNormal(torch.ones(DIM), 0.5 * torch.eye(DIM))
        ),
        "temperature": LikelihoodTemperature(2.0),
    }
    for i, (label, transform) in enumerate(transforms.items()):
        torch.manual_seed(300 + i)
        out[f"diffusion/guidance/{label}"] = posterior.sample(
            (NUM_SAMPLES,),
            x=x_o,
            guidance=transform,
            generator=generator(300 + i),
            show_progress_bars=False,
        )

    torch.manual_seed(3)
    flow = FlowMatchingNPE(prior, show_progress_bars=False)
    flow.append_simulations(theta, x).train(**TRAIN, seed=0)
    record_posterior(
        out, "flow_matching", flow.build_posterior(), x_o, {"heun": {}, "dopri5": {}}
    )

    torch.manual_seed(4)
    consistency = ConsistencyNPE(prior, show_progress_bars=False)
    consistency.append_simulations(theta, x).train(**TRAIN, seed=0)
    consistency_posterior = consistency.build_posterior()
    for steps in (1, 2):
        torch.manual_seed(400 + steps)
        out[f"consistency/sample/{steps}"] = consistency_posterior.sample(
            (NUM_SAMPLES,),
            x=x_o,
            steps=steps,
            generator=generator(400 + steps),
            show_progress_bars=False,
        )

    torch.manual_seed(5)
    joint = JointDiffusion(prior, show_progress_bars=False)
    joint.append_simulations(theta, x).train(**TRAIN, seed=0)
    joint_posterior = joint.build_posterior()
    record_posterior(out, "joint/posterior", joint_posterior, x_o, {"heun": {}})
    likelihood = joint.build_likelihood()
    torch.manual_seed(500)
    out["joint/likelihood/sample"] = likelihood.sample(
        (NUM_SAMPLES,),
        torch.tensor([[0.5, -1.0]]),
        generator=generator(500),
        show_progress_bars=False,
    )
    mask = torch.tensor([False, True, True, False])
    conditional = joint.build_conditional(mask)
    torch.manual_seed(501)
    out["joint/conditional/sample"] = conditional.sample(
        (NUM_SAMPLES,),
        condition=torch.tensor([[-1.0, 0.3]]),
        generator=generator(501),
        show_progress_bars=False,
    )
    torch.manual_seed(502)
    out["joint/likelihood/log_prob"] = likelihood.log_prob(
        out["joint/likelihood/sample"][:8], torch.tensor([[0.5, -1.0]])
    )
    torch.save(out, path)
    print(f"recorded {len(out)} entries to {path}")


def compare(before_path: str, after_path: str, atol: float) -> int:
    before, after = torch.load(before_path), torch.load(after_path)
    worst = 0.0
    for key in sorted(set(before) | set(after)):
        if key not in before or key not in after:
            print(f"{key:40s} only in {'after' if key in after else 'before'}")
            worst = float("inf")
            continue
        a, b = before[key], after[key]
        if a.shape != b.shape:
            print(f"{key:40s} shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
            worst = float("inf")
            continue
        diff = (a - b).abs().nan_to_num(nan=float("inf")).max().item()
        same = "identical" if torch.equal(a, b) else f"max |diff| = {diff:.3g}"
        print(f"{key:40s} {same}")
        worst = max(worst, diff)
    print(f"largest difference: {worst:.3g} over {len(before)} entries")
    return 0 if worst <= atol else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="train, sample and save a record")
    rec.add_argument("path")
    cmp = sub.add_parser("compare", help="compare two records")
    cmp.add_argument("before")
    cmp.add_argument("after")
    cmp.add_argument("--atol", type=float, default=0.0)
    args = parser.parse_args()
    if args.command == "record":
        record(args.path)
    else:
        sys.exit(compare(args.before, args.after, args.atol))


if __name__ == "__main__":
    main()
