"""Train one JointDiffusion on the robot arm and score every conditional.

Each conditional of :mod:`sbi_diffusion.benchmark.inverse_kinematics` is sampled
from the one trained model (guidance for the elbow-up constraint, NaN for a
missing coordinate, which the posterior samples with the latent block and
drops, ``build_conditional`` for the fixed offset, the posterior's
angle columns for the angle marginal) and compared with its reference samples
by ``sbibm.metrics.c2st`` (10,000 against 10,000). One JSON row per conditional
is appended to the output file.

    OMP_NUM_THREADS=1 python benchmarks/inverse_kinematics/score_conditionals.py \\
        --simulations 10000 --output benchmarks/results/inverse_kinematics.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from sbibm.metrics import c2st

from sbi_diffusion import ConstraintGuidance, JointDiffusion
from sbi_diffusion.benchmark import inverse_kinematics as ik
from sbi_diffusion.benchmark.runner import device_name, package_versions

NET_KWARGS = {"width": 64, "depth": 4}
"""The transformer of the tutorial (JointDiffusion's default size)."""

TRAIN_KWARGS = {"training_batch_size": 256, "learning_rate": 1e-3}
"""The training options of the tutorial."""


def sample_conditional(
    inference: JointDiffusion, name: str, num_samples: int
) -> torch.Tensor:
    """Samples of conditional ``name`` from the trained joint model.

    Args:
        inference: The trained joint model.
        name: A key of ``ik.CONDITIONALS``.
        num_samples: Samples to draw.

    Returns:
        ``(num_samples, 4)`` parameters, or ``(num_samples, 3)`` angles.
    """
    x_o = torch.tensor(ik.OBSERVATION)
    posterior = inference.build_posterior()
    options = {"show_progress_bars": False}
    if name == "posterior":
        return posterior.sample((num_samples,), x=x_o, **options)
    if name == "angles":
        return posterior.sample((num_samples,), x=x_o, **options)[:, 1:]
    if name == "elbow_up":
        guidance = ConstraintGuidance(ik.elbow_up)
        return posterior.sample((num_samples,), x=x_o, guidance=guidance, **options)
    if name in ("height_only", "reach_only"):
        x_missing = x_o.clone()
        x_missing[1 if name == "height_only" else 0] = float("nan")
        return posterior.sample((num_samples,), x=x_missing, **options)
    if name == "offset_fixed":
        observed = torch.tensor([True, False, False, False, True, True])
        conditional = inference.build_conditional(observed)
        condition = torch.cat([torch.zeros(1), x_o])
        return conditional.sample((num_samples,), condition=condition)
    raise ValueError(f"Unknown conditional {name!r}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-num-epochs", type=int, default=None)
    parser.add_argument(
        "--max-num-steps", type=int, default=None, help="default: the trainer's"
    )
    parser.add_argument("--width", type=int, default=NET_KWARGS["width"])
    parser.add_argument("--depth", type=int, default=NET_KWARGS["depth"])
    parser.add_argument("--save", help="file to save the trained JointDiffusion in")
    parser.add_argument(
        "--output", default="benchmarks/results/inverse_kinematics.jsonl"
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    task = ik.InverseKinematicsTask()
    theta = task.sample_prior(args.simulations)
    x = task.simulate(theta)
    net_kwargs = {"width": args.width, "depth": args.depth}
    train_kwargs = dict(TRAIN_KWARGS)
    if args.max_num_steps is not None:
        train_kwargs["max_num_steps"] = args.max_num_steps
    inference = JointDiffusion(
        task.prior, net_kwargs=net_kwargs, show_progress_bars=False
    )
    start = time.perf_counter()
    inference.append_simulations(theta, x).train(
        seed=args.seed, max_num_epochs=args.max_num_epochs, **train_kwargs
    )
    train_s = time.perf_counter() - start
    print(f"trained in {train_s:.0f} s", flush=True)
    print(inference.resolved_training, flush=True)
    if args.save:
        torch.save(inference, args.save)
    resolved = inference.resolved_training
    for name in ik.CONDITIONALS:
        reference = ik.cached_reference_samples(name)
        torch.manual_seed(args.seed + 1)
        start = time.perf_counter()
        samples = sample_conditional(inference, name, args.samples)
        sample_s = time.perf_counter() - start
        score = float(c2st(reference.samples[: args.samples], samples)[0])
        row = {
            "task": ik.NAME,
            "conditional": name,
            "method": "joint",
            "options": {"net_kwargs": net_kwargs, **train_kwargs},
            "resolved_training": resolved,
            "sampler": {
                "name": inference.build_posterior().sampler,
                **inference.build_posterior().sampler_options,
            },
            "num_simulations": args.simulations,
            "seed": args.seed,
            "c2st": score,
            "train_s": round(train_s, 3),
            "sample_s": round(sample_s, 4),
            "reference_ess": round(reference.effective_sample_size),
            "device": device_name("cpu"),
            "versions": package_versions(),
            "protocol": {
                "metric": "sbibm.metrics.c2st",
                "num_posterior_samples": args.samples,
                "num_reference_samples": args.samples,
            },
        }
        if name == "elbow_up":
            row["fraction_satisfied"] = float(
                (ik.elbow_up(samples) <= 0).float().mean()
            )
        print(f"{name}: c2st={score:.3f} sample={sample_s:.1f}s", flush=True)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "a") as file:
            file.write(json.dumps(row, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
