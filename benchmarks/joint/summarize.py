"""Mean C2ST per task, budget and method of ``benchmarks/joint/results.jsonl``.

Usage: ``python benchmarks/joint/summarize.py benchmarks/joint/results.jsonl``
prints a Markdown table (mean over the observations that ran, their count in
parentheses).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def label(row: dict) -> str:
    """Method label including its options."""
    options = row.get("options") or {}
    if not options:
        return row["method"]
    inner = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"{row['method']}[{inner}]"


def main(path: str) -> None:
    """Print the table for the results file at ``path``."""
    cells: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    with open(path) as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("c2st") is not None:
                cells[(row["task"], row["num_simulations"], label(row))].append(
                    row["c2st"]
                )
    print("| task | budget | method | mean C2ST (observations) |")
    print("|---|---|---|---|")
    for (task, budget, method), values in sorted(cells.items()):
        mean = sum(values) / len(values)
        print(f"| {task} | {budget} | {method} | {mean:.3f} ({len(values)}) |")


if __name__ == "__main__":
    main(sys.argv[1])
