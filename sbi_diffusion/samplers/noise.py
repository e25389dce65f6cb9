r"""Gaussian noise of the samplers: the initial state and the increments.

The reverse process starts from its terminal marginal, which for standardised
data (zero mean, unit variance) is approximated by

.. math::
    z_{t_{max}} \sim N\big(0, (\alpha(t_{max})^2 + \sigma(t_{max})^2) I\big),

and stochastic samplers add standard normal increments ``xi ~ N(0, I)``
(Song et al. 2021, "Score-Based Generative Modeling through Stochastic
Differential Equations").
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gaussian_like", "initial_noise"]


def initial_noise(
    schedule, shape: tuple[int, ...], generator=None, device=None
) -> Tensor:
    r"""``z_{t_max} ~ N(0, (alpha(t_max)^2 + sigma(t_max)^2) I)`` for standardised
    data."""
    return schedule.prior_std() * torch.randn(shape, generator=generator, device=device)


def gaussian_like(z: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise like ``z`` from an optional generator."""
    return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
