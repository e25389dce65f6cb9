"""Where benchmark jobs run: in-process, a local process pool, or submitit.

Each job appends its own rows to the results file as soon as an observation is
scored, so nothing is lost when the coordinating process dies; the executors only
start jobs and report failures.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbi_diffusion.benchmark.runner import Job, format_row, run_job

EXECUTORS: tuple[str, ...] = ("pool", "inline", "local", "slurm")
"""``pool``: process pool on this machine (default); ``inline``: this process;
``local``: submitit's local executor; ``slurm``: submitit on a Slurm cluster."""


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of each Slurm job (submitit ``slurm_*`` parameters).

    Attributes:
        partition: Slurm partition; ``None`` uses the cluster default.
        time_min: Wall-time limit per job in minutes.
        gpus_per_node: GPUs per job.
        cpus_per_task: CPU cores per job.
        mem_gb: Memory per job in GiB.
        array_parallelism: Most jobs running at once.
        additional: Extra ``slurm_*`` parameters, e.g. ``{"account": "abc"}``.
    """

    partition: str | None = None
    time_min: int = 120
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 16
    array_parallelism: int = 64
    additional: dict[str, Any] | None = None


@dataclass
class JobFailure:
    """A job that raised; its rows that were finished are already saved."""

    job: Job
    error: str


Logger = Callable[[str], None]


def _log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def execute(
    jobs: Sequence[Job],
    executor: str = "pool",
    workers: int = 1,
    folder: str | Path = "benchmark_logs",
    slurm: SlurmOptions | None = None,
    log: Logger = _log_to_stderr,
) -> list[JobFailure]:
    """Run jobs and wait for them.

    Args:
        jobs: The jobs.
        executor: One of :data:`EXECUTORS`.
        workers: Parallel jobs for ``pool`` and ``local``.
        folder: Log folder of submitit.
        slurm: Slurm resources (``slurm`` executor).
        log: Receives one line per started/finished job.

    Returns:
        The failed jobs (empty when all succeeded).

    Raises:
        ValueError: If the executor is unknown or ``workers`` is not positive.
    """
    if executor not in EXECUTORS:
        raise ValueError(
            f"Unknown executor {executor!r}; pass one of: {', '.join(EXECUTORS)}."
        )
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1.")
    if not jobs:
        return []
    if executor == "inline":
        return _run_inline(jobs, log)
    if executor == "pool":
        return _run_pool(jobs, workers, log)
    return _run_submitit(jobs, executor, workers, Path(folder), slurm, log)


def _describe(err: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(err), err)).strip()


def _run_inline(jobs: Sequence[Job], log: Logger) -> list[JobFailure]:
    failures = []
    for number, job in enumerate(jobs, start=1):
        log(f"[{number}/{len(jobs)}] {job.name}")
        try:
            run_job(job)
        except Exception as err:  # noqa: BLE001 - keep going with other jobs
            failures.append(JobFailure(job, _describe(err)))
            log(f"FAILED {job.name}: {_describe(err)}")
    return failures


def _run_pool(jobs: Sequence[Job], workers: int, log: Logger) -> list[JobFailure]:
    failures = []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(run_job, job): job for job in jobs}
        log(f"submitted {len(jobs)} jobs to {workers} worker(s)")
        done = 0
        for future in concurrent.futures.as_completed(futures):
            job = futures[future]
            done += 1
            try:
                future.result()
                log(f"[{done}/{len(jobs)}] done {job.name}")
            except Exception as err:  # noqa: BLE001
                failures.append(JobFailure(job, _describe(err)))
                log(f"[{done}/{len(jobs)}] FAILED {job.name}: {_describe(err)}")
    return failures


def slurm_parameters(options: SlurmOptions) -> dict[str, Any]:
    """submitit ``update_parameters`` arguments for Slurm jobs.

    Args:
        options: The requested resources.

    Returns:
        Keyword arguments for ``submitit.AutoExecutor.update_parameters``.
    """
    params: dict[str, Any] = {
        "timeout_min": options.time_min,
        "slurm_array_parallelism": options.array_parallelism,
        "cpus_per_task": options.cpus_per_task,
        "mem_gb": options.mem_gb,
        "name": "sbi-diffusion-bench",
    }
    if options.gpus_per_node:
        params["gpus_per_node"] = options.gpus_per_node
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.additional:
        params["slurm_additional_parameters"] = dict(options.additional)
    return params


def make_submitit_executor(
    executor: str, folder: Path, slurm: SlurmOptions | None
) -> Any:
    """Create the submitit executor for ``local`` or ``slurm``.

    Args:
        executor: ``"local"`` or ``"slurm"``.
        folder: submitit's log folder.
        slurm: Resources; defaults to :class:`SlurmOptions`.

    Returns:
        A configured submitit executor.

    Raises:
        ValueError: If submitit is missing or Slurm is not available here.
    """
    try:
        import submitit
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ValueError(
            f"--executor {executor} needs submitit: pip install submitit."
        ) from err
    options = slurm or SlurmOptions()
    if executor == "local":
        ex: Any = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=options.time_min)
        return ex
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as err:
        raise ValueError(
            f"--executor slurm needs a Slurm cluster ({err}); run on a login node "
            "or use --executor pool."
        ) from err
    ex.update_parameters(**slurm_parameters(options))
    return ex


def _run_submitit(
    jobs: Sequence[Job],
    executor: str,
    workers: int,
    folder: Path,
    slurm: SlurmOptions | None,
    log: Logger,
) -> list[JobFailure]:
    ex = make_submitit_executor(executor, folder, slurm)
    failures = []
    pending = list(jobs)
    # The local executor runs every submitted job at once; submit in waves.
    wave = workers if executor == "local" else len(pending)
    while pending:
        batch, pending = pending[:wave], pending[wave:]
        submitted = ex.map_array(run_job, batch)
        log(f"submitted {len(batch)} jobs via submitit ({executor}), logs in {folder}")
        for job, handle in zip(batch, submitted, strict=True):
            try:
                _report(handle.result(), log)
            except Exception as err:  # noqa: BLE001
                failures.append(JobFailure(job, _describe(err)))
                log(f"FAILED {job.name} (submitit job {handle.job_id}): {err}")
    return failures


def _report(rows: list[dict[str, Any]], log: Logger, prefix: str = "") -> None:
    for row in rows:
        log(prefix + format_row(row))
