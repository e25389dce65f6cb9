"""The table of benchmarks/ensembles/README.md from the rows of run.py.

For each task: the mean C2ST over the observations of each single member, the
mean of those (a typical single training) and their range, then each
ensemble's mean, with the per-observation values.

Usage:
    python benchmarks/ensembles/summarize.py [benchmarks/results/ensembles.jsonl]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from run import OUTPUT, row_members


def summary_table(rows: list[dict]) -> str:
    """Markdown table: one row per (task, members), single members first."""
    by_config: dict[tuple[str, tuple[int, ...]], dict[int, float]] = defaultdict(dict)
    for row in rows:
        key = (row["task"], row_members(row))
        by_config[key][row["num_observation"]] = row["c2st"]
    lines = [
        "| task | members | C2ST per observation | mean | training s (sum) |",
        "|---|---|---|---|---|",
    ]
    train_s = {(r["task"], row_members(r)): r["train_s"] for r in rows}
    for task in dict.fromkeys(row["task"] for row in rows):
        configs = sorted(
            (members for t, members in by_config if t == task),
            key=lambda members: (len(members), members),
        )
        singles = []
        for members in configs:
            values = by_config[(task, members)]
            observations = sorted(values)
            mean = sum(values.values()) / len(values)
            if len(members) == 1:
                singles.append(mean)
            label = (
                f"member {members[0]}"
                if len(members) == 1
                else f"ensemble of {len(members)}"
            )
            per_obs = " ".join(f"{values[o]:.3f}" for o in observations)
            lines.append(
                f"| {task} | {label} | {per_obs} | {mean:.3f} | "
                f"{train_s[(task, members)]:.0f} |"
            )
        if len(singles) > 1:
            lines.append(
                f"| {task} | single members: mean (range) | | "
                f"{sum(singles) / len(singles):.3f} "
                f"({min(singles):.3f}-{max(singles):.3f}) | |"
            )
    return "\n".join(lines)


def main() -> None:
    """Print the table of the rows file given (default: the committed one)."""
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    print(summary_table(rows))


if __name__ == "__main__":
    main()
