"""Loading the ten sbibm tasks so that all of them run on a current stack.

Two sbibm tasks need help on current installations:

- ``sir`` and ``lotka_volterra`` import ``diffeqtorch`` (Julia) at module level. We
  import them with a placeholder module, so that their priors, observations and
  reference posteriors load, and simulate with the pure-torch re-implementations
  in :mod:`sbi_diffusion.benchmark.simulators`.
- ``slcp_distractors`` unpickles a mixture model with ``torch.load``, which
  torch >= 2.6 refuses by default. Its simulator runs with ``torch.load`` allowed to
  unpickle, only for the duration of the call and only for sbibm's bundled files.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sbi_diffusion.benchmark import inverse_kinematics
from sbi_diffusion.benchmark.simulators import (
    lotka_volterra_simulator,
    sir_simulator,
)

TASKS: tuple[str, ...] = (
    "gaussian_linear",
    "gaussian_linear_uniform",
    "gaussian_mixture",
    "two_moons",
    "slcp",
    "slcp_distractors",
    "bernoulli_glm",
    "bernoulli_glm_raw",
    "sir",
    "lotka_volterra",
)
"""The ten sbibm benchmark tasks, in the order of the sbibm paper."""

EXTRA_TASKS: tuple[str, ...] = ("inverse_kinematics",)
"""Tasks of this package scored like the sbibm ones: the robot arm of
:mod:`sbi_diffusion.benchmark.inverse_kinematics` (one observation)."""

NUM_OBSERVATIONS = 10
"""Observations of every sbibm task."""

_TORCH_SIMULATORS: dict[str, Callable[[Tensor], Tensor]] = {
    "sir": sir_simulator,
    "lotka_volterra": lotka_volterra_simulator,
}


@dataclass
class BenchmarkTask:
    """One sbibm task with a simulator that runs without Julia.

    Attributes:
        name: sbibm task name.
        sbibm_task: The underlying ``sbibm`` task object.
        prior: Prior as a torch distribution, usable by ``sbi``.
        simulator: Maps parameters ``(n, dim_parameters)`` to data
            ``(n, dim_data)``.
    """

    name: str
    sbibm_task: Any
    prior: torch.distributions.Distribution
    simulator: Callable[[Tensor], Tensor]

    @property
    def dim_parameters(self) -> int:
        """Number of parameters."""
        return int(self.sbibm_task.dim_parameters)

    @property
    def dim_data(self) -> int:
        """Number of data dimensions."""
        return int(self.sbibm_task.dim_data)

    def sample_prior(self, num_samples: int) -> Tensor:
        """Draw parameters from the prior.

        Args:
            num_samples: Number of draws.

        Returns:
            Parameters of shape ``(num_samples, dim_parameters)``.
        """
        return self.prior.sample((num_samples,))

    def simulate(self, theta: Tensor, batch_size: int = 10_000) -> Tensor:
        """Run the simulator in batches.

        Args:
            theta: Parameters of shape ``(n, dim_parameters)``.
            batch_size: Simulations per simulator call.

        Returns:
            Data of shape ``(n, dim_data)``.
        """
        chunks = [
            self.simulator(theta[i : i + batch_size])
            for i in range(0, theta.shape[0], batch_size)
        ]
        return torch.cat(chunks, dim=0)

    def get_observation(self, num_observation: int) -> Tensor:
        """sbibm's observation number ``num_observation`` (1-10), shape (1, dim)."""
        _check_observation(num_observation)
        return self.sbibm_task.get_observation(num_observation=num_observation)

    def get_reference_posterior_samples(self, num_observation: int) -> Tensor:
        """sbibm's 10,000 reference posterior samples for an observation."""
        _check_observation(num_observation)
        return self.sbibm_task.get_reference_posterior_samples(
            num_observation=num_observation
        )

    def get_true_parameters(self, num_observation: int) -> Tensor:
        """Parameters that generated sbibm's observation ``num_observation``."""
        _check_observation(num_observation)
        return self.sbibm_task.get_true_parameters(num_observation=num_observation)


def check_task_name(name: str) -> str:
    """Validate a task name.

    Args:
        name: Task name.

    Returns:
        The name, unchanged.

    Raises:
        ValueError: If the task is not one of the ten sbibm tasks or
            :data:`EXTRA_TASKS`.
    """
    if name not in TASKS + EXTRA_TASKS:
        raise ValueError(
            f"Unknown task {name!r}; pass one of the sbibm tasks: {', '.join(TASKS)}, "
            f"or {', '.join(EXTRA_TASKS)}."
        )
    return name


def check_observation(name: str, num_observation: int) -> None:
    """Raise a ValueError unless task ``name`` has observation ``num_observation``
    (1-10 for the sbibm tasks, only 1 for ``inverse_kinematics``)."""
    if name in EXTRA_TASKS:
        inverse_kinematics.check_observation(num_observation)
    else:
        _check_observation(num_observation)


def _check_observation(num_observation: int) -> None:
    if not 1 <= int(num_observation) <= NUM_OBSERVATIONS:
        raise ValueError(
            f"Observation {num_observation} does not exist; sbibm tasks have "
            f"observations 1 to {NUM_OBSERVATIONS}."
        )


def distribution_to(
    dist: torch.distributions.Distribution, device: str | torch.device
) -> torch.distributions.Distribution:
    """A copy of a distribution with all its tensors on ``device``.

    sbi needs the prior on the training device; sbibm builds its priors on the CPU.
    Works for the (pyro and torch) distributions of the sbibm tasks, including
    wrappers such as ``Independent`` whose base distribution is moved as well.

    Args:
        dist: The distribution.
        device: Target device.

    Returns:
        The moved copy (``dist`` itself when the device is the CPU).
    """
    if torch.device(device).type == "cpu":
        return dist
    moved = copy.copy(dist)
    for name, value in vars(dist).items():
        if isinstance(value, Tensor):
            setattr(moved, name, value.to(device))
        elif isinstance(value, torch.distributions.Distribution):
            setattr(moved, name, distribution_to(value, device))
    return moved


@contextlib.contextmanager
def _placeholder_diffeqtorch() -> Iterator[None]:
    """Make ``import diffeqtorch`` succeed while sbibm's ODE task modules load."""
    if importlib.util.find_spec("diffeqtorch") is not None:
        yield
        return
    module = types.ModuleType("diffeqtorch")

    class DiffEq:  # noqa: D401 - placeholder with a clear failure
        """Placeholder for diffeqtorch.DiffEq; sbi_diffusion simulates in torch."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError(
                "diffeqtorch (Julia) is not installed; use "
                "sbi_diffusion.benchmark.tasks.load_task(...).simulate instead of "
                "sbibm's own simulator."
            )

    module.DiffEq = DiffEq  # type: ignore[attr-defined]
    sys.modules["diffeqtorch"] = module
    try:
        yield
    finally:
        sys.modules.pop("diffeqtorch", None)


@contextlib.contextmanager
def trusted_torch_load() -> Iterator[None]:
    """Let ``torch.load`` unpickle full objects inside the ``with`` block.

    torch >= 2.6 loads with ``weights_only=True`` by default and rejects the
    mixture model that ``slcp_distractors`` ships with sbibm (an old-style pickle).
    The files are part of the installed sbibm package, so they are trusted; the
    default is restored on exit.
    """
    original = torch.load

    @functools.wraps(original)
    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("weights_only", False)
        return original(*args, **kwargs)

    torch.load = load  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original  # type: ignore[assignment]


def _sbibm_simulator(task: Any) -> Callable[[Tensor], Tensor]:
    simulator = task.get_simulator()
    if task.name != "slcp_distractors":
        return simulator

    def simulate(theta: Tensor) -> Tensor:
        with trusted_torch_load():
            return simulator(theta)

    return simulate


@functools.cache
def load_task(name: str) -> BenchmarkTask | inverse_kinematics.InverseKinematicsTask:
    """Load an sbibm task with a simulator that works without Julia, or one of
    :data:`EXTRA_TASKS` (which need no sbibm).

    Args:
        name: One of :data:`TASKS` or :data:`EXTRA_TASKS`.

    Returns:
        The task with its prior and simulator.

    Raises:
        ValueError: If the task name is unknown.
        ImportError: If sbibm is not installed.
    """
    check_task_name(name)
    if name == inverse_kinematics.NAME:
        return inverse_kinematics.InverseKinematicsTask()
    try:
        import sbibm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The benchmark needs sbibm: pip install --no-deps sbibm==1.1.0 and "
            "pip install 'sbi-diffusion[bench]'."
        ) from err
    with _placeholder_diffeqtorch():
        task = sbibm.get_task(name)
    simulator = _TORCH_SIMULATORS.get(name) or _sbibm_simulator(task)
    return BenchmarkTask(
        name=name, sbibm_task=task, prior=task.get_prior_dist(), simulator=simulator
    )
