"""Paired sampling-time comparison of trained posteriors on one machine.

Sampling times in the benchmark rows are measured wherever each row ran, so rows
from different moments (or a shared machine) are not comparable. This script
loads trained estimators from the runner's model cache (training them first when
they are missing), then times ``posterior.sample((10_000,), x=x_o)`` for every
method in turn, round after round, so all methods see the same machine state.
It reports the median time per method and the ratio to the first method.

Usage:
    python benchmarks/core/sampling_time.py --task two_moons \
        --methods diffusion npse --rounds 3 \
        --output benchmarks/results/core_timing.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sbi_diffusion.benchmark.methods import parse
from sbi_diffusion.benchmark.results import append_row
from sbi_diffusion.benchmark.runner import (
    package_versions,
    seed_everything,
    train_or_load,
)
from sbi_diffusion.benchmark.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="two_moons")
    parser.add_argument("--methods", nargs="+", default=["diffusion", "npse"])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--observation", type=int, default=1)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default="outputs/models")
    parser.add_argument("--output", default="benchmarks/results/core_timing.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    task = load_task(args.task)
    x_o = task.get_observation(args.observation)
    posteriors = {}
    for method in args.methods:
        trained = train_or_load(
            args.task,
            task,
            parse(method),
            args.num_simulations,
            args.seed,
            "cpu",
            cache=Path(args.cache),
        )
        # the spec's sampling options (sampler, steps, ...) apply, as in the runner
        posteriors[method] = (trained.posterior, trained.routed.sample)

    times: dict[str, list[float]] = {method: [] for method in args.methods}
    nfe: dict[str, float | None] = {}
    for round_index in range(args.rounds):
        for method, (posterior, options) in posteriors.items():
            seed_everything(args.seed * 1_000 + round_index)
            start = time.perf_counter()
            posterior.sample(
                (args.num_samples,), x=x_o, show_progress_bars=False, **options
            )
            times[method].append(time.perf_counter() - start)
            nfe[method] = getattr(posterior, "last_nfe", None)
    first = statistics.median(times[args.methods[0]])
    for method in args.methods:
        median = statistics.median(times[method])
        row = {
            "task": args.task,
            "num_simulations": args.num_simulations,
            "method": method,
            "seed": args.seed,
            "num_observation": args.observation,
            "num_samples": args.num_samples,
            "threads": args.threads,
            "sample_s": [round(t, 3) for t in times[method]],
            "median_s": round(median, 3),
            "nfe": nfe[method],
            "relative_to_first": round(median / first, 2),
            "versions": package_versions(),
        }
        append_row(args.output, row)
        shown = ("method", "sample_s", "median_s", "nfe")
        print(json.dumps({k: row[k] for k in shown}))


if __name__ == "__main__":
    main()
