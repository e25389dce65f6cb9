"""What every row of the fields benchmarks records about its run."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from sbi_diffusion.benchmark.runner import device_name, package_versions


def machine_record() -> dict[str, Any]:
    """The device, package versions and command of this run."""
    return {
        "device": device_name("cpu"),
        "versions": package_versions(),
        "command": "python " + " ".join(sys.argv),
    }


def run_record(
    args: argparse.Namespace, size: int, method: str, start: float
) -> dict[str, Any]:
    """The run's key (size, method, simulations, seed), its wall-clock seconds
    since ``start`` (``time.perf_counter``), threads, and
    :func:`machine_record`."""
    return {
        "size": size,
        "method": method,
        "num_simulations": args.num_simulations,
        "seed": args.seed,
        "wall_s": round(time.perf_counter() - start, 1),
        "threads": args.threads,
        **machine_record(),
    }
