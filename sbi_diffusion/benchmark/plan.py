"""Planning a benchmark grid: the jobs of tasks x budgets x methods x seeds.

:func:`plan` checks the grid, reads what an output file already holds, and
returns the jobs still to run, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sbi_diffusion.benchmark import methods as method_registry
from sbi_diffusion.benchmark.results import (
    check_protocol,
    check_writable,
    read_rows,
    row_key,
)
from sbi_diffusion.benchmark.runner import PROTOCOL_NUM_SAMPLES, Job, protocol_for
from sbi_diffusion.benchmark.tasks import (
    NUM_OBSERVATIONS,
    check_observation,
    check_task_name,
    load_task,
)

__all__ = ["Plan", "plan"]


@dataclass
class Plan:
    """What a run will do, after validation.

    Attributes:
        jobs: Jobs still to run.
        done: Rows of the requested grid already in the results file and made
            under the current defaults (see ``defaults_fingerprint`` in
            :mod:`sbi_diffusion.benchmark.methods`).
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
    model_cache: str | os.PathLike[str] | None = None,
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
        model_cache: Folder where trained estimators are kept and reused.

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
    for task_name in tasks:
        for number in obs:
            check_observation(task_name, number)
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
    # A row counts as done only if it was made under the current defaults.
    by_key = {
        (row_key(row), method_registry.row_fingerprint(row)): row for row in existing
    }

    result = Plan()
    for task_name in tasks:
        for budget in budgets:
            for spec in specs:
                defaults = method_registry.defaults_fingerprint(spec)
                for seed in seed_list:
                    missing = []
                    for number in obs:
                        requested = {
                            "task": task_name,
                            "num_simulations": budget,
                            "method": spec.name,
                            "options": spec.options,
                            "seed": seed,
                            "num_observation": number,
                        }
                        key = (row_key(requested), defaults)
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
                                model_cache=(
                                    None if model_cache is None else str(model_cache)
                                ),
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
