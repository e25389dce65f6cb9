"""The benchmark runner: validation, job planning, training and evaluation.

One job trains one method on one task at one budget with one seed, then samples
and scores every requested observation that is not in the results file yet. All
methods are amortized over observations (NLE through its MCMC posterior), so a
single training serves the ten observations; ``train_s`` of each row is the time of
that shared training.
"""

from __future__ import annotations

import math
import os
import platform
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbi_diffusion.benchmark import methods as method_registry
from sbi_diffusion.benchmark.results import (
    append_row,
    check_protocol,
    check_writable,
    read_rows,
    row_key,
)
from sbi_diffusion.benchmark.tasks import (
    NUM_OBSERVATIONS,
    check_task_name,
    distribution_to,
    load_task,
)

PROTOCOL_NUM_SAMPLES = 10_000
"""Posterior samples per observation under the published protocol."""


def protocol_for(num_posterior_samples: int) -> dict[str, Any]:
    """The protocol record stored with every row.

    Args:
        num_posterior_samples: Posterior samples scored against the reference.

    Returns:
        ``{"name": "sbibm", ...}`` for the published protocol (10,000 samples
        against sbibm's 10,000 reference samples with ``sbibm.metrics.c2st``
        defaults) and ``{"name": "test", ...}`` for anything smaller.
    """
    standard = num_posterior_samples == PROTOCOL_NUM_SAMPLES
    return {
        "name": "sbibm" if standard else "test",
        "metric": "sbibm.metrics.c2st",
        "num_posterior_samples": int(num_posterior_samples),
        "num_reference_samples": int(num_posterior_samples),
    }


def package_versions() -> dict[str, str]:
    """Versions of python, torch, sbi, sbibm and sbi_diffusion."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("sbi", "sbibm", "sbi-diffusion"):
        try:
            versions[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist.replace("-", "_")] = "not installed"
    return versions


@dataclass(frozen=True)
class Job:
    """Train one method once and score a list of observations.

    Attributes:
        task: sbibm task name.
        num_simulations: Simulation budget.
        method: Method spec string (``name:key=value,...``).
        seed: Seed of the simulations and the training.
        observations: Observation numbers to score.
        device: Torch device.
        output: Results file the rows are appended to.
        num_posterior_samples: Samples scored per observation.
        torch_threads: Intra-op threads for this job (0 leaves torch's default).
    """

    task: str
    num_simulations: int
    method: str
    seed: int
    observations: tuple[int, ...]
    device: str
    output: str
    num_posterior_samples: int = PROTOCOL_NUM_SAMPLES
    torch_threads: int = 1

    @property
    def name(self) -> str:
        """Short description for logs."""
        obs = ",".join(map(str, self.observations))
        return (
            f"{self.task} n={self.num_simulations} {self.method} "
            f"seed={self.seed} obs={obs}"
        )


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sampling_seed(seed: int, num_observation: int) -> int:
    """Seed of the sampling for one row, derived from seed and observation."""
    return seed * 1_000 + num_observation


def _sample(
    spec: method_registry.MethodSpec,
    inference: Any,
    posterior: Any,
    routed: method_registry.RoutedOptions,
    x_o: torch.Tensor,
    num_samples: int,
) -> tuple[torch.Tensor, float, float | None]:
    kwargs: dict[str, Any] = dict(routed.sample)
    with method_registry.count_network_evaluations(spec, inference, posterior) as cnt:
        start = time.perf_counter()
        samples = posterior.sample(
            (num_samples,), x=x_o, show_progress_bars=False, **kwargs
        )
        if samples.is_cuda:
            torch.cuda.synchronize()
        sample_s = time.perf_counter() - start
    nfe: float | None
    if spec.definition.family == "sbi_diffusion":
        last = getattr(posterior, "last_nfe", None)
        nfe = None if last is None else float(last)
    elif spec.name == "npe":
        nfe = 1.0
    else:
        nfe = cnt["rows"] / num_samples if cnt["rows"] else None
    return samples.detach().cpu(), sample_s, nfe


def run_job(job: Job) -> list[dict[str, Any]]:
    """Run one job and append its rows to ``job.output``.

    Args:
        job: The job.

    Returns:
        The rows written.
    """
    from sbibm.metrics import c2st

    print(f"start {job.name}", file=sys.stderr, flush=True)
    if job.torch_threads > 0:
        torch.set_num_threads(job.torch_threads)
    spec = method_registry.parse(job.method)
    task = load_task(job.task)
    protocol = protocol_for(job.num_posterior_samples)
    versions = package_versions()

    seed_everything(job.seed)
    start = time.perf_counter()
    theta = task.sample_prior(job.num_simulations)
    x = task.simulate(theta)
    simulate_s = time.perf_counter() - start

    prior = distribution_to(task.prior, job.device)
    inference, routed = method_registry.build_inference(spec, prior, job.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    inference.append_simulations(theta, x)
    inference.train(show_train_summary=False, **routed.train)
    if job.device.startswith("cuda"):
        torch.cuda.synchronize()
    train_s = time.perf_counter() - start
    train_cpu_s = time.process_time() - cpu_start
    posterior = method_registry.build_posterior(spec, inference, routed)

    rows = []
    for num_observation in job.observations:
        seed_everything(sampling_seed(job.seed, num_observation))
        x_o = task.get_observation(num_observation).to(job.device)
        error = None
        try:
            samples, sample_s, nfe = _sample(
                spec, inference, posterior, routed, x_o, job.num_posterior_samples
            )
        except Exception as err:  # noqa: BLE001 - a failed sample is a result
            # The shared training is kept for the other observations; the row
            # records the failure (no C2ST) and counts as failed in reports.
            error = f"sampling failed: {type(err).__name__}: {err}"
            samples, sample_s, nfe = torch.empty(0, task.dim_parameters), None, None
        reference = task.get_reference_posterior_samples(num_observation)
        reference = reference[: job.num_posterior_samples]
        row: dict[str, Any] = {
            "task": job.task,
            "num_simulations": job.num_simulations,
            "method": spec.name,
            "options": dict(spec.options),
            "seed": job.seed,
            "num_observation": num_observation,
            "c2st": None,
            "train_s": round(train_s, 3),
            "train_cpu_s": round(train_cpu_s, 3),
            "sample_s": None if sample_s is None else round(sample_s, 4),
            "simulate_s": round(simulate_s, 3),
            "nfe": nfe,
            "device": _device_name(job.device),
            "versions": versions,
            "protocol": protocol,
        }
        finite = torch.isfinite(samples).all(dim=1)
        if error is not None:
            row["error"] = error
        elif not finite.all():
            row["error"] = f"{int((~finite).sum())} non-finite posterior samples"
        else:
            row["c2st"] = float(c2st(reference, samples)[0])
        append_row(job.output, row)
        rows.append(row)
        print(format_row(row), file=sys.stderr, flush=True)
    return rows


def format_row(row: dict[str, Any]) -> str:
    """One log line for a finished row."""
    c2st = row["c2st"]
    score = "n/a" if c2st is None else f"{c2st:.3f}"
    nfe = "n/a" if row["nfe"] is None else f"{row['nfe']:.1f}"
    sample = "n/a" if row["sample_s"] is None else f"{row['sample_s']:.2f}s"
    line = (
        f"{row['task']} n={row['num_simulations']} {row['method']} "
        f"seed={row['seed']} obs={row['num_observation']}: c2st={score} "
        f"train={row['train_s']:.1f}s sample={sample} nfe={nfe}"
    )
    return line + (f" ({row['error']})" if row.get("error") else "")


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return f"{device} ({torch.cuda.get_device_name(index)})"
    return f"{device} ({platform.processor() or platform.machine()})"


@dataclass
class Plan:
    """What a run will do, after validation.

    Attributes:
        jobs: Jobs still to run.
        done: Rows of the requested grid already in the results file.
        requested: Number of rows the grid asks for.
    """

    jobs: list[Job] = field(default_factory=list)
    done: list[dict[str, Any]] = field(default_factory=list)
    requested: int = 0


def _positive_ints(values: Iterable[Any], what: str, hint: str) -> list[int]:
    out = []
    for value in values:
        try:
            number = int(value)
            if number != float(value):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"{what} {value!r} is not an integer; {hint}") from None
        if number <= 0:
            raise ValueError(f"{what} {value!r} must be positive; {hint}")
        out.append(number)
    if not out:
        raise ValueError(f"No {what.lower()} given; {hint}")
    return out


def plan(
    tasks: Sequence[str],
    num_simulations: Sequence[int],
    methods: Sequence[str | method_registry.MethodSpec],
    observations: Sequence[int] = tuple(range(1, NUM_OBSERVATIONS + 1)),
    seeds: Sequence[int] = (0,),
    device: str = "cpu",
    output: str | os.PathLike[str] = "results.jsonl",
    num_posterior_samples: int = PROTOCOL_NUM_SAMPLES,
    torch_threads: int = 1,
) -> Plan:
    """Validate a benchmark request and list the jobs still to run.

    Every check that can fail runs here, before any training: task and method
    names, method options (by constructing each estimator on each task's prior),
    budgets, observations, seeds, the device, the output path and the protocol of
    rows already in it.

    Args:
        tasks: sbibm task names.
        num_simulations: Budgets.
        methods: Method specs.
        observations: Observation numbers (1-10).
        seeds: Seeds.
        device: ``"cpu"`` or ``"cuda"``/``"cuda:N"``.
        output: Results file.
        num_posterior_samples: Samples per observation; 10,000 is the protocol,
            smaller values mark rows as a test protocol.
        torch_threads: Intra-op threads per job.

    Returns:
        The plan.

    Raises:
        ValueError: On any invalid input.
    """
    if isinstance(tasks, str) or not tasks:
        raise ValueError("Pass tasks as a non-empty list of sbibm task names.")
    tasks = [check_task_name(t) for t in tasks]
    budgets = _positive_ints(
        num_simulations, "Budget", "pass simulation budgets such as 1000 10000."
    )
    obs = _positive_ints(observations, "Observation", "pass numbers from 1 to 10.")
    for number in obs:
        if number > NUM_OBSERVATIONS:
            raise ValueError(
                f"Observation {number} does not exist; sbibm tasks have observations "
                f"1 to {NUM_OBSERVATIONS}."
            )
    seed_list = [int(s) for s in seeds]
    if not seed_list or any(s < 0 for s in seed_list):
        raise ValueError(f"Seeds {list(seeds)} must be non-negative integers.")
    if num_posterior_samples <= 0 or num_posterior_samples > PROTOCOL_NUM_SAMPLES:
        raise ValueError(
            f"num_posterior_samples={num_posterior_samples} must be in "
            f"1..{PROTOCOL_NUM_SAMPLES} (10,000 is the protocol)."
        )
    _check_device(device)
    if isinstance(methods, str) or not methods:
        raise ValueError("Pass methods as a non-empty list of method specs.")
    specs = [method_registry.parse(m) for m in methods]
    for spec in specs:
        for task_name in tasks:
            method_registry.build_inference(spec, load_task(task_name).prior, "cpu")

    output = Path(output)
    check_writable(output)
    existing = read_rows(output)
    protocol = protocol_for(num_posterior_samples)
    check_protocol(existing, protocol, output)
    by_key = {row_key(row): row for row in existing}

    result = Plan()
    for task_name in tasks:
        for budget in budgets:
            for spec in specs:
                for seed in seed_list:
                    missing = []
                    for number in obs:
                        key = row_key(
                            {
                                "task": task_name,
                                "num_simulations": budget,
                                "method": spec.name,
                                "options": spec.options,
                                "seed": seed,
                                "num_observation": number,
                            }
                        )
                        result.requested += 1
                        if key in by_key:
                            result.done.append(by_key[key])
                        else:
                            missing.append(number)
                    if missing:
                        result.jobs.append(
                            Job(
                                task=task_name,
                                num_simulations=budget,
                                method=spec.to_string(),
                                seed=seed,
                                observations=tuple(missing),
                                device=device,
                                output=str(output),
                                num_posterior_samples=num_posterior_samples,
                                torch_threads=torch_threads,
                            )
                        )
    return result


def _check_device(device: str) -> None:
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(
            f"Device {device!r} is not a torch device; pass 'cpu' or 'cuda'."
        ) from err
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Device {device!r} requested but CUDA is not available here; pass "
            "--device cpu or run on a GPU node (e.g. --executor slurm --gpus 1)."
        )
    if parsed.type not in {"cpu", "cuda"}:
        raise ValueError(f"Device {device!r} is not supported; pass 'cpu' or 'cuda'.")


def job_as_dict(job: Job) -> dict[str, Any]:
    """A job as a plain dict (for logs)."""
    return asdict(job)


def is_nan(value: Any) -> bool:
    """Whether a stored metric is missing."""
    return value is None or (isinstance(value, float) and math.isnan(value))
