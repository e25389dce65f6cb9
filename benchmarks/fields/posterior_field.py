"""A posterior over an ``N x N`` Gaussian random field, scored against the exact one.

Problem (a) of :mod:`sbi_diffusion.benchmark.fields`: ``theta`` is a stationary
Gaussian random field (power-law spectrum), ``x`` a blurred, noisy image of it.
Each method trains once on ``--num-simulations`` prior simulations and draws
1,000 posterior fields for each of ``--observations`` observations; the samples
are scored by :func:`~sbi_diffusion.benchmark.fields.field_posterior_metrics`
against the exact Gaussian posterior (mean error in posterior sd, sd ratio,
variance ratio along leading/trailing eigen-directions, radial power spectrum,
per-pixel coverage).

Methods:

- ``diffusion_unet``, ``flow_matching_unet``, ``consistency_unet``:
  ``DiffusionNPE`` / ``FlowMatchingNPE`` / ``ConsistencyNPE`` (consistency
  training, two-step sampling by default) with ``net="unet"``; the image ``x``
  enters the U-Net as an extra input channel on the parameter grid.
- ``consistency_distilled_unet``: ``ConsistencyNPE.distill`` of a
  ``diffusion_unet`` teacher trained first with the same options (the row's
  ``train_s`` is the sum; ``teacher_train_s`` the teacher's part), distilled
  for ``--distill-steps`` optimiser steps (default: ``--max-num-steps``).
- ``npe_maf``, ``npe_nsf``, ``npse``, ``fmpe``: sbi's ``NPE`` (MAF, NSF),
  ``NPSE`` and ``FMPE`` with their defaults, on the flattened image.

Every (size, method) runs in its own process (its peak resident memory is the
row's ``peak_rss_mb``) under a wall-clock limit; a run that fails or runs out
of time is recorded as such. Rows are appended as they finish, and a rerun
skips the (size, method, simulations, seed) already in the output.

Usage:
    OMP_NUM_THREADS=2 python benchmarks/fields/posterior_field.py \\
        --sizes 16 32 --methods diffusion_unet npe_maf \\
        --output benchmarks/fields/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from sbi_diffusion.benchmark.fields import (
    GaussianRandomFieldProblem,
    field_posterior_metrics,
)
from sbi_diffusion.benchmark.results import append_row, iter_json_lines

sys.path.insert(0, str(Path(__file__).parent))
from run_record import run_record  # noqa: E402

OURS = (
    "diffusion_unet",
    "flow_matching_unet",
    "consistency_unet",
    "consistency_distilled_unet",
)
SBI_METHODS = ("npe_maf", "npe_nsf", "npse", "fmpe")
METHODS = OURS + SBI_METHODS

NUM_SAMPLES = 1000
"""Posterior fields drawn (and timed) per observation."""

SCALARS = (
    "mean_error_rms",
    "mean_error_max",
    "sd_ratio_mean",
    "sd_ratio_min",
    "sd_ratio_max",
    "leading_variance_ratio",
    "trailing_variance_ratio",
    "spectrum_max_abs_log_ratio",
    "coverage_50",
    "coverage_90",
)


DEFAULT_CHANNELS = (16, 32)
"""U-Net widths of the rows made before ``--channels`` existed."""


def unet_kwargs(
    size: int,
    channels: tuple[int, ...] = DEFAULT_CHANNELS,
    padding_mode: str = "zeros",
) -> dict:
    """The U-Net options for an ``size x size`` field: levels of ``channels``
    widths, no attention (the package's default, ``(32, 64)`` with attention,
    costs about 6x more per training step on a CPU; ``README.md`` here), and
    the convolutions' ``padding_mode``."""
    return {
        "shape": (1, size, size),
        "channels": tuple(channels),
        "attention": False,
        "padding_mode": padding_mode,
    }


def unet_train_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``train()`` keywords of our U-Net estimators: ``--seed``,
    ``--batch-size`` and ``--max-num-steps`` (if given)."""
    kwargs: dict[str, Any] = {"seed": args.seed, "training_batch_size": args.batch_size}
    if args.max_num_steps is not None:
        kwargs["max_num_steps"] = args.max_num_steps
    return kwargs


def parse_sampler(text: str) -> dict[str, Any]:
    """``"name:steps"`` (or ``"name"``) as keywords of ``posterior.sample``."""
    name, _, steps = text.partition(":")
    return {"sampler": name, **({"steps": int(steps)} if steps else {})}


def problem_key(row: dict[str, Any]) -> tuple:
    """The problem and method of a row: grid size, method, budget and seed."""
    return (row["size"], row["method"], row["num_simulations"], row["seed"])


def run_key(row: dict[str, Any]) -> tuple:
    """What makes two rows the same run (a rerun skips it)."""
    channels = steps = padding = None
    if row["method"] in OURS:
        channels = tuple(row.get("unet_channels") or DEFAULT_CHANNELS)
        padding = row.get("padding_mode", "zeros")  # rows before the option
        steps = row.get("max_num_steps")
        if steps is None:  # rows written before they held it: their command's
            words = str(row.get("command", "")).split()
            if "--max-num-steps" in words:
                steps = int(words[words.index("--max-num-steps") + 1])
    return (*problem_key(row), channels, row.get("distill_steps"), steps, padding)


def build(
    method: str,
    problem: GaussianRandomFieldProblem,
    size: int,
    channels: tuple[int, ...] = DEFAULT_CHANNELS,
    padding_mode: str = "zeros",
):
    """The untrained inference object of ``method`` and whether it takes images."""
    from sbi.inference import FMPE, NPE, NPSE

    from sbi_diffusion import ConsistencyNPE, DiffusionNPE, FlowMatchingNPE

    prior = problem.prior
    if method in OURS:
        cls = {
            "diffusion_unet": DiffusionNPE,
            "flow_matching_unet": FlowMatchingNPE,
            "consistency_unet": ConsistencyNPE,
            "consistency_distilled_unet": ConsistencyNPE,
        }[method]
        return cls(
            prior,
            net="unet",
            net_kwargs=unet_kwargs(size, channels, padding_mode),
            show_progress_bars=False,
        ), True
    if method.startswith("npe_"):
        estimator = method.removeprefix("npe_")
        return NPE(prior, density_estimator=estimator, show_progress_bars=False), False
    if method == "npse":
        return NPSE(prior, show_progress_bars=False), False
    if method == "fmpe":
        return FMPE(prior, show_progress_bars=False), False
    raise ValueError(f"Unknown method {method!r}; pass one of {METHODS}.")


def sampler_record(posterior: Any) -> dict[str, Any]:
    """The resolved sampler of a posterior (ours), or its class (sbi's)."""
    record: dict[str, Any] = {"posterior": type(posterior).__name__}
    if hasattr(posterior, "sampler_options"):
        record.update(name=posterior.sampler, **posterior.sampler_options)
    return record


def run_one(args: argparse.Namespace, size: int, method: str) -> dict[str, Any]:
    """Train ``method`` at ``size`` and score it on every observation."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    problem = GaussianRandomFieldProblem(size)
    generator = torch.Generator().manual_seed(args.seed)
    theta = problem.sample_prior(args.num_simulations, generator=generator)
    x = problem.simulate(theta, generator=generator)
    unet = (tuple(args.channels), args.padding_mode)
    inference, takes_images = build(method, problem, size, *unet)
    data = x if takes_images else x.reshape(len(x), -1)
    start = time.perf_counter()
    inference.append_simulations(theta, data)
    train_kwargs = unet_train_kwargs(args) if method in OURS else {}
    teacher = None
    if method == "consistency_distilled_unet":
        teacher, _ = build("diffusion_unet", problem, size, *unet)
        teacher.append_simulations(theta, data).train(**train_kwargs)
        teacher_train_s = time.perf_counter() - start
        distill_kwargs = dict(train_kwargs)
        if args.distill_steps is not None:
            distill_kwargs["max_num_steps"] = args.distill_steps
        inference.distill(teacher, max_num_epochs=10**6, **distill_kwargs)
    else:
        inference.train(**train_kwargs)
    train_s = time.perf_counter() - start
    posterior = inference.build_posterior()
    per_observation = []
    for seed in args.observations:
        _, x_o = problem.observation(seed)
        condition = x_o if takes_images else x_o.reshape(1, -1)
        start = time.perf_counter()
        samples = posterior.sample(
            (NUM_SAMPLES,), x=condition[0], show_progress_bars=False
        )
        sample_s = time.perf_counter() - start
        flat = samples.reshape(NUM_SAMPLES, -1)
        metrics = field_posterior_metrics(flat, problem, x_o)
        entry = {"observation_seed": seed, "sample_s": round(sample_s, 3)}
        entry.update({key: round(float(metrics[key]), 4) for key in SCALARS})
        entry["spectrum_ratio"] = [
            round(float(r), 4)
            for r in metrics["spectrum_samples"] / metrics["spectrum_exact"]
        ]
        if method in OURS:
            entry["extra_samplers"] = [
                score_sampler(posterior, problem, x_o, condition[0], text)
                for text in args.extra_samplers
            ]
        per_observation.append(entry)
    row: dict[str, Any] = {
        "size": size,
        "method": method,
        "num_simulations": args.num_simulations,
        "seed": args.seed,
        "status": "ok",
        "train_s": round(train_s, 2),
        "exact_pixel_sd": round(float(problem.exact_posterior(x_o).pixel_sd), 4),
        "observations": per_observation,
        "sampler": sampler_record(posterior),
    }
    for key in SCALARS + ("sample_s",):
        values = [entry[key] for entry in per_observation]
        row[key] = round(sum(values) / len(values), 4)
    if teacher is not None:
        row["distill_steps"] = args.distill_steps
        row["teacher_train_s"] = round(teacher_train_s, 2)
        row["teacher_training"] = teacher.resolved_training
    if method in OURS:
        row["resolved_training"] = inference.resolved_training
        row["unet_channels"] = list(args.channels)
        row["extra_samplers"] = [
            {
                "sampler": text,
                **{
                    key: round(
                        sum(e["extra_samplers"][i][key] for e in per_observation)
                        / len(per_observation),
                        4,
                    )
                    for key in SCALARS + ("sample_s",)
                },
            }
            for i, text in enumerate(args.extra_samplers)
        ]
    return row


def score_sampler(
    posterior: Any,
    problem: GaussianRandomFieldProblem,
    x_o: torch.Tensor,
    condition: torch.Tensor,
    text: str,
) -> dict[str, Any]:
    """Time and score 1,000 fields drawn with the sampler ``text``
    (``"name:steps"``) from the trained posterior."""
    start = time.perf_counter()
    samples = posterior.sample(
        (NUM_SAMPLES,), x=condition, show_progress_bars=False, **parse_sampler(text)
    )
    sample_s = time.perf_counter() - start
    metrics = field_posterior_metrics(samples.reshape(NUM_SAMPLES, -1), problem, x_o)
    entry = {"sampler": text, "sample_s": round(sample_s, 3)}
    entry.update({key: round(float(metrics[key]), 4) for key in SCALARS})
    return entry


def child(args: argparse.Namespace, size: int, method: str, queue) -> None:
    """Run one row in a child process and report it (or the failure)."""
    try:
        row = run_one(args, size, method)
    except Exception:  # noqa: BLE001 - recorded in the row
        row = {"status": "failed", "error": traceback.format_exc(limit=3)[-2000:]}
    row["peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    queue.put(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--max-num-steps", type=int, default=None, help="ours; the trainer's if None"
    )
    parser.add_argument("--batch-size", type=int, default=128, help="ours")
    parser.add_argument(
        "--distill-steps",
        type=int,
        default=None,
        help="consistency_distilled_unet: distillation steps (--max-num-steps if None)",
    )
    parser.add_argument(
        "--channels",
        type=int,
        nargs="+",
        default=list(DEFAULT_CHANNELS),
        help="ours: U-Net widths per level",
    )
    parser.add_argument(
        "--padding-mode",
        default="zeros",
        help='ours: the U-Net\'s padding_mode ("circular": the field is periodic)',
    )
    parser.add_argument(
        "--extra-samplers",
        nargs="*",
        default=[],
        help='ours: further samplers scored on the same training, e.g. "dpm++2m:8"',
    )
    parser.add_argument(
        "--timeout-minutes", type=float, default=45.0, help="per (size, method)"
    )
    parser.add_argument("--output", default="benchmarks/fields/results.jsonl")
    args = parser.parse_args()
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = {run_key(r) for _, r in iter_json_lines(output)}
    context = multiprocessing.get_context("spawn")
    for size in args.sizes:
        for method in args.methods:
            key = run_key(
                {
                    "size": size,
                    "method": method,
                    "num_simulations": args.num_simulations,
                    "seed": args.seed,
                    "unet_channels": args.channels,
                    "max_num_steps": args.max_num_steps,
                    "padding_mode": args.padding_mode,
                    "distill_steps": (
                        args.distill_steps
                        if method == "consistency_distilled_unet"
                        else None
                    ),
                }
            )
            if key in done:
                print(f"skip {key}: in {output}", flush=True)
                continue
            queue = context.Queue()
            process = context.Process(target=child, args=(args, size, method, queue))
            start = time.perf_counter()
            process.start()
            process.join(args.timeout_minutes * 60)
            if process.is_alive():
                process.kill()
                process.join()
                row = {
                    "status": "timeout",
                    "error": f"no result within {args.timeout_minutes} minutes",
                }
            else:
                row = (
                    queue.get()
                    if not queue.empty()
                    else {"status": "failed", "error": "no result"}
                )
            row.update(run_record(args, size, method, start))
            if method in OURS:
                row["unet_channels"] = list(args.channels)
                row["max_num_steps"] = args.max_num_steps
                row["padding_mode"] = args.padding_mode
            append_row(output, row)
            summary = {k: row.get(k) for k in ("status", "train_s", "sample_s")}
            summary.update({k: row.get(k) for k in SCALARS[:3] + SCALARS[-2:]})
            print(f"N={size} {method}: {json.dumps(summary)}", flush=True)


if __name__ == "__main__":
    main()
