"""One table with every method: ours and sbi's as measured, and published numbers.

For each simulation budget, one row per sbibm task and one column per method:
this package's estimators and sbi's baselines at their current defaults (rows
whose defaults fingerprint matches the method's today, with no options set,
under the sbibm protocol), then the published numbers of
:mod:`sbi_diffusion.benchmark.published`. A measured cell is the mean C2ST with
its standard deviation over observations (and seeds) and their count; the best
mean of a row among the single-round methods, measured or published, is in
bold. Sequential methods (several rounds for one observation) are shown but
not ranked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sbi_diffusion.benchmark.published import PUBLISHED, PublishedMethod
from sbi_diffusion.benchmark.report import load_results
from sbi_diffusion.benchmark.tasks import TASKS

if TYPE_CHECKING:
    import pandas as pd

OURS: tuple[str, ...] = ("diffusion", "flow_matching", "consistency", "joint")
SBI: tuple[str, ...] = ("npe", "nle", "npse", "fmpe")
_HEADINGS = {
    "diffusion": "DiffusionNPE",
    "flow_matching": "FlowMatchingNPE",
    "consistency": "ConsistencyNPE",
    "joint": "JointDiffusion",
    "npe": "sbi NPE",
    "nle": "sbi NLE",
    "npse": "sbi NPSE",
    "fmpe": "sbi FMPE",
}


@dataclass(frozen=True)
class Cell:
    """The C2ST of one method on one task and budget.

    Attributes:
        mean: Mean C2ST.
        std: Standard deviation over observations and seeds (0 for one row or a
            published number).
        count: Scored rows (0 for a published number).
        ranked: Whether the cell competes for the row's best.
    """

    mean: float
    std: float
    count: int
    ranked: bool

    def text(self, best: bool) -> str:
        """The cell as Markdown, in bold when it is the row's best."""
        value = f"{self.mean:.3f}" if self.count else f"{self.mean:.2f}"
        if best:
            value = f"**{value}**"
        if self.count:
            return f"{value} ± {self.std:.3f} ({self.count})"
        return value if self.ranked else f"*{value}*"


def load_all(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Every row of several results files (:func:`~.report.load_results`).

    Args:
        paths: Results files, in order of precedence (see
            :func:`current_defaults`).

    Returns:
        The rows of all files, the first file's first.
    """
    import pandas as pd

    return pd.concat([load_results(path) for path in paths], ignore_index=True)


def current_defaults(frame: pd.DataFrame) -> pd.DataFrame:
    """Scored rows made under the current defaults with no options set, under
    the sbibm protocol.

    Args:
        frame: Rows from :func:`load_all`; a row present in several files (same
            task, budget, method, seed and observation) is taken from the first.

    Returns:
        The rows, with the columns of :func:`~.report.load_results`.
    """
    import pandas as pd

    no_options = [not options for options in frame["options"]]
    keep = (
        frame["current"]
        & pd.Series(no_options, index=frame.index)
        & (frame["protocol_name"] == "sbibm")
        & frame["c2st"].notna()
    )
    frame = frame[keep]
    key = ["task", "num_simulations", "method", "seed", "num_observation"]
    return frame.drop_duplicates(subset=key, keep="first").reset_index(drop=True)


def measured_cells(frame: pd.DataFrame) -> dict[tuple[str, int, str], Cell]:
    """Cells of the measured methods, keyed by (task, budget, method)."""
    cells = {}
    for (task, budget, method), group in frame.groupby(
        ["task", "num_simulations", "method"]
    ):
        scores = group["c2st"].astype(float)
        std = float(scores.std()) if len(scores) > 1 else 0.0
        cells[(str(task), int(budget), str(method))] = Cell(
            float(scores.mean()), std, len(scores), True
        )
    return cells


def _published_cell(method: PublishedMethod, task: str, budget: int) -> Cell | None:
    value = method.at(task, budget)
    if value is None:
        return None
    return Cell(value, 0.0, 0, not method.sequential)


def budget_table(
    cells: dict[tuple[str, int, str], Cell],
    budget: int,
    published: Sequence[PublishedMethod] = PUBLISHED,
) -> str:
    """The Markdown table of one budget (see the module docstring).

    Args:
        cells: Measured cells from :func:`measured_cells`.
        budget: Simulation budget.
        published: Published methods to add as columns.

    Returns:
        The table, with a last line of means over the tasks for the columns that
        have all of them.
    """
    measured = [
        m for m in OURS + SBI if any(k[1] == budget and k[2] == m for k in cells)
    ]
    tasks = [t for t in TASKS if any(k[:2] == (t, budget) for k in cells)]
    columns = [
        (_HEADINGS[m], {t: cells.get((t, budget, m)) for t in tasks}) for m in measured
    ]
    columns += [
        (p.label, {t: _published_cell(p, t, budget) for t in tasks}) for p in published
    ]
    lines = [
        "| task | " + " | ".join(label for label, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for task in tasks:
        row = [column[task] for _, column in columns]
        ranked = [c.mean for c in row if c is not None and c.ranked]
        best = min(ranked) if ranked else None
        texts = ["" if c is None else c.text(c.ranked and c.mean == best) for c in row]
        lines.append(f"| {task} | " + " | ".join(texts) + " |")
    means = []
    for _, column in columns:
        values = [c.mean for c in column.values() if c is not None]
        means.append(
            f"{sum(values) / len(values):.3f}" if len(values) == len(tasks) else ""
        )
    lines.append(f"| mean over the {len(tasks)} tasks | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def _describe_resolved(resolved: dict[str, Any]) -> str:
    """``sampler dpm++2m {"steps": 20}; net mlp {"depth": 3, "width": 128}``."""
    text = (
        f"sampler {resolved.get('sampler')} "
        f"{json.dumps(resolved.get('sampler_options', {}), sort_keys=True)}"
    )
    if resolved.get("net") is not None:
        net_kwargs = json.dumps(resolved.get("net_kwargs", {}), sort_keys=True)
        text += f"; net {resolved['net']} {net_kwargs}"
    return text


def resolved_defaults(frame: pd.DataFrame, budget: int) -> str:
    """One line per method of ours: the sampler and network its rows resolved to.

    Args:
        frame: Rows from :func:`current_defaults`.
        budget: Simulation budget.

    Returns:
        Markdown list items, e.g. ``- DiffusionNPE: sampler dpm++2m
        {"steps": 20}; net mlp {"depth": 3, "width": 128}``.
    """
    lines = []
    rows = frame[frame["num_simulations"] == budget]
    for method in OURS:
        resolved = [r for r in rows.loc[rows["method"] == method, "resolved"] if r]
        if not resolved:
            continue
        seen = sorted({_describe_resolved(r) for r in resolved})
        lines.append(f"- {_HEADINGS[method]}: " + " / ".join(seen))
    return "\n".join(lines) + ("\n" if lines else "")


def overview_table(
    every: pd.DataFrame,
    budgets: Sequence[int] = (1_000, 10_000, 100_000),
) -> str:
    """The tables of :func:`budget_table` for each budget, with the defaults the
    rows of this package's methods resolved to.

    Args:
        every: All rows, from :func:`load_all`; the tables use those of
            :func:`current_defaults` and name the methods that have only others.
        budgets: Budgets to show, in order.

    Returns:
        Markdown: a heading line per budget, its table and its resolved defaults.
    """
    frame = current_defaults(every)
    cells = measured_cells(frame)
    parts = []
    for budget in budgets:
        if not any(k[1] == budget for k in cells):
            part = f"**{budget:,} simulations:** no rows at the current defaults yet.\n"
        else:
            part = f"**{budget:,} simulations**\n\n" + budget_table(cells, budget)
            resolved = resolved_defaults(frame, budget)
            if resolved:
                part += "\nResolved in these rows:\n\n" + resolved
        older = sorted(
            set(every.loc[every["num_simulations"] == budget, "method"])
            - set(frame.loc[frame["num_simulations"] == budget, "method"])
        )
        if older:
            names = ", ".join(_HEADINGS.get(m, m) for m in older)
            part += (
                f"\nOnly rows of earlier defaults or with options at this budget: "
                f"{names}.\n"
            )
        parts.append(part)
    return "\n".join(parts)
