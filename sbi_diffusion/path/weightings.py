r"""Loss weightings over noise levels.

All weightings are expressed relative to the noise-prediction error, following
Kingma & Gao 2023 ("Understanding Diffusion Objectives as the ELBO with Simple
Data Augmentation"):

.. math::
    L = E_{t, x, \epsilon}\left[ w(t)\, \|\hat\epsilon(z_t, t) - \epsilon\|^2 \right].

The estimator trains on the plain regression error of its parameterisation,
multiplied by ``w(t) / w_natural(t)`` (see
:meth:`sbi_diffusion.path.parameterizations.Parameterization.natural_weight`), so any
weighting can be combined with any parameterisation.

============== ================================================================
name           ``w(t)``
============== ================================================================
``natural``    the parameterisation's own MSE (e.g. flow matching for velocity)
``uniform``    1 (the "simple" loss of Ho et al. 2020)
``edm``        ``(s^2 + sigma_d^2) / sigma_d^2`` with ``s = sigma/alpha``
               (Karras et al. 2022, ``lambda(sigma)`` on the x-error)
``sigmoid``    ``sigmoid(b - lambda(t))`` (Kingma & Gao 2023)
``likelihood`` ``-d lambda / dt`` (the ELBO, i.e. maximum likelihood for
               uniform times; Kingma et al. 2021, Song et al. 2021)
============== ================================================================
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sbi_diffusion.path.parameterizations import SIGMA_DATA, Parameterization, PathPoint

__all__ = ["WEIGHTINGS", "loss_weight", "check_weighting"]


def _uniform(p: PathPoint, d_log_snr: Tensor, bias: float) -> Tensor:
    return torch.ones_like(p.alpha)


def _edm(p: PathPoint, d_log_snr: Tensor, bias: float) -> Tensor:
    return (p.scaled_sigma**2 + SIGMA_DATA**2) / SIGMA_DATA**2


def _sigmoid(p: PathPoint, d_log_snr: Tensor, bias: float) -> Tensor:
    log_snr = 2.0 * (torch.log(p.alpha) - torch.log(p.sigma))
    return torch.sigmoid(bias - log_snr)


def _likelihood(p: PathPoint, d_log_snr: Tensor, bias: float) -> Tensor:
    return -d_log_snr


WEIGHTINGS: dict[str, Callable[[PathPoint, Tensor, float], Tensor] | None] = {
    "natural": None,
    "uniform": _uniform,
    "edm": _edm,
    "sigmoid": _sigmoid,
    "likelihood": _likelihood,
}


def check_weighting(weighting: str) -> str:
    """Return ``weighting`` if it is known, else raise a ``ValueError``."""
    if weighting not in WEIGHTINGS:
        raise ValueError(
            f"Unknown weighting {weighting!r}. Pass one of {sorted(WEIGHTINGS)}."
        )
    return weighting


def loss_weight(
    weighting: str,
    parameterization: Parameterization,
    p: PathPoint,
    sigmoid_bias: float = 2.0,
) -> Tensor:
    r"""Factor multiplying the plain MSE of the parameterisation's output.

    Returns ``w(t) / w_natural(t)``, which is 1 for ``"natural"``.

    Args:
        weighting: name from ``WEIGHTINGS``.
        parameterization: the network's parameterisation.
        p: schedule values at the training times.
        sigmoid_bias: ``b`` of the sigmoid weighting.
    """
    fn = WEIGHTINGS[check_weighting(weighting)]
    if fn is None:
        return torch.ones_like(p.alpha)
    # d lambda / dt = 2 (alpha'/alpha - sigma'/sigma)
    d_log_snr = 2.0 * (p.d_alpha / p.alpha - p.d_sigma / p.sigma)
    return fn(p, d_log_snr, sigmoid_bias) / parameterization.natural_weight(p)
