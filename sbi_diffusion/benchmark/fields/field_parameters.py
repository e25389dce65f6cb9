r"""Problem (b): infer the amplitude and spectral exponent of a random field.

The parameters are :math:`\theta = (\log \sigma_f, \beta)` with the box prior

.. math::
    \log \sigma_f \sim U(-1, 1), \qquad \beta \sim U(1.5, 4.5),

(natural log). The data is one ``N x N`` periodic field with pixel sd
:math:`\sigma_f` and the power-law spectrum of
:func:`~sbi_diffusion.benchmark.fields.spectra.power_law_spectrum`,

.. math::
    \lambda_k = A(\beta)\, (|k|^2 + k_0^2)^{-\beta/2}, \qquad
    N^{-2} \sum_k \lambda_k = \sigma_f^2,

drawn by colouring white noise in Fourier space (Lang & Potthoff 2011), plus
optional white observation noise of sd ``noise_sd``. Small :math:`\beta` gives
rough fields, large :math:`\beta` smooth ones. Posteriors have no closed form;
estimators are scored by :meth:`FieldParametersProblem.nrmse` over a test set and
by calibration checks (SBC, Talts et al. 2018; TARP, Lemos et al. 2023) from
``sbi``.
"""

from __future__ import annotations

import torch
from sbi.utils import BoxUniform
from torch import Tensor

from sbi_diffusion.benchmark.fields.spectra import (
    check_grid_size,
    color_noise,
    power_law_spectrum,
)

__all__ = ["FieldParametersProblem", "nrmse"]

LOG_SD_RANGE: tuple[float, float] = (-1.0, 1.0)
"""Prior range of the log pixel sd."""
BETA_RANGE: tuple[float, float] = (1.5, 4.5)
"""Prior range of the spectral exponent."""


def nrmse(estimates: Tensor, truths: Tensor, low: Tensor, high: Tensor) -> Tensor:
    r"""Normalised RMSE per parameter.

    :math:`\mathrm{NRMSE}_j = \sqrt{\tfrac1M \sum_i (\hat\theta_{ij} -
    \theta_{ij})^2} / (h_j - l_j)`, over ``M`` test cases, divided by the prior
    range :math:`[l_j, h_j]`. Guessing the prior mean gives about
    :math:`1/\sqrt{12} \approx 0.29` for a uniform prior.

    Args:
        estimates: Point estimates (e.g. posterior means) ``(M, d)``.
        truths: True parameters ``(M, d)``.
        low, high: Prior range, ``(d,)``.

    Returns:
        ``(d,)``.
    """
    if estimates.shape != truths.shape or estimates.ndim != 2:
        raise ValueError(
            "estimates and truths must both have shape (M, d), got "
            f"{tuple(estimates.shape)} and {tuple(truths.shape)}."
        )
    rmse = (estimates - truths).pow(2).mean(0).sqrt()
    return rmse / (high - low).to(rmse)


class FieldParametersProblem:
    """Infer ``(log pixel sd, beta)`` from one image of a Gaussian random field.

    Args:
        N: Grid size. At least 2.
        k0: Wavenumber (cycles per box side) where the spectrum flattens. Positive.
        noise_sd: Sd of white observation noise added to the field; 0 for none.
        dtype: Dtype of parameters and simulations (float32 for ``sbi``).

    Attributes:
        prior: ``sbi.utils.BoxUniform`` over ``(log_sd, beta)``.
        low, high: The prior's bounds, ``(2,)``.
    """

    parameter_names: tuple[str, str] = ("log_sd", "beta")

    def __init__(
        self,
        N: int = 32,
        k0: float = 1.0,
        noise_sd: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.N = check_grid_size(N)
        if k0 <= 0:
            raise ValueError(f"k0 must be positive, got {k0}.")
        if noise_sd < 0:
            raise ValueError(f"noise_sd must be non-negative, got {noise_sd}.")
        self.k0, self.noise_sd, self.dtype = float(k0), float(noise_sd), dtype
        self.low = torch.tensor([LOG_SD_RANGE[0], BETA_RANGE[0]], dtype=dtype)
        self.high = torch.tensor([LOG_SD_RANGE[1], BETA_RANGE[1]], dtype=dtype)
        self.prior = BoxUniform(low=self.low, high=self.high)

    @property
    def x_shape(self) -> tuple[int, int, int]:
        """Shape of one observation, ``(1, N, N)``."""
        return (1, self.N, self.N)

    def spectrum(self, theta: Tensor) -> Tensor:
        """Spectra ``(n, N, N)`` (float64) of parameters ``(n, 2)``."""
        theta = torch.as_tensor(theta, dtype=torch.float64)
        if theta.ndim != 2 or theta.shape[1] != 2:
            raise ValueError(f"theta must be (n, 2), got {tuple(theta.shape)}.")
        log_sd, beta = theta.unbind(-1)
        return power_law_spectrum(self.N, beta, self.k0, torch.exp(2 * log_sd))

    def simulate(
        self, theta: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw one field per parameter, vectorised by FFT.

        Args:
            theta: Parameters ``(n, 2)``: ``(log_sd, beta)``.
            generator: Optional torch generator, for reproducible draws.

        Returns:
            Images ``(n, 1, N, N)`` in ``dtype``.
        """
        spectrum = self.spectrum(theta)
        shape = (spectrum.shape[0], self.N**2)
        white = torch.randn(shape, dtype=torch.float64, generator=generator)
        x = color_noise(white, spectrum)
        if self.noise_sd > 0:
            noise = torch.randn(shape, dtype=torch.float64, generator=generator)
            x = x + self.noise_sd * noise
        return x.reshape(-1, *self.x_shape).to(self.dtype)

    def test_set(self, num: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """A reproducible test set ``(theta (num, 2), x (num, 1, N, N))``."""
        generator = torch.Generator().manual_seed(seed)
        u = torch.rand(num, 2, generator=generator, dtype=self.dtype)
        theta = self.low + (self.high - self.low) * u
        return theta, self.simulate(theta, generator=generator)

    def nrmse(self, estimates: Tensor, truths: Tensor) -> Tensor:
        """:func:`nrmse` with this problem's prior range; ``(2,)``."""
        return nrmse(estimates, truths, self.low, self.high)
