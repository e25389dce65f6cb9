"""Regenerate the results section of benchmarks/README.md from the results file.

Usage: python benchmarks/update_readme.py  (writes sbibm.md, sbibm.png, README.md)
"""

from __future__ import annotations

import re
from pathlib import Path

from sbi_diffusion.benchmark.report import load_results, markdown_table, write_report

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "sbibm.jsonl"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def main() -> None:
    """Write the table and figure, and paste the table into the README."""
    write_report(RESULTS, HERE / "results" / "sbibm.md", HERE / "results" / "sbibm.png")
    table = markdown_table(load_results(RESULTS))
    readme = HERE / "README.md"
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    text = pattern.sub(lambda _: f"{START}\n{table}{END}", text)
    readme.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
