r"""Quantities that follow from the denoised estimate ``x_hat(z_t, t)``.

For the Gaussian path ``z_t = alpha x + sigma eps`` the posterior mean
``x_hat = E[x | z_t]`` determines (Tweedie's formula; Efron 2011, Song et al.
2021):

.. math::
    \hat\epsilon = \frac{z - \alpha \hat x}{\sigma}, \qquad
    \nabla_z \log p_t(z) = \frac{\alpha \hat x - z}{\sigma^2}, \qquad
    v(z, t) = \alpha' \hat x + \sigma' \hat\epsilon,

where ``v`` is the drift of the probability-flow ODE ``dz/dt = v(z, t)``.

The function ``(z, t) -> x_hat`` these act on is declared as
:class:`~sbi_diffusion.model.interface.DenoiseFn`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_diffusion._deprecation import moved_names
from sbi_diffusion.path.schedules import Schedule

__all__ = [
    "as_time",
    "eps_from_x_hat",
    "score_from_x_hat",
    "x_hat_from_score",
    "ode_drift",
]


def as_time(t: Tensor | float, z: Tensor) -> Tensor:
    """Broadcast a scalar or ``(batch,)`` time to shape ``(batch,)`` like ``z``."""
    t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
    return t.expand(z.shape[0]) if t.dim() == 0 else t


def _column(v: Tensor, z: Tensor) -> Tensor:
    return v.reshape(v.shape + (1,) * (z.dim() - v.dim()))


def eps_from_x_hat(schedule: Schedule, z: Tensor, t: Tensor, x_hat: Tensor) -> Tensor:
    r"""``eps_hat = (z - alpha x_hat) / sigma``."""
    t = as_time(t, z)
    alpha, sigma = _column(schedule.alpha(t), z), _column(schedule.sigma(t), z)
    return (z - alpha * x_hat) / sigma


def score_from_x_hat(schedule: Schedule, z: Tensor, t: Tensor, x_hat: Tensor) -> Tensor:
    r"""``grad_z log p_t(z) = (alpha x_hat - z) / sigma^2``."""
    t = as_time(t, z)
    alpha, sigma = _column(schedule.alpha(t), z), _column(schedule.sigma(t), z)
    return (alpha * x_hat - z) / sigma**2


def x_hat_from_score(schedule: Schedule, z: Tensor, t: Tensor, score: Tensor) -> Tensor:
    r"""Tweedie's formula ``x_hat = (z + sigma^2 score) / alpha``."""
    t = as_time(t, z)
    alpha, sigma = _column(schedule.alpha(t), z), _column(schedule.sigma(t), z)
    return (z + sigma**2 * score) / alpha


def ode_drift(schedule: Schedule, z: Tensor, t: Tensor, x_hat: Tensor) -> Tensor:
    r"""Probability-flow ODE drift ``v = alpha' x_hat + sigma' eps_hat``.

    Equivalent to ``f z - g^2 score / 2`` (Song et al. 2021, Eq. 13).
    """
    t = as_time(t, z)
    alpha, sigma, d_alpha, d_sigma = (_column(v, z) for v in schedule.derivatives(t))
    eps = (z - alpha * x_hat) / sigma
    return d_alpha * x_hat + d_sigma * eps


# ``DenoiseFn`` moved to :mod:`sbi_diffusion.model.interface`.
__getattr__ = moved_names(
    __name__,
    ("DenoiseFn",),
    "sbi_diffusion.model",
    source="sbi_diffusion.model.interface",
)
