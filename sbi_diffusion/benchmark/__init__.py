"""Benchmark of simulation-based inference methods on the ten sbibm tasks.

Use :func:`run_benchmark` from Python, or the command line
``sbi-diffusion-bench`` (also ``python -m sbi_diffusion.benchmark``).
"""

from sbi_diffusion.benchmark.api import BenchmarkJobsFailed, run_benchmark

__all__ = ["BenchmarkJobsFailed", "run_benchmark"]
