"""Table of the consistency benchmark, next to the models it is compared with.

Reads ``benchmarks/results/consistency.jsonl`` (ConsistencyNPE rows) and the
DiffusionNPE and NPE rows of ``benchmarks/results/sbibm.jsonl`` for the same
tasks, budget and observations, and writes ``benchmarks/results/consistency.md``:
mean C2ST (observations in parentheses), the difference to the DiffusionNPE
default, sampling time for 10,000 samples, its speed-up over the DiffusionNPE
default, and NFE.

Usage: ``python benchmarks/consistency/summarize.py``
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sbi_diffusion.benchmark.report import _task_order, load_results, summarize

RESULTS = Path(__file__).resolve().parents[1] / "results"
BASELINES = ("diffusion", "npe")


def consistency_table(
    consistency: Path = RESULTS / "consistency.jsonl",
    grid: Path = RESULTS / "sbibm.jsonl",
) -> str:
    """The Markdown table: one line per task and method, observations matched."""
    ours = load_results(consistency)
    baselines = load_results(grid)
    baselines = baselines[baselines["label"].isin(BASELINES)]
    lines = [
        "| task | method | steps | NFE | C2ST (obs) | minus DiffusionNPE | "
        "sample s | speed-up | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task in _task_order(list(ours["task"])):
        rows = ours[ours["task"] == task]
        budget = int(rows["num_simulations"].iloc[0])
        observations = set(rows["num_observation"])
        base = baselines[
            (baselines["task"] == task)
            & (baselines["num_simulations"] == budget)
            & baselines["num_observation"].isin(observations)
        ]
        summary = summarize(pd.concat([base, rows], ignore_index=True))
        by_label = {r.label: r for r in summary.itertuples(index=False)}
        reference = by_label.get("diffusion")
        for label in sorted(by_label, key=lambda s: (s not in BASELINES, s)):
            r = by_label[label]
            options = rows.loc[rows["label"] == label, "options"]
            steps = options.iloc[0].get("steps", "") if len(options) else ""
            name = _readable(label)
            delta = speedup = ""
            if reference is not None and label != "diffusion":
                delta = f"{r.c2st_mean - reference.c2st_mean:+.3f}"
                speedup = f"{reference.sample_s / r.sample_s:.1f}x"
            lines.append(
                f"| {task} | {name} | {steps} | {r.nfe:.0f} | "
                f"{r.c2st_mean:.3f} ({r.n}) | {delta} | {r.sample_s:.2f} | "
                f"{speedup} | {r.train_s:.0f} |"
            )
    return "\n".join(lines) + "\n"


def _readable(label: str) -> str:
    if label == "diffusion":
        return "DiffusionNPE (default sampler)"
    if label == "npe":
        return "sbi NPE"
    if "teacher=diffusion" in label:
        return "distillation"
    return "consistency training"


def main() -> None:
    """Write ``consistency.md`` and print it."""
    text = consistency_table()
    header = (
        "Consistency models at 10^4 simulations (sbibm protocol, 10,000 samples, "
        "seed 0). Made by `bash benchmarks/consistency/run.sh`; regenerate with "
        "`python benchmarks/consistency/summarize.py`. The DiffusionNPE and NPE "
        "rows are the grid rows of `sbibm.jsonl` on the same observations; the "
        "DiffusionNPE is the distillation teacher. Speed-up: DiffusionNPE "
        "sampling time over this row's. Distillation train s excludes the "
        "teacher's training.\n\n"
    )
    (RESULTS / "consistency.md").write_text(header + text, encoding="utf-8")
    print(header + text)


if __name__ == "__main__":
    main()
