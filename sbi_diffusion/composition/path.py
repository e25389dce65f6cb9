r"""Noise levels of the Gaussian path ``z_t = alpha_t theta_0 + sigma_t eps``
that the composed and diffused-prior denoisers need."""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_diffusion.path.schedules import Schedule

__all__ = ["ALPHA_FLOOR", "alpha_floor_time", "alpha_sigma", "signal_to_noise"]

ALPHA_FLOOR = 1e-4
"""Smallest ``alpha`` at which a network is evaluated (its noise input is
infinite at ``alpha = 0``, the end of the rectified-flow path)."""


def alpha_floor_time(schedule: Schedule) -> float:
    """Largest time with ``alpha(t) >= 1e-4`` (where a network may be evaluated)."""
    grid = torch.linspace(float(schedule.t_min), float(schedule.t_max), 100_001)
    ok = grid[schedule.alpha(grid) >= ALPHA_FLOOR]
    return float(ok.max()) if ok.numel() else float(grid[0])


def alpha_sigma(schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """``alpha(t)`` and ``sigma(t)`` per row."""
    return schedule.alpha(t), schedule.sigma(t)


def signal_to_noise(schedule: Schedule, t: Tensor) -> Tensor:
    """``alpha^2 / sigma^2`` per row (``sigma`` floored to stay finite)."""
    alpha, sigma = alpha_sigma(schedule, t)
    return alpha**2 / torch.clamp(sigma**2, min=1e-12)
