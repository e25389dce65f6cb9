"""What the sequential timing scripts share: their common arguments, the default
``DiffusionNPE`` of each task at observation 1, and the fields every row holds.

``region_time.py`` and ``thresholder_time.py`` import it as a sibling module
(run them as ``python benchmarks/sequential/<script>.py``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sbi_diffusion.benchmark.methods import MethodSpec, parse
from sbi_diffusion.benchmark.runner import (
    TrainedMethod,
    device_name,
    package_versions,
    resolved_options,
    train_or_load,
)
from sbi_diffusion.benchmark.tasks import load_task


def add_common_arguments(
    parser: argparse.ArgumentParser, default_tasks: list[str], default_output: str
) -> None:
    """``--tasks``, ``--num-simulations``, ``--support-samples``, ``--threads``,
    ``--output`` and ``--model-cache``."""
    parser.add_argument("--tasks", nargs="+", default=default_tasks)
    parser.add_argument("--num-simulations", type=int, default=1000)
    parser.add_argument("--support-samples", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=default_output)
    parser.add_argument(
        "--model-cache",
        default=None,
        help="folder of trained estimators: train once, reuse in later runs",
    )


@dataclass
class DefaultPosterior:
    """The default ``DiffusionNPE`` of one task, with ``x_o`` of observation 1
    as the posterior's default ``x``."""

    task_name: str
    task: Any
    spec: MethodSpec
    trained: TrainedMethod
    posterior: Any

    def row(self, args: argparse.Namespace, **fields: Any) -> dict[str, Any]:
        """A result row: the task and budget, ``fields``, the resolved options
        (``fields["resolved"]`` adds to them), the threads, device and versions."""
        extra_resolved = fields.pop("resolved", {})
        return {
            "task": self.task_name,
            "dim_parameters": self.task.dim_parameters,
            "num_simulations": args.num_simulations,
            "support_samples": args.support_samples,
            **fields,
            "resolved": {
                **resolved_options(
                    self.spec,
                    self.posterior,
                    self.trained.routed,
                    self.trained.resolved_training,
                ),
                **extra_resolved,
            },
            "threads": args.threads,
            "device": device_name("cpu"),
            "versions": package_versions(),
        }


def default_posteriors(args: argparse.Namespace) -> Iterator[DefaultPosterior]:
    """Set the torch threads, then train (or load from the model cache) the
    default ``DiffusionNPE`` on ``args.num_simulations`` of each task."""
    torch.set_num_threads(args.threads)
    for task_name in args.tasks:
        task = load_task(task_name)
        spec = parse("diffusion")
        cache = Path(args.model_cache) if args.model_cache else None
        trained = train_or_load(
            task_name, task, spec, args.num_simulations, 0, "cpu", cache=cache
        )
        posterior = trained.posterior.set_default_x(task.get_observation(1))
        yield DefaultPosterior(task_name, task, spec, trained, posterior)
