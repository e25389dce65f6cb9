"""Table of the consistency benchmark, next to the models it is compared with.

Reads ``benchmarks/results/consistency.jsonl`` (ConsistencyNPE rows) and the
DiffusionNPE and NPE rows of ``benchmarks/results/sbibm.jsonl`` for the same
tasks, budget and observations, and writes ``benchmarks/results/consistency.md``.

Usage: ``python benchmarks/consistency/summarize.py``
"""

from __future__ import annotations

from pathlib import Path

from sbi_diffusion.benchmark.report import comparison_table, load_results

RESULTS = Path(__file__).resolve().parents[1] / "results"

HEADER = """\
Consistency models (sbibm protocol: 10,000 samples, sbibm `c2st`, seed 0, one
torch thread). Made by `bash benchmarks/consistency/run.sh`; regenerate with
`python benchmarks/consistency/summarize.py`.

- `consistency[steps=k]`: consistency training, sampled with k steps;
  `consistency[steps=k,teacher=diffusion]`: distilled from the DiffusionNPE in
  the `diffusion` line (the same trained model), sampled with k steps.
- `diffusion` and `npe` are the grid rows of `sbibm.jsonl` on the same
  observations. Speed-up: the DiffusionNPE's sampling time over this line's.
- Distillation `train s` excludes the teacher's training.

"""


def main() -> None:
    """Write ``consistency.md`` and print it."""
    table = comparison_table(
        load_results(RESULTS / "consistency.jsonl"),
        load_results(RESULTS / "sbibm.jsonl"),
    )
    (RESULTS / "consistency.md").write_text(HEADER + table, encoding="utf-8")
    print(HEADER + table)


if __name__ == "__main__":
    main()
