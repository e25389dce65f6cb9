"""Regenerate the tables of benchmarks/README.md from the results files.

Usage: python benchmarks/update_readme.py  (writes sbibm.md, sbibm.png, README.md)

Three tables are pasted between their markers: the overview of every method at
its current defaults beside the published numbers (``overview``), every row of
``results/sbibm.jsonl`` by method and options (``results``) and the cells of
the published grid that still lack observations (``missing``); and, in the
package README, DiffusionNPE against sbi's methods at 10^4 (``summary``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from sbi_diffusion.benchmark.overview import (
    SBI,
    budget_table,
    current_defaults,
    load_all,
    measured_cells,
    overview_table,
)
from sbi_diffusion.benchmark.report import load_results, markdown_table, write_report
from sbi_diffusion.benchmark.tasks import TASKS

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "sbibm.jsonl"
# Rows of sbi's NPSE and FMPE, and more of NPE, are in the core benchmark's file.
OVERVIEW_FILES = (RESULTS, HERE / "results" / "core.jsonl")
ALL = TASKS
SMALL = ("two_moons", "slcp", "gaussian_mixture", "bernoulli_glm")
# The grid the overview asks for: (tasks, budget, methods).
GRID = (
    (ALL, 10_000, ("diffusion", "flow_matching", "npe", "nle", "npse", "fmpe")),
    (SMALL, 1_000, ("diffusion", "flow_matching", "npe", "nle")),
    (SMALL, 100_000, ("diffusion", "flow_matching", "npe", "nle")),
)


def missing_rows(current: pd.DataFrame) -> str:
    """Markdown list of the grid's (task, budget, method) cells with fewer than
    10 scored observations at the method's current defaults.

    Args:
        current: Rows from ``current_defaults`` (the overview module).
    """
    counts = current.groupby(["task", "num_simulations", "method"]).size().to_dict()
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


def paste(text: str, marker: str, content: str) -> str:
    """Replace what lies between ``<!-- marker:start -->`` and its end marker."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"README.md lacks the markers {start} ... {end}.")
    return pattern.sub(lambda _: f"{start}\n{content}{end}", text)


def main() -> None:
    """Write the table and figure, and paste the tables into the README."""
    write_report(RESULTS, HERE / "results" / "sbibm.md", HERE / "results" / "sbibm.png")
    frame = load_results(RESULTS)
    readme = HERE / "README.md"
    text = readme.read_text(encoding="utf-8")
    every = load_all(OVERVIEW_FILES)
    text = paste(text, "overview", overview_table(every))
    text = paste(text, "results", markdown_table(frame))
    current = current_defaults(every)
    text = paste(text, "missing", missing_rows(current))
    readme.write_text(text, encoding="utf-8")
    # The package README: DiffusionNPE against sbi's methods at 10^4.
    cells = {
        key: cell
        for key, cell in measured_cells(current).items()
        if key[2] in ("diffusion", *SBI)
    }
    package_readme = HERE.parent / "README.md"
    text = package_readme.read_text(encoding="utf-8")
    text = paste(text, "summary", budget_table(cells, 10_000, published=()))
    package_readme.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
