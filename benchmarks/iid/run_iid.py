"""Benchmark of i.i.d. composition: C2ST and time per method and number of trials.

Trains one single-trial model per task (cached), then for ``N`` trials compares
the posterior composed by each of our methods, and by sbi 0.27's own i.i.d.
methods (``fnpe``, ``gauss``, ``auto_gauss``, ``jac_gauss`` of
``VectorFieldPosterior``, Euler-Maruyama with ``--sbi-steps`` steps) on the same
trained estimator (in its standardised space, since sbi 0.27 refuses i.i.d.
sampling with composed standardisation), with the reference posterior. Tasks:

* ``gaussian_linear`` (sbibm's definition: ``d = 10``, ``theta ~ N(0, 0.1 I)``,
  ``x ~ N(theta, 0.1 I)``): the ``N``-trial posterior is analytic; the model is
  trained here (``--simulations``, ``--epochs``, with condition dropout), and
  ``--seeds`` pick the true parameters.
* ``two_moons`` and ``slcp``: the model is the benchmark grid's default
  ``DiffusionNPE`` at ``--simulations`` simulations (10^4 unless given;
  ``outputs/models``, trained there if missing), trials are sbibm's
  observation plus simulations at its true parameter, and the reference
  posterior is sampled from the exact likelihood
  (:mod:`sbi_diffusion.benchmark.iid_references`); ``--seeds`` are sbibm
  observation numbers.

Results are appended to a JSONL file, one row per run; finished rows are skipped,
so the script can be interrupted and resumed.

Example:
    PYTHONUNBUFFERED=1 python benchmarks/iid/run_iid.py --trials 1 10 100
    PYTHONUNBUFFERED=1 python benchmarks/iid/run_iid.py --task two_moons --seeds 1
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from sbi.inference.posteriors.vector_field_posterior import VectorFieldPosterior
from sbi.utils import BoxUniform
from sbi.utils.metrics import c2st
from torch.distributions import MultivariateNormal

from sbi_diffusion import DiffusionNPE, FlowMatchingNPE
from sbi_diffusion.benchmark.iid_references import (
    iid_observation,
    iid_reference_posterior,
)

HERE = Path(__file__).resolve().parent


def em(method: str, steps: int, final_denoise: bool, **options) -> tuple:
    """``(iid_method, sampler, options)`` on Euler-Maruyama with ``steps``."""
    return (
        method,
        "euler_maruyama",
        {"steps": steps, "final_denoise": final_denoise, **options},
    )


OURS = {
    # name: (iid_method, sampler, sampler options). Names without ``_z`` end with
    # the final denoising step theta = x_hat(z, t_min), the package default for
    # i.i.d. trials until it was switched off; ``_z`` names return z_{t_min} (the
    # default since), as sbi's samplers do.
    "ours_gauss_dopri5": ("gauss", "dopri5", {"final_denoise": True}),
    "ours_jac_heun": ("jac", "heun", {"steps": 30, "final_denoise": True}),
    "ours_factorized_em": em("factorized", 500, True),
    "ours_factorized_em_langevin": em("factorized", 200, True, corrector="langevin"),
    # the counterpart of sbi's ``fnpe`` (same score, same sampler and steps)
    "ours_factorized_bridge_em": em("factorized_bridge", 500, True),
    # the same, returning z_{t_min} instead of the final denoising step (as sbi)
    "ours_factorized_bridge_em_z": em("factorized_bridge", 500, False),
    "ours_factorized_bridge_dopri5_z": (
        "factorized_bridge",
        "dopri5",
        {"final_denoise": False},
    ),
    "ours_gauss_dopri5_z": ("gauss", "dopri5", {"final_denoise": False}),
    "ours_jac_heun_z": ("jac", "heun", {"steps": 30, "final_denoise": False}),
    # the compositions on a stochastic sampler (Euler-Maruyama, 200 steps)
    "ours_gauss_em200_z": em("gauss", 200, False),
    "ours_gauss_em500_z": em("gauss", 500, False),
    "ours_jac_em200_z": em("jac", 200, False),
    # GAUSS on stochastic samplers that handle the stiff start of the
    # rectified-flow path better than Euler-Maruyama on the schedule's grid:
    # ancestral sampling (DDIM with eta = 1) and Euler-Maruyama uniform in log-SNR
    "ours_gauss_ddim_eta1_200_z": (
        "gauss",
        "ddim",
        {"steps": 200, "eta": 1.0, "final_denoise": False},
    ),
    "ours_gauss_em200_logsnr_z": em("gauss", 200, False, spacing="logsnr"),
    # predictor-corrector (Song et al. 2021): one Langevin step on the composed
    # score after each of 250 Euler-Maruyama steps (the NFE of 500 steps)
    "ours_gauss_em250_langevin_z": em("gauss", 250, False, corrector="langevin"),
}
SBI = ("fnpe", "gauss", "auto_gauss", "jac_gauss")
IID_OPTION_SUFFIXES = {
    "_exactprior": (("gauss", "jac"), {"prior_precision": "exact"}),
    "_gaussianprior": (("gauss", "jac"), {"prior_precision": "gaussian"}),
    "_floor": (("gauss",), {"noise_floor": 0.5}),
}
"""Suffixes of a method of ``OURS`` run with further composition options:
``_exactprior`` (the exact denoising precision of the analytic prior, GAUSS's
only one before that option existed; rows of box-prior tasks written before
carry it), ``_gaussianprior`` (the moment-matched Gaussian prior's, for JAC,
whose default is the exact one) and ``_floor`` (GAUSS with ``noise_floor=0.5``,
the default of the hierarchical composition)."""


def ours_method(method: str) -> tuple[str, str, dict] | None:
    """``(iid_method, sampler, options)`` of one of our methods, or None."""
    if method in OURS:
        return OURS[method]
    for suffix, (methods, iid_options) in IID_OPTION_SUFFIXES.items():
        base = method.removesuffix(suffix)
        if base != method and base in OURS and OURS[base][0] in methods:
            iid_method, sampler, options = OURS[base]
            return iid_method, sampler, {**options, "iid_options": iid_options}
    return None


class GaussianLinear:
    """sbibm's ``gaussian_linear``: ``theta ~ N(0, 0.1 I_10)``, ``x ~ N(theta, 0.1
    I_10)``; the posterior for ``N`` trials is ``N(m_N, S_N)`` with
    ``S_N^{-1} = (10 + 10 N) I``, ``m_N = S_N 10 sum_i x_i``."""

    name = "gaussian_linear"
    dim = 10

    def __init__(self):
        self.prior = MultivariateNormal(torch.zeros(10), 0.1 * torch.eye(10))

    def simulate(self, theta: torch.Tensor) -> torch.Tensor:
        return theta + 0.1**0.5 * torch.randn_like(theta)

    def observation(self, seed: int, num_trials: int) -> torch.Tensor:
        torch.manual_seed(1000 + seed)
        theta_o = self.prior.sample((1,))
        return self.simulate(theta_o.expand(num_trials, -1))

    def reference(self, x: torch.Tensor, num: int, seed: int) -> torch.Tensor:
        n = x.shape[0]
        var = 1.0 / (10.0 + 10.0 * n)
        mean = var * 10.0 * x.sum(0)
        return mean + var**0.5 * torch.randn(num, self.dim)

    def posterior(self, args):
        return train(self, args)


class SbibmIID:
    """two_moons or slcp: the grid's DiffusionNPE, exact-likelihood references."""

    def __init__(self, name: str):
        from sbi_diffusion.benchmark.tasks import load_task

        self.name = name
        self.task = load_task(name)
        self.prior = self.task.prior

    def observation(self, seed: int, num_trials: int) -> torch.Tensor:
        return iid_observation(self.task, seed, num_trials)

    def reference(self, x: torch.Tensor, num: int, seed: int) -> torch.Tensor:
        return iid_reference_posterior(self.name, x, num, seed=seed)

    def posterior(self, args):
        from sbi_diffusion.benchmark import methods, runner

        trained = runner.train_or_load(
            self.name,
            self.task,
            methods.parse("diffusion"),
            args.simulations,
            0,
            "cpu",
            Path(args.model_cache),
        )
        return trained.posterior


def standardised_prior(prior, shift: torch.Tensor, scale: torch.Tensor):
    """The prior of ``z = (theta - shift) / scale``, for sbi's i.i.d. methods."""
    if isinstance(prior, MultivariateNormal):
        return MultivariateNormal(
            (prior.mean - shift) / scale,
            prior.covariance_matrix / (scale[:, None] * scale[None, :]),
        )
    base = getattr(prior, "base_dist", prior)
    low, high = getattr(base, "low", None), getattr(base, "high", None)
    if low is None or high is None:
        raise ValueError(f"Cannot standardise a prior of type {type(prior)}.")
    return BoxUniform((low - shift) / scale, (high - shift) / scale)


ESTIMATORS = {"diffusion": DiffusionNPE, "flow_matching": FlowMatchingNPE}


def train(task, args) -> DiffusionNPE | FlowMatchingNPE:
    suffix = "" if args.estimator == "diffusion" else f"_{args.estimator}"
    path = Path(args.cache) / f"{task.name}_{args.simulations}{suffix}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    torch.manual_seed(0)
    theta = task.prior.sample((args.simulations,))
    x = task.simulate(theta)
    inference = ESTIMATORS[args.estimator](
        task.prior,
        net_kwargs=dict(width=128, depth=3),
        condition_dropout=0.1,
        show_progress_bars=False,
    )
    t0 = time.time()
    inference.append_simulations(theta, x).train(
        max_num_epochs=args.epochs, training_batch_size=256, seed=0
    )
    print(f"trained {task.name} in {time.time() - t0:.0f}s", flush=True)
    posterior = inference.build_posterior()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(posterior, path)
    return posterior


def model_simulations(row: dict) -> int:
    """Training simulations of the row's single-trial model (rows written before
    this was recorded used the defaults: 5000 for gaussian_linear, the grid's
    10^4 for the sbibm tasks)."""
    default = 5000 if row["task"] == "gaussian_linear" else 10_000
    return int(row.get("simulations", default))


def row_key(row: dict) -> tuple:
    return (
        row["task"],
        row.get("estimator", "diffusion"),
        model_simulations(row),
        row["num_trials"],
        row["method"],
        row["seed"],
        row.get("repeat", 0),
    )


REPEAT_SEED_STRIDE = 1000
"""Repeat ``k`` of a row draws its samples and its reference with seed ``seed +
k * REPEAT_SEED_STRIDE`` (repeat 0 is the plain seed, as before repeats existed)."""


def done_keys(results: Path) -> set:
    if not results.exists():
        return set()
    return {row_key(json.loads(line)) for line in results.read_text().splitlines()}


def append_row(results: Path, row: dict) -> None:
    """Print a finished row and append it to the JSONL results file."""
    print(json.dumps(row), flush=True)
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")


def run_method(method, posterior, prior, x, num, args) -> tuple[torch.Tensor, dict]:
    ours = ours_method(method)
    if ours is not None:
        iid_method, sampler, options = ours
        samples = posterior.sample(
            (num,),
            x=x,
            iid_method=iid_method if x.shape[0] > 1 else None,
            sampler=sampler,
            show_progress_bars=False,
            **options,
        )
        resolved = {"iid_method": iid_method, "sampler": sampler, **options}
        return samples, {"nfe_per_sample": posterior.last_nfe, "resolved": resolved}
    # sbi 0.27 refuses i.i.d. sampling with composed standardisation, so its
    # methods run where sbi itself would: in the standardised space, with the
    # prior mapped there (z = (theta - shift) / scale), samples mapped back.
    estimator = copy.deepcopy(posterior.estimator)
    shift = estimator._theta_shift.reshape(-1).clone()
    scale = estimator._theta_scale.reshape(-1).clone()
    estimator._compose_standardization.fill_(False)
    prior_z = standardised_prior(prior, shift, scale)
    sbi_posterior = VectorFieldPosterior(estimator, prior_z, sample_with="sde")
    samples = sbi_posterior.sample(
        (num,),
        x=x,
        iid_method=method if x.shape[0] > 1 else None,
        steps=args.sbi_steps,
        show_progress_bars=False,
    )
    return shift + scale * samples, {"sbi_steps": args.sbi_steps}


def seed_scores(rows: list[dict]) -> list[str]:
    """``"seed: C2ST"`` per seed; where a seed was repeated, the mean C2ST of its
    repeats followed by ``[number of repeats]``."""
    by_seed: dict[int, list[float]] = {}
    for row in rows:
        by_seed.setdefault(row["seed"], []).append(row["c2st"])
    cells = []
    for seed in sorted(by_seed):
        scores = by_seed[seed]
        mean = sum(scores) / len(scores)
        cells.append(
            f"{seed}: {mean:.3f}" + (f" [{len(scores)}]" if len(scores) > 1 else "")
        )
    return cells


def summary(results: Path) -> str:
    """Markdown tables (C2ST / seconds) of the results file, one per task and
    single-trial model; ``[k]`` marks a mean over ``k`` repeats."""
    all_rows = [json.loads(line) for line in results.read_text().splitlines()]
    tables = []

    def model(row: dict) -> tuple:
        return row["task"], row.get("estimator", "diffusion"), model_simulations(row)

    for task, estimator, simulations in dict.fromkeys(map(model, all_rows)):
        rows = [r for r in all_rows if model(r) == (task, estimator, simulations)]
        name = {"diffusion": "DiffusionNPE", "flow_matching": "FlowMatchingNPE"}
        trials = sorted({r["num_trials"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        what = "seed" if task == "gaussian_linear" else "observation"
        lines = [
            f"### {task}, {name[estimator]} trained on {simulations} simulations",
            "",
            "| method | "
            + " | ".join(f"N={n}: {what}: C2ST (mean s)" for n in trials)
            + " |",
            "|---" * (len(trials) + 1) + "|",
        ]
        for method in methods:
            cells = []
            for n in trials:
                hit = [
                    r for r in rows if r["method"] == method and r["num_trials"] == n
                ]
                ok = [r for r in hit if "error" not in r]
                if not hit:
                    cells.append("not run")
                elif not ok:
                    cells.append("error")
                else:
                    scores = ", ".join(seed_scores(ok))
                    seconds = sum(r["seconds"] for r in ok) / len(ok)
                    cells.append(f"{scores} ({seconds:.0f})")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--task",
        default="gaussian_linear",
        choices=["gaussian_linear", "two_moons", "slcp"],
    )
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--methods", nargs="+", default=[*OURS, *SBI])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument(
        "--repeats",
        type=int,
        nargs="+",
        default=[0],
        help="repeat numbers: fresh samples and reference draws on the same trials, "
        "to see how much C2ST varies (repeat 0 is the plain run)",
    )
    parser.add_argument(
        "--simulations",
        type=int,
        help="single-trial training simulations (default: gaussian_linear 5000, "
        "two_moons and slcp 10000)",
    )
    parser.add_argument(
        "--estimator",
        choices=sorted(ESTIMATORS),
        default="diffusion",
        help="single-trial model for gaussian_linear",
    )
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--sbi-steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--cache", default=str(Path.home() / ".cache/sbi_diffusion_iid")
    )
    parser.add_argument("--model-cache", default="outputs/models")
    parser.add_argument("--results", default=str(HERE / "results.jsonl"))
    parser.add_argument("--summary", action="store_true", help="print the table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.simulations is None:
        args.simulations = 5000 if args.task == "gaussian_linear" else 10_000
    results = Path(args.results)
    if args.summary:
        print(summary(results))
        return
    if args.task != "gaussian_linear" and args.estimator != "diffusion":
        parser.error("--estimator applies to gaussian_linear only")
    task = GaussianLinear() if args.task == "gaussian_linear" else SbibmIID(args.task)
    posterior = task.posterior(args)
    done = done_keys(results)
    for num_trials in args.trials:
        for seed in args.seeds:
            x = task.observation(seed, num_trials)
            for repeat in args.repeats:
                draw_seed = seed + repeat * REPEAT_SEED_STRIDE
                reference = task.reference(x, args.num_samples, draw_seed)
                for method in args.methods:
                    row = {
                        "task": task.name,
                        "estimator": args.estimator,
                        "simulations": args.simulations,
                        "num_trials": num_trials,
                        "method": method,
                        "seed": seed,
                    }
                    if repeat:
                        row["repeat"] = repeat
                    if row_key(row) in done:
                        continue
                    if num_trials == 1 and method not in ("ours_gauss_dopri5", "fnpe"):
                        continue  # one trial: no composition, one row per library
                    run_row(row, method, posterior, task, x, reference, draw_seed, args)
                    append_row(results, row)


def run_row(row, method, posterior, task, x, reference, draw_seed, args) -> None:
    """Sample with ``method``, score by C2ST and fill in ``row`` (or its error)."""
    torch.manual_seed(draw_seed)
    t0 = time.time()
    try:
        samples, extra = run_method(
            method, posterior, task.prior, x, args.num_samples, args
        )
        seconds = time.time() - t0
        samples = samples.reshape(args.num_samples, -1)
        ok = torch.isfinite(samples).all(1)
        score = float(c2st(samples[ok], reference[: int(ok.sum())]))
        row.update(c2st=score, seconds=round(seconds, 1), **extra)
    except Exception as error:  # noqa: BLE001 (recorded, not hidden)
        row.update(error=f"{type(error).__name__}: {error}"[:300])
        row["seconds"] = round(time.time() - t0, 1)


if __name__ == "__main__":
    main()
