"""Python entry point of the benchmark: :func:`run_benchmark`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sbi_diffusion.benchmark.executors import SlurmOptions, execute
from sbi_diffusion.benchmark.methods import MethodSpec
from sbi_diffusion.benchmark.plan import plan
from sbi_diffusion.benchmark.runner import PROTOCOL_NUM_SAMPLES
from sbi_diffusion.benchmark.tasks import NUM_OBSERVATIONS

if TYPE_CHECKING:
    import pandas as pd


class BenchmarkJobsFailed(RuntimeError):
    """Raised when some jobs failed; the rows of the others are saved."""


def run_benchmark(
    tasks: Sequence[str],
    num_simulations: Sequence[int],
    methods: Sequence[str | MethodSpec],
    observations: Sequence[int] = tuple(range(1, NUM_OBSERVATIONS + 1)),
    seeds: Sequence[int] = (0,),
    device: str = "cpu",
    output: str | os.PathLike[str] = "results.jsonl",
    executor: str = "pool",
    workers: int = 1,
    torch_threads: int = 1,
    slurm: SlurmOptions | None = None,
    log_folder: str | os.PathLike[str] | None = None,
    num_posterior_samples: int = PROTOCOL_NUM_SAMPLES,
    raise_on_failure: bool = True,
    model_cache: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Run (or resume) a benchmark and return its rows.

    Every input is validated before any training starts. Rows already in
    ``output`` are skipped, so an interrupted run continues where it stopped.

    Args:
        tasks: sbibm task names, e.g. ``["two_moons", "slcp"]``.
        num_simulations: Simulation budgets, e.g. ``[1000, 10000]``.
        methods: Method specs, e.g. ``["npe", "diffusion:sampler=heun"]``.
        observations: sbibm observation numbers (1-10).
        seeds: Seeds; one training per (task, budget, method, seed).
        device: ``"cpu"`` or ``"cuda"``.
        output: JSONL results file; created or appended to.
        executor: ``"pool"`` (default), ``"inline"``, ``"local"`` (submitit) or
            ``"slurm"`` (submitit).
        workers: Jobs running at once for ``pool`` and ``local``.
        torch_threads: Intra-op torch threads per job.
        slurm: Slurm resources for ``executor="slurm"``.
        log_folder: submitit's log folder; defaults to ``<output>.logs``.
        num_posterior_samples: Samples per observation; anything but 10,000 marks
            the rows as a test protocol, kept apart from published numbers.
        raise_on_failure: Raise :class:`BenchmarkJobsFailed` after the run if any
            job failed (its finished rows are kept).
        model_cache: Folder where each trained estimator is saved and reused by
            reruns (an interrupted job, or new observations or sampling options
            on the same training). ``None`` (default) trains every time.

    Returns:
        All rows of the requested grid found in ``output`` after the run, one per
        (task, budget, method, options, seed, observation).

    Raises:
        ValueError: On invalid input, before anything runs.
        BenchmarkJobsFailed: If jobs failed and ``raise_on_failure`` is set.
    """
    import pandas as pd

    grid = {
        "tasks": tasks,
        "num_simulations": num_simulations,
        "methods": methods,
        "observations": observations,
        "seeds": seeds,
        "device": device,
        "output": output,
        "num_posterior_samples": num_posterior_samples,
        "torch_threads": torch_threads,
    }
    the_plan = plan(**grid, model_cache=model_cache)
    folder = Path(log_folder) if log_folder else Path(f"{output}.logs")
    # Largest budgets first: the longest jobs start early, which shortens the run.
    jobs = sorted(the_plan.jobs, key=lambda job: -job.num_simulations)
    failures = execute(
        jobs, executor=executor, workers=workers, folder=folder, slurm=slurm
    )
    # Re-plan to collect every finished row of the grid, old and new.
    final = plan(**grid)
    if failures and raise_on_failure:
        details = "\n".join(f"- {f.job.name}: {f.error}" for f in failures)
        raise BenchmarkJobsFailed(
            f"{len(failures)} job(s) failed; finished rows are saved in {output} and "
            f"a rerun of the same command resumes:\n{details}"
        )
    return pd.DataFrame(final.done)
