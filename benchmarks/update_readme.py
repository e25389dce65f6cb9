"""Regenerate the results section of benchmarks/README.md from the results file.

Usage: python benchmarks/update_readme.py  (writes sbibm.md, sbibm.png, README.md)
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from sbi_diffusion.benchmark.report import load_results, markdown_table, write_report
from sbi_diffusion.benchmark.tasks import TASKS

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "sbibm.jsonl"
START, END = "<!-- results:start -->", "<!-- results:end -->"
MISSING_START, MISSING_END = "<!-- missing:start -->", "<!-- missing:end -->"
ALL = TASKS
SMALL = ("two_moons", "slcp", "gaussian_mixture", "bernoulli_glm")
# The grid of benchmarks/run_published.sh: (tasks, budget, methods).
GRID = (
    (ALL, 10_000, ("npe", "diffusion", "flow_matching")),
    (SMALL, 1_000, ("npe", "diffusion", "flow_matching", "nle")),
    (SMALL, 100_000, ("npe", "diffusion", "flow_matching", "nle")),
)


def missing_rows(frame: pd.DataFrame) -> str:
    """Markdown list of (task, budget, method) cells with fewer than 10 scores."""
    scored = frame[frame["c2st"].notna()]
    counts = scored.groupby(["task", "num_simulations", "label"]).size().to_dict()
    lines = []
    for tasks, budget, methods in GRID:
        for method in methods:
            short = [
                f"{task} ({counts.get((task, budget, method), 0)}/10)"
                for task in tasks
                if counts.get((task, budget, method), 0) < 10
            ]
            if short:
                lines.append(f"- {method} at {budget:,}: {', '.join(short)}")
    return "\n".join(lines) + "\n" if lines else "None.\n"


def main() -> None:
    """Write the table and figure, and paste the table into the README."""
    write_report(RESULTS, HERE / "results" / "sbibm.md", HERE / "results" / "sbibm.png")
    frame = load_results(RESULTS)
    table = markdown_table(frame)
    readme = HERE / "README.md"
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    text = pattern.sub(lambda _: f"{START}\n{table}{END}", text)
    pattern = re.compile(
        re.escape(MISSING_START) + ".*?" + re.escape(MISSING_END), re.DOTALL
    )
    missing = missing_rows(frame)
    text = pattern.sub(lambda _: f"{MISSING_START}\n{missing}{MISSING_END}", text)
    readme.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
