r"""The pieces of the improved consistency-training recipe (Song & Dhariwal
2023, "Improved Techniques for Training Consistency Models"): the exponential
discretisation curriculum :func:`improved_num_scales`, the discrete log-normal
sampling of grid intervals :func:`lognormal_interval_probabilities`, and the
pseudo-Huber distance :func:`pseudo_huber` with its default constant.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "default_huber_constant",
    "improved_num_scales",
    "lognormal_interval_probabilities",
    "pseudo_huber",
]


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    r"""Pseudo-Huber distance per row (Song & Dhariwal 2023, Eq. 10):

    .. math::
        d(a, b) = \sqrt{\|a - b\|_2^2 + c^2} - c.

    Args:
        a, b: ``(batch, dim)``.
        c: the constant ``c > 0``; quadratic below ``c``, linear above.

    Returns:
        Distances of shape ``(batch,)``.
    """
    if c <= 0:
        raise ValueError(f"The pseudo-Huber constant must be positive, got {c}.")
    return torch.sqrt(((a - b) ** 2).sum(dim=-1) + c**2) - c


def default_huber_constant(dim: int) -> float:
    r"""``c = 0.00054 sqrt(d)``, the choice of Song & Dhariwal 2023 (Sec. 3.3)."""
    return 0.00054 * math.sqrt(dim)


def improved_num_scales(
    step: int, total_steps: int, initial: int = 10, final: int = 1280
) -> int:
    r"""Number of grid points ``N(k)`` of the exponential curriculum
    (Song & Dhariwal 2023, Eq. 11):

    .. math::
        N(k) = \min\left(s_0\, 2^{\lfloor k / K' \rfloor}, s_1\right) + 1, \qquad
        K' = \left\lfloor \frac{K}{\log_2 \lfloor s_1 / s_0 \rfloor + 1}
        \right\rfloor,

    for training step ``k`` of ``K`` total steps.

    Args:
        step: current step ``k``.
        total_steps: total steps ``K``.
        initial: ``s_0``.
        final: ``s_1``.
    """
    if not 1 <= initial <= final:
        raise ValueError(
            f"Need 1 <= initial_num_scales <= final_num_scales, got {initial} and "
            f"{final}."
        )
    stages = math.log2(max(1, final // initial)) + 1
    per_stage = max(1, math.floor(max(1, total_steps) / stages))
    return min(initial * 2 ** (step // per_stage), final) + 1


def lognormal_interval_probabilities(
    sigmas: Tensor, p_mean: float, p_std: float
) -> Tensor:
    r"""Probabilities of the grid intervals ``[s_i, s_{i+1}]`` under the discrete
    log-normal of Song & Dhariwal 2023 (Eq. 12):

    .. math::
        p(i) \propto \mathrm{erf}\left(\frac{\log s_{i+1} - P_{mean}}
        {\sqrt 2 P_{std}}\right) - \mathrm{erf}\left(\frac{\log s_i - P_{mean}}
        {\sqrt 2 P_{std}}\right).

    Args:
        sigmas: increasing noise levels ``(N,)``.
        p_mean, p_std: mean and standard deviation of ``log s``.

    Returns:
        Probabilities ``(N - 1,)`` summing to one.
    """
    cdf = torch.erf((torch.log(sigmas.double()) - p_mean) / (math.sqrt(2) * p_std))
    mass = torch.clamp(cdf[1:] - cdf[:-1], min=0.0)
    if float(mass.sum()) <= 0:
        mass = torch.ones_like(mass)
    return (mass / mass.sum()).to(sigmas.dtype)
