"""Reports from a results file: a Markdown table and a C2ST-vs-budget figure."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sbi_diffusion.benchmark import methods as method_registry
from sbi_diffusion.benchmark.results import read_rows
from sbi_diffusion.benchmark.tasks import TASKS

if TYPE_CHECKING:
    import pandas as pd

EARLIER_DEFAULTS = " (earlier defaults)"
"""Label suffix of rows made under older defaults than the method's current."""

_METHOD_ORDER = (
    "diffusion",
    "flow_matching",
    "consistency",
    "joint",
    "npe",
    "nle",
    "npse",
    "fmpe",
)


def method_label(method: str, options: dict[str, Any] | None) -> str:
    """Label of a method with its options, e.g. ``diffusion[steps=30]``."""
    if not options:
        return method
    inner = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"{method}[{inner}]"


def made_under_current_defaults(
    row: dict[str, Any], current: dict[str, str | None] | None = None
) -> bool:
    """Whether a result row was made under its method's current defaults.

    Compares the row's defaults fingerprint with the one the method has now
    (:func:`~sbi_diffusion.benchmark.methods.defaults_fingerprint`). Rows of this
    package's methods written before rows carried a fingerprint, and rows of
    methods this install does not know, count as not current.

    Args:
        row: A result row.
        current: Fingerprints already computed, by method and options; filled
            in here, so a caller checking many rows computes each once.
    """
    name = str(row["method"])
    if name not in method_registry.METHODS:
        return False
    options = dict(row.get("options") or {})
    current = {} if current is None else current
    key = json.dumps([name, options], sort_keys=True, default=str)
    if key not in current:
        try:
            spec = method_registry.MethodSpec(name, options)
            current[key] = method_registry.defaults_fingerprint(spec)
        except (method_registry.MethodUnavailableError, ValueError):
            current[key] = None
    now = current[key]
    return now is not None and method_registry.row_fingerprint(row) == now


def load_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a results file into a DataFrame with a ``label`` column.

    A row that was not made under the current
    defaults (:func:`made_under_current_defaults`) is labelled with
    ``" (earlier defaults)"`` after the method, so it is never read as a row
    of today's defaults; the ``current`` column holds the same test for every
    row.

    Args:
        path: The JSONL results file.

    Returns:
        One row per result.

    Raises:
        ValueError: If the file does not exist or holds no rows.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise ValueError(f"Results file {path} does not exist; pass a .jsonl file.")
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"Results file {path} holds no rows yet.")
    frame = pd.DataFrame(rows)
    fingerprints: dict[str, str | None] = {}
    frame["current"] = [made_under_current_defaults(r, fingerprints) for r in rows]
    frame["label"] = [
        method_label(row["method"], row.get("options"))
        + ("" if current else EARLIER_DEFAULTS)
        for row, current in zip(rows, frame["current"], strict=True)
    ]
    frame["protocol_name"] = [p.get("name", "?") for p in frame["protocol"]]
    return frame


def _label_order(labels: list[str]) -> list[str]:
    def key(label: str) -> tuple[int, str]:
        base = label.split("[")[0].removesuffix(EARLIER_DEFAULTS)
        rank = _METHOD_ORDER.index(base) if base in _METHOD_ORDER else 99
        return rank, label

    return sorted(set(labels), key=key)


def _task_order(tasks: list[str]) -> list[str]:
    return sorted(set(tasks), key=lambda t: (TASKS.index(t) if t in TASKS else 99, t))


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread of C2ST, and mean timings, per task, budget and method.

    Args:
        frame: Rows from :func:`load_results`.

    Returns:
        One row per (task, num_simulations, label) with ``c2st_mean``,
        ``c2st_std`` (over observations and seeds), ``n`` (scored rows),
        ``failed`` (rows without a score), ``train_s``, ``sample_s`` and ``nfe``.
    """
    import pandas as pd

    groups = frame.groupby(["task", "num_simulations", "label"], sort=False)
    out = groups.agg(
        c2st_mean=("c2st", "mean"),
        c2st_std=("c2st", "std"),
        n=("c2st", "count"),
        rows=("c2st", "size"),
        train_s=("train_s", "mean"),
        sample_s=("sample_s", "mean"),
        nfe=("nfe", "mean"),
    ).reset_index()
    out["failed"] = out["rows"] - out["n"]
    out["c2st_std"] = out["c2st_std"].fillna(0.0)
    return pd.DataFrame(out.drop(columns="rows"))


def markdown_table(frame: pd.DataFrame) -> str:
    """Markdown tables of C2ST (mean +- std over observations) and timings.

    Args:
        frame: Rows from :func:`load_results`.

    Returns:
        Markdown text: a C2ST table with one row per task and method and one
        column per budget, then a timing table.
    """
    summary = summarize(frame)
    budgets = sorted(summary["num_simulations"].unique())
    labels = _label_order(list(summary["label"]))
    lines = [
        "C2ST (0.5 is best): mean +- standard deviation over observations, "
        "number of observations in parentheses.",
        "",
        "| task | method | " + " | ".join(f"{b:,}" for b in budgets) + " |",
        "|---|---|" + "---|" * len(budgets),
    ]
    index = {
        (r.task, r.num_simulations, r.label): r for r in summary.itertuples(index=False)
    }
    for task in _task_order(list(summary["task"])):
        for label in labels:
            cells = []
            for budget in budgets:
                r = index.get((task, budget, label))
                if r is None:
                    cells.append("")
                elif r.n == 0:
                    cells.append(f"failed ({r.failed})")
                else:
                    cell = f"{r.c2st_mean:.3f} +- {r.c2st_std:.3f} ({r.n})"
                    if r.failed:
                        cell += f", {r.failed} failed"
                    cells.append(cell)
            if any(cells):
                lines.append(f"| {task} | {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean training time (s), sampling time for the posterior samples (s) and "
        "network evaluations per sample.",
        "",
        "| task | budget | method | train s | sample s | NFE |",
        "|---|---|---|---|---|---|",
    ]
    for task in _task_order(list(summary["task"])):
        for budget in budgets:
            for label in labels:
                r = index.get((task, budget, label))
                if r is None:
                    continue
                nfe = "" if r.nfe != r.nfe else f"{r.nfe:.0f}"
                lines.append(
                    f"| {task} | {budget:,} | {label} | {r.train_s:.0f} | "
                    f"{r.sample_s:.2f} | {nfe} |"
                )
    protocols = sorted(set(frame["protocol_name"]))
    if protocols != ["sbibm"]:
        lines += [
            "",
            f"Note: protocol(s) {', '.join(protocols)}; only 'sbibm' (10,000 "
            "samples) compares with published numbers.",
        ]
    return "\n".join(lines) + "\n"


def figure(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Plot C2ST against budget, one panel per task, one line per method.

    Args:
        frame: Rows from :func:`load_results`.
        path: PNG file to write.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(frame)
    tasks = _task_order(list(summary["task"]))  # a panel even without scores
    summary = summary[summary["n"] > 0]
    labels = _label_order(list(summary["label"]))
    ncols = min(5, max(1, len(tasks)))
    nrows = (len(tasks) + ncols - 1) // ncols
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(2.6 * ncols + 1.8, 2.4 * nrows), squeeze=False
    )
    colors = plt.get_cmap("tab10")
    for ax, task in zip(axes.flat, tasks, strict=False):
        part = summary[summary["task"] == task]
        for number, label in enumerate(labels):
            line = part[part["label"] == label].sort_values("num_simulations")
            if line.empty:
                continue
            ax.errorbar(
                line["num_simulations"],
                line["c2st_mean"],
                yerr=line["c2st_std"],
                marker="o",
                markersize=4,
                capsize=2,
                color=colors(number % 10),
                label=label,
            )
        ax.set_xscale("log")
        ax.set_ylim(0.45, 1.02)
        ax.set_yticks([0.5, 0.75, 1.0])
        ax.set_title(task.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(tasks) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("C2ST")
    for ax in axes[-1, :]:
        ax.set_xlabel("simulations")
    handles, names = [], []
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            if name not in names:
                handles.append(handle)
                names.append(name)
    fig.legend(handles, names, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def comparison_table(
    frame: pd.DataFrame,
    baselines: pd.DataFrame,
    baseline_labels: tuple[str, ...] = ("diffusion", "npe"),
    reference_label: str = "diffusion",
) -> str:
    """Markdown table of some methods next to baselines on the same observations.

    For every task and budget in ``frame``, the rows of ``baselines`` with a label
    in ``baseline_labels`` and the same task, budget and observation numbers are
    summarised with it, so each line averages over the same observations.

    Args:
        frame: Rows of the methods compared (from :func:`load_results`).
        baselines: Rows holding the baselines (e.g. the grid's results).
        baseline_labels: Labels of the baseline methods to include.
        reference_label: The label the differences and speed-ups refer to.

    Returns:
        Markdown: task, budget, method, NFE, mean C2ST (observations), its
        difference to the reference, sampling time, the reference's sampling
        time over this line's, and training time.
    """
    import pandas as pd

    lines = [
        f"| task | budget | method | NFE | C2ST (obs) | minus {reference_label} | "
        f"sample s | speed-up over {reference_label} | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    chosen = baselines[baselines["label"].isin(baseline_labels)]
    for task in _task_order(list(frame["task"])):
        for budget in sorted(frame.loc[frame["task"] == task, "num_simulations"]):
            rows = frame[(frame["task"] == task) & (frame["num_simulations"] == budget)]
            if rows.empty:
                continue
            frame = frame.drop(rows.index)  # each (task, budget) once
            base = chosen[
                (chosen["task"] == task)
                & (chosen["num_simulations"] == budget)
                & chosen["num_observation"].isin(set(rows["num_observation"]))
            ]
            summary = summarize(pd.concat([base, rows], ignore_index=True))
            by_label = {r.label: r for r in summary.itertuples(index=False)}
            reference = by_label.get(reference_label)
            order = [b for b in baseline_labels if b in by_label]
            order += _label_order([k for k in by_label if k not in baseline_labels])
            for label in order:
                r = by_label[label]
                delta = speedup = ""
                if reference is not None and label != reference_label:
                    delta = f"{r.c2st_mean - reference.c2st_mean:+.3f}"
                    speedup = f"{reference.sample_s / r.sample_s:.2g}x"
                nfe = "" if r.nfe != r.nfe else f"{r.nfe:.0f}"
                score = "failed" if r.n == 0 else f"{r.c2st_mean:.3f} ({r.n})"
                lines.append(
                    f"| {task} | {budget:,} | {label} | {nfe} | {score} | {delta} | "
                    f"{r.sample_s:.2f} | {speedup} | {r.train_s:.0f} |"
                )
    return "\n".join(lines) + "\n"


def write_report(
    results: str | os.PathLike[str],
    table: str | os.PathLike[str] | None = None,
    png: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path]:
    """Write the Markdown table and the PNG figure of a results file.

    Args:
        results: The JSONL results file.
        table: Markdown output; defaults to the results path with ``.md``.
        png: Figure output; defaults to the results path with ``.png``.

    Returns:
        The table path and the figure path.
    """
    results = Path(results)
    frame = load_results(results)
    table_path = Path(table) if table else results.with_suffix(".md")
    png_path = Path(png) if png else results.with_suffix(".png")
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(markdown_table(frame), encoding="utf-8")
    figure(frame, png_path)
    return table_path, png_path
