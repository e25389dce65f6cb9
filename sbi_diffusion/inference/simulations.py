"""Checks of the simulations a trainer stores, and their z-scoring statistics.

:func:`checked_round` is what ``append_simulations`` applies to a new round of
``(theta, x)``: batch dimensions, one simulation per parameter set, finite
``theta`` of the prior's shape, the shapes of earlier rounds, and the exclusion
(or rejection) of simulations with NaN or inf entries.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from sbi.utils.sbiutils import ImproperEmpirical
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["as_simulation_batch", "checked_round", "finite_rows", "zscore_statistics"]

_PACKAGE = Path(__file__).resolve().parents[1]
"""The folder of the package (``sbi_diffusion/``)."""


def _in_package(frame: Any) -> bool:
    """Whether a stack frame runs code of this package."""
    return Path(frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of ``warnings.warn``, called by the caller of this
    function, that names the first frame outside the package: the user's
    call, however many of the package's functions lie between."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and _in_package(frame):
        frame = frame.f_back
        level += 1
    return level


def finite_rows(x: Tensor) -> Tensor:
    """Booleans ``(num_simulations,)``: the rows of ``x`` with no NaN or inf."""
    return torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)


def zscore_statistics(values: Tensor) -> tuple[Tensor, Tensor]:
    """Per-element mean and standard deviation (constant entries get std 1)."""
    mean = values.mean(dim=0, keepdim=True)
    std = values.std(dim=0, keepdim=True)
    std = torch.where(std < 1e-8, torch.ones_like(std), std)
    return mean, std


def as_simulation_batch(theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``theta`` and ``x`` as float32 tensors, each with a batch dimension.

    Raises:
        ValueError: if either has fewer than two dimensions.
    """
    theta = torch.as_tensor(theta, dtype=torch.float32)
    x = torch.as_tensor(x, dtype=torch.float32)
    if theta.dim() < 2 or x.dim() < 2:
        raise ValueError(
            "theta and x need a batch dimension: got theta of shape "
            f"{tuple(theta.shape)} and x of shape {tuple(x.shape)}. Pass tensors "
            "of shape (num_simulations, dim)."
        )
    return theta, x


def check_theta_matches_prior(theta: Tensor, prior: Distribution | None) -> None:
    """Raise if a row of ``theta`` has another shape than a prior draw (one draw
    from ``prior``; no check for None or an empirical prior).

    Raises:
        ValueError: naming both shapes, when the prior is a proper one.
    """
    if prior is None or isinstance(prior, ImproperEmpirical):
        return
    with torch.no_grad():
        prior_shape = tuple(prior.sample((1,)).shape[1:])
    if tuple(theta.shape[1:]) != prior_shape:
        raise ValueError(
            f"theta has rows of shape {tuple(theta.shape[1:])}, but the prior "
            f"draws parameters of shape {prior_shape}. Pass theta of shape "
            f"(num_simulations, {', '.join(map(str, prior_shape))})."
        )


def checked_round(
    theta: Tensor,
    x: Tensor,
    prior: Distribution | None,
    first_round: tuple[Tensor, Tensor] | None,
    exclude_invalid_x: bool,
) -> tuple[Tensor, Tensor]:
    """A new round of simulations, checked, without those with NaN or inf
    entries in ``x`` (excluded with a warning to the caller of
    ``append_simulations``).

    Args:
        theta: parameters ``(num_simulations, *theta_shape)``.
        x: simulations ``(num_simulations, *x_shape)``.
        prior: the trainer's prior (one draw checks the shape of ``theta``).
        first_round: ``(theta, x)`` of the first stored round, or None.
        exclude_invalid_x: drop (True) or reject (False) invalid simulations.

    Raises:
        ValueError: for shapes that do not match each other, the prior or the
            first round, non-finite ``theta``, and invalid simulations that are
            not excluded (or all of them).
    """
    theta, x = as_simulation_batch(theta, x)
    if theta.shape[0] != x.shape[0]:
        raise ValueError(
            f"theta has {theta.shape[0]} rows but x has {x.shape[0]}: pass one "
            "simulation per parameter set."
        )
    if not torch.isfinite(theta).all():
        raise ValueError("theta contains NaN or inf values; remove those rows.")
    check_theta_matches_prior(theta, prior)
    if first_round is not None:
        prev_theta, prev_x = first_round
        if theta.shape[1:] != prev_theta.shape[1:] or x.shape[1:] != prev_x.shape[1:]:
            raise ValueError(
                f"New simulations have theta shape {tuple(theta.shape[1:])} and x "
                f"shape {tuple(x.shape[1:])}, but earlier ones have "
                f"{tuple(prev_theta.shape[1:])} and {tuple(prev_x.shape[1:])}."
            )
    valid = finite_rows(x)
    num_invalid = int((~valid).sum())
    if not num_invalid:
        return theta, x
    if not exclude_invalid_x:
        raise ValueError(
            f"Found {num_invalid} simulations with NaN or inf values. Pass "
            "exclude_invalid_x=True to drop them, or replace them."
        )
    if num_invalid == x.shape[0]:
        raise ValueError("All simulations contain NaN or inf values.")
    warnings.warn(
        f"Found {num_invalid} simulations with NaN or inf values; they are "
        "excluded from training. This biases the posterior if invalid "
        "simulations depend on theta.",
        UserWarning,
        stacklevel=_caller_stacklevel(),
    )
    return theta[valid], x[valid]
