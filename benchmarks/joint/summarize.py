"""Table of the joint-model benchmark next to DiffusionNPE, NPE and NLE.

Reads ``benchmarks/joint/results.jsonl`` (JointDiffusion rows) and the
DiffusionNPE, NPE and NLE rows of ``benchmarks/results/sbibm.jsonl`` for the same
tasks, budgets and observations, and writes ``benchmarks/joint/results.md``.

Usage: ``python benchmarks/joint/summarize.py``
"""

from __future__ import annotations

from pathlib import Path

from sbi_diffusion.benchmark.report import comparison_table, load_results

HERE = Path(__file__).resolve().parent
GRID = HERE.parent / "results" / "sbibm.jsonl"

HEADER = """\
JointDiffusion (sbibm protocol: 10,000 samples, sbibm `c2st`, seed 0, one torch
thread). Made by `bash benchmarks/joint/run.sh`; regenerate with
`python benchmarks/joint/summarize.py`. `joint` samples the posterior
conditional; `joint[posterior_method=likelihood_mcmc]` uses the joint model's
likelihood in sbi's MCMC posterior. `diffusion`, `npe` and `nle` are the grid
rows of `benchmarks/results/sbibm.jsonl` on the same observations.

"""


def main() -> None:
    """Write ``results.md`` and print it."""
    table = comparison_table(
        load_results(HERE / "results.jsonl"),
        load_results(GRID),
        baseline_labels=("diffusion", "npe", "nle"),
    )
    (HERE / "results.md").write_text(HEADER + table, encoding="utf-8")
    print(HEADER + table)


if __name__ == "__main__":
    main()
