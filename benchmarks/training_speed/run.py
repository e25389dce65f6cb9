"""Training time of our trainers against sbi's NPE, NPSE and FMPE, on the same data.

For each task and budget the simulations are drawn once (the runner's seeding,
so every method trains on the same ``theta`` and ``x``), then each method trains
with its defaults in this one process, one after the other, with the same torch
thread count. A row holds the wall-clock and CPU training time, the steps and
network size our trainers resolved to, and the ratio to sbi's NPE trained in
the same pass. The run resumes: rows already in the output are not trained again.

Usage:
    python benchmarks/training_speed/run.py \
        --tasks two_moons gaussian_mixture slcp bernoulli_glm \
        --budgets 1000 10000 --methods npe diffusion flow_matching \
        --output benchmarks/training_speed/results.jsonl
    python benchmarks/training_speed/run.py --report \
        --output benchmarks/training_speed/results.jsonl
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from sbi_diffusion.benchmark.methods import parse
from sbi_diffusion.benchmark.results import append_row, iter_json_lines
from sbi_diffusion.benchmark.runner import (
    device_name,
    package_versions,
    rounded_seconds,
    train_or_load,
)
from sbi_diffusion.benchmark.tasks import load_task

REFERENCE = "npe"


def read(path: Path) -> list[dict[str, Any]]:
    """The complete rows of ``path`` (none if it does not exist)."""
    return [row for _, row in iter_json_lines(path)]


def key(row: dict[str, Any]) -> tuple:
    return (row["task"], row["num_simulations"], row["method"], row["seed"])


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    output = Path(args.output)
    done = {key(r) for r in read(output)}
    methods = [REFERENCE] + [m for m in args.methods if m != REFERENCE]
    for task_name in args.tasks:
        task = load_task(task_name)
        for budget in args.budgets:
            for method in methods:
                row_key = (task_name, budget, method, args.seed)
                if row_key in done:
                    continue
                trained = train_or_load(
                    task_name, task, parse(method), budget, args.seed, args.device
                )
                row = {
                    "task": task_name,
                    "num_simulations": budget,
                    "method": method,
                    "seed": args.seed,
                    "train_s": round(trained.train_s, 3),
                    "train_cpu_s": rounded_seconds(trained.train_cpu_s),
                    "resolved": trained.resolved_training,
                    "threads": args.threads,
                    "device": device_name(args.device),
                    "versions": package_versions(),
                }
                append_row(output, row)
                print(
                    f"{task_name} n={budget} {method}: {trained.train_s:.1f} s",
                    flush=True,
                )


def report(path: Path) -> str:
    """A Markdown table: training seconds per method, and the ratio to NPE's
    from the same pass, per task, budget and device."""
    rows = read(path)
    times: dict[tuple, dict[str, float]] = defaultdict(dict)
    methods: list[str] = []
    for r in rows:
        times[(r["device"], r["task"], r["num_simulations"])][r["method"]] = r[
            "train_s"
        ]
        if r["method"] not in methods:
            methods.append(r["method"])
    others = [m for m in methods if m != REFERENCE]
    lines = [
        "| device | task | budget | npe (s) | "
        + " | ".join(f"{m} (s, x npe)" for m in others)
        + " |",
        "|---" * (4 + len(others)) + "|",
    ]
    ratios: dict[tuple, list[float]] = defaultdict(list)
    for (device, task, budget), entry in sorted(times.items()):
        base = entry.get(REFERENCE)
        cells = []
        for m in others:
            if m not in entry:
                cells.append("")
                continue
            if base:
                ratio = entry[m] / base
                ratios[(device, budget, m)].append(ratio)
                cells.append(f"{entry[m]:.1f} ({ratio:.2f}x)")
            else:
                cells.append(f"{entry[m]:.1f}")
        npe = "" if base is None else f"{base:.1f}"
        lines.append(
            f"| {device} | {task} | {budget} | {npe} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    lines.append("Median ratio to NPE over tasks:")
    lines.append("")
    for (device, budget, m), values in sorted(ratios.items()):
        lines.append(
            f"- {device}, {budget} simulations, {m}: "
            f"{statistics.median(values):.2f}x (max {max(values):.2f}x, "
            f"{len(values)} tasks)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["two_moons", "gaussian_mixture", "slcp", "bernoulli_glm"],
    )
    parser.add_argument("--budgets", nargs="+", type=int, default=[1000, 10_000])
    parser.add_argument(
        "--methods", nargs="+", default=["npe", "diffusion", "flow_matching"]
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="benchmarks/training_speed/results.jsonl")
    parser.add_argument(
        "--report", action="store_true", help="print the table of --output and stop"
    )
    args = parser.parse_args()
    if args.report:
        print(report(Path(args.output)))
    else:
        run(args)


if __name__ == "__main__":
    main()
