"""A solver and its options, as one value.

``Solver("heun", steps=18)`` names a registered sampler (or, for ``log_prob``,
an ODE solver of the probability-flow density) together with the options it
takes, so that the two travel together through posteriors, benchmark specs and
saved settings:

.. code-block:: python

    posterior.sample((1000,), x=x_o, sampler=Solver("euler_maruyama", steps=500))
    posterior.log_prob(theta, x=x_o, solver=Solver("heun", steps=16))

A plain name (``"heun"``) is a :class:`Solver` without options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["Solver", "solver_call"]


@dataclass(frozen=True)
class Solver:
    """A sampler or ODE solver name and its options.

    Args:
        name: the registered name (``sbi_diffusion.samplers.SAMPLERS`` for
            sampling; ``"dopri5"``, ``"heun"`` or ``"auto"`` for ``log_prob``).
        **options: its options, e.g. ``steps``, ``rtol``, ``eta``.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, name: str, **options: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"A solver needs a name (a string), got {name!r}.")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "options", MappingProxyType(dict(options)))

    def with_options(self, **options: Any) -> Solver:
        """A copy with ``options`` added (they win over the existing ones)."""
        return Solver(self.name, **{**self.options, **options})

    def as_dict(self) -> dict[str, Any]:
        """``{"name": ..., **options}``, e.g. for a benchmark row."""
        return {"name": self.name, **self.options}

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Solver({self.name!r}{options})"

    def __reduce__(self):
        return (_rebuild, (self.name, dict(self.options)))


def _rebuild(name: str, options: dict[str, Any]) -> Solver:
    return Solver(name, **options)


def solver_call(
    sampler: str | Solver | None, options: dict[str, Any]
) -> tuple[str | None, dict[str, Any]]:
    """The sampler name and options of one call: those of ``sampler`` (a name,
    a :class:`Solver`, or None for the default), updated by the keyword
    ``options`` given beside it."""
    if isinstance(sampler, Solver):
        return sampler.name, {**sampler.options, **options}
    return sampler, dict(options)
