r"""What the network predicts, and how its output becomes the denoised ``x_hat``.

Every parameterisation here is affine in the network output ``F``
(Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Eq. 7):

.. math::
    \hat x(z_t, t) = c_{skip}(t)\, z_t + c_{out}(t)\, F(c_{in}(t)\, z_t,
    c_{noise}(t)),

so the regression target of ``F`` is ``(x - c_skip z_t) / c_out``. With
``z_t = alpha x + sigma eps`` (see :mod:`sbi_diffusion.path.schedules`):

- ``eps``: the noise ``eps`` (Ho et al. 2020); ``c_skip = 1/alpha``,
  ``c_out = -sigma/alpha``.
- ``x0``: the data ``x``; ``c_skip = 0``, ``c_out = 1``.
- ``velocity``: the flow velocity ``u = alpha' x + sigma' eps`` (Lipman et al.
  2023; Liu et al. 2023), see :class:`Velocity`.
- ``F``: EDM preconditioning (Karras et al. 2022), see
  :class:`EDMPreconditioning`.
- ``score``: ``grad log p_t(z) = -eps / sigma``; ``c_skip = 1/alpha``,
  ``c_out = sigma^2/alpha``.

The input scaling ``c_in = (alpha^2 sigma_data^2 + sigma^2)^{-1/2}`` gives the
network unit-variance inputs, and the time input is
``c_noise = -lambda(t) / 8 = log(sigma/alpha) / 4`` (EDM's ``log(sigma)/4``), for
every parameterisation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "PathPoint",
    "Parameterization",
    "NoisePrediction",
    "DataPrediction",
    "Velocity",
    "EDMPreconditioning",
    "ScorePrediction",
    "PARAMETERIZATIONS",
    "get_parameterization",
]

SIGMA_DATA = 1.0  # theta is z-scored inside the estimator


@dataclass
class PathPoint:
    """Schedule values at one time: ``alpha, sigma`` and their time derivatives."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor

    @property
    def scaled_sigma(self) -> Tensor:
        """``sigma / alpha``, EDM's noise level."""
        return self.sigma / self.alpha


class Parameterization(ABC):
    """Maps the network output to ``x_hat`` and gives the regression target."""

    name: str = "parameterization"

    @abstractmethod
    def coefficients(self, p: PathPoint) -> tuple[Tensor, Tensor]:
        """Return ``(c_skip, c_out)`` at the path point ``p``."""

    def noise_input(self, p: PathPoint) -> Tensor:
        r"""Time input of the network, ``c_noise = log(sigma / alpha) / 4``,
        flattened to ``(batch,)``.

        ``sigma / alpha`` is clipped to ``[1e-5, 1e5]`` (the range that training
        times reach on every schedule), so the pure-noise end of rectified flow
        (``alpha = 0``) gets a finite input.
        """
        ratio = torch.clamp(p.sigma / p.alpha, min=1e-5, max=1e5)
        return 0.25 * torch.log(ratio).reshape(-1)

    def network_output(
        self, net, z: Tensor, condition_embedding: Tensor, p: PathPoint
    ) -> Tensor:
        r"""``F(c_in z, condition, c_noise)`` of a network ``net(z, condition, time)``
        for ``z`` ``(batch, dim)`` and path values of shape ``(batch, 1)``."""
        return net(self.input_scale(p) * z, condition_embedding, self.noise_input(p))

    def input_scale(self, p: PathPoint) -> Tensor:
        r"""``c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2)``."""
        return torch.rsqrt(p.alpha**2 * SIGMA_DATA**2 + p.sigma**2)

    def denoise(self, net_output: Tensor, z: Tensor, p: PathPoint) -> Tensor:
        r"""``x_hat = c_skip z + c_out F``."""
        c_skip, c_out = self.coefficients(p)
        return c_skip * z + c_out * net_output

    def target(self, x: Tensor, z: Tensor, p: PathPoint) -> Tensor:
        r"""Regression target ``(x - c_skip z) / c_out`` of the network output."""
        c_skip, c_out = self.coefficients(p)
        return (x - c_skip * z) / c_out

    def natural_weight(self, p: PathPoint) -> Tensor:
        r"""Weight, relative to the noise-prediction error, of the plain MSE on the
        target: ``||F - target||^2 = sigma^2 / (alpha^2 c_out^2) ||eps_hat - eps||^2``.
        """
        _, c_out = self.coefficients(p)
        return p.sigma**2 / (p.alpha**2 * c_out**2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoisePrediction(Parameterization):
    r"""Predict the noise: ``x_hat = (z - sigma eps_hat) / alpha`` (Ho et al. 2020)."""

    name = "eps"

    def coefficients(self, p: PathPoint) -> tuple[Tensor, Tensor]:
        return 1.0 / p.alpha, -p.sigma / p.alpha


class DataPrediction(Parameterization):
    r"""Predict the data directly: ``x_hat = F``."""

    name = "x0"

    def coefficients(self, p: PathPoint) -> tuple[Tensor, Tensor]:
        return torch.zeros_like(p.alpha), torch.ones_like(p.alpha)


class Velocity(Parameterization):
    r"""Predict the conditional flow velocity ``u = alpha' x + sigma' eps``.

    Since ``eps = (z - alpha x) / sigma``,

    .. math::
        u = \left(\alpha' - \frac{\sigma'\alpha}{\sigma}\right) x
            + \frac{\sigma'}{\sigma} z, \qquad
        c_{out} = \left(\alpha' - \frac{\sigma'\alpha}{\sigma}\right)^{-1},\quad
        c_{skip} = -\frac{\sigma'}{\sigma} c_{out}.

    On the rectified-flow path (``alpha = 1 - t, sigma = t``) this is
    ``u = eps - x`` and ``x_hat = z - t u`` (Lipman et al. 2023, "Flow Matching for
    Generative Modeling"; Liu et al. 2023, "Flow Straight and Fast").
    """

    name = "velocity"

    def coefficients(self, p: PathPoint) -> tuple[Tensor, Tensor]:
        c_out = 1.0 / (p.d_alpha - p.d_sigma * p.alpha / p.sigma)
        return -(p.d_sigma / p.sigma) * c_out, c_out


class EDMPreconditioning(Parameterization):
    r"""EDM's F-prediction (Karras et al. 2022, Table 1) on any Gaussian path.

    With ``s = sigma / alpha`` (the EDM noise level of ``z / alpha``):

    .. math::
        c_{skip} = \frac{\sigma_d^2}{\alpha (s^2 + \sigma_d^2)}, \qquad
        c_{out} = \frac{s\, \sigma_d}{\sqrt{s^2 + \sigma_d^2}}.
    """

    name = "F"

    def coefficients(self, p: PathPoint) -> tuple[Tensor, Tensor]:
        s = p.scaled_sigma
        c_skip = SIGMA_DATA**2 / (p.alpha * (s**2 + SIGMA_DATA**2))
        c_out = s * SIGMA_DATA * torch.rsqrt(s**2 + SIGMA_DATA**2)
        return c_skip, c_out


class ScorePrediction(Parameterization):
    r"""Predict the score ``grad_z log p_t(z) = -eps / sigma``; by Tweedie's formula
    ``x_hat = (z + sigma^2 s_hat) / alpha`` (Song et al. 2021)."""

    name = "score"

    def coefficients(self, p: PathPoint) -> tuple[Tensor, Tensor]:
        return 1.0 / p.alpha, p.sigma**2 / p.alpha


PARAMETERIZATIONS: dict[str, type[Parameterization]] = {
    "eps": NoisePrediction,
    "noise": NoisePrediction,
    "x0": DataPrediction,
    "data": DataPrediction,
    "velocity": Velocity,
    "v": Velocity,
    "F": EDMPreconditioning,
    "edm": EDMPreconditioning,
    "score": ScorePrediction,
}


def get_parameterization(parameterization: str | Parameterization) -> Parameterization:
    """Return a parameterisation from its name (see ``PARAMETERIZATIONS``).

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(parameterization, Parameterization):
        return parameterization
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"Unknown parameterization {parameterization!r}. Pass one of "
            f"{sorted(PARAMETERIZATIONS)} or a Parameterization instance."
        )
    return PARAMETERIZATIONS[parameterization]()
