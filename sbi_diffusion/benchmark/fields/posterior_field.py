r"""Problem (a): the posterior over a Gaussian random field seen blurred and noisy.

The parameter is the field itself, :math:`\theta \in \mathbb{R}^{N^2}` (an
``N x N`` periodic image, flattened row-major), with the stationary prior

.. math::
    \theta \sim N(0, \Sigma), \qquad
    \Sigma = F^H \operatorname{diag}(\lambda) F, \qquad
    \lambda_k = A (|k|^2 + k_0^2)^{-\beta/2},

:math:`A` chosen so that every pixel has prior variance 1 (conventions of the
unitary FFT :math:`F` and the wavenumbers in
:mod:`sbi_diffusion.benchmark.fields.spectra`). The observation is

.. math::
    x = B \theta + \sigma \varepsilon, \qquad
    B = F^H \operatorname{diag}(b) F, \quad b_k = e^{-s^2 |\omega_k|^2 / 2},
    \quad \varepsilon \sim N(0, I),

a periodic Gaussian blur of ``s`` pixels plus white noise. Every operator is
diagonal in the Fourier basis, so Gaussian conditioning (Rasmussen & Williams
2006, *Gaussian Processes for Machine Learning*, eq. A.6 / sec. 2.2),
:math:`\Sigma_{\rm post} = (\Sigma^{-1} + B^T B / \sigma^2)^{-1}` and
:math:`\mu = \Sigma_{\rm post} B^T x / \sigma^2`, decouples into one scalar
problem per mode:

.. math::
    v_k = \Big(\frac{1}{\lambda_k} + \frac{b_k^2}{\sigma^2}\Big)^{-1}, \qquad
    \hat\mu_k = v_k\, b_k\, \hat x_k / \sigma^2 .

The posterior is again stationary: its covariance has eigenvalues :math:`v_k`
(the Fourier modes are its eigen-directions) and every pixel has posterior
standard deviation :math:`\sqrt{N^{-2} \sum_k v_k}`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbi_diffusion.benchmark.fields.distribution import StationaryGaussianField
from sbi_diffusion.benchmark.fields.spectra import (
    check_grid_size,
    fourier,
    gaussian_blur_transfer,
    inverse_fourier,
    power_law_spectrum,
    radial_average,
    radial_wavenumbers,
    real_fourier_synthesis,
    real_fourier_variances,
)

__all__ = ["GaussianFieldPosterior", "GaussianRandomFieldProblem"]


class GaussianFieldPosterior:
    r"""The exact posterior :math:`N(\mu, F^H \operatorname{diag}(v) F)` of a field.

    Attributes:
        mean: Posterior mean field :math:`\mu`, ``(N * N,)``, float64.
        variance_spectrum: Posterior variance :math:`v_k` of each Fourier mode,
            ``(N, N)``, float64.
        N: Grid size.
        dtype: Dtype of samples.
    """

    def __init__(
        self, mean: Tensor, variance_spectrum: Tensor, dtype: torch.dtype
    ) -> None:
        self.mean = mean
        self.variance_spectrum = variance_spectrum
        self.N = variance_spectrum.shape[-1]
        self.dtype = dtype

    @property
    def pixel_sd(self) -> float:
        r"""Posterior sd of every pixel, :math:`\sqrt{N^{-2} \sum_k v_k}`."""
        return math.sqrt(float(self.variance_spectrum.mean()))

    @property
    def distribution(self) -> StationaryGaussianField:
        """The posterior as a distribution over flat fields."""
        return StationaryGaussianField(self.variance_spectrum, self.mean, self.dtype)

    def sample(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Exact posterior fields ``(num_samples, N * N)``, drawn by FFT."""
        return self.distribution.sample((num_samples,), generator=generator)

    def eigen_directions(
        self, num: int, leading: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Eigen-directions of the posterior covariance with the largest
        (``leading``) or smallest variances.

        The directions are the real orthonormal Fourier basis vectors of
        :func:`~sbi_diffusion.benchmark.fields.spectra.real_fourier_coefficients`.
        Many eigenvalues are tied (modes ``k`` and ``-k``, and modes related by the
        grid's symmetries); ties are broken by the basis order, and any member of
        a tied set is an eigen-direction of the same variance.

        Args:
            num: Number of directions.
            leading: Largest variances if True, smallest otherwise.

        Returns:
            ``(index, vectors, variances)``: positions in the real coefficient
            order ``(num,)``, unit vectors ``(num, N * N)`` and their posterior
            variances ``(num,)``, float64, sorted by variance (descending for
            leading, ascending for trailing).
        """
        if not 1 <= num <= self.N**2:
            raise ValueError(f"num must be in [1, {self.N**2}], got {num}.")
        variances = real_fourier_variances(self.variance_spectrum)
        order = torch.argsort(variances, descending=leading, stable=True)[:num]
        unit = torch.zeros(num, self.N**2, dtype=torch.float64)
        unit[torch.arange(num), order] = 1.0
        return order, real_fourier_synthesis(unit, self.N), variances[order]

    def expected_power_spectrum(self) -> tuple[Tensor, Tensor]:
        r"""Radially averaged power spectrum that posterior draws have on average.

        :math:`E|\hat\theta_k|^2 = |\hat\mu_k|^2 + v_k`, averaged over the modes of
        each radial bin (``round(|k|)``, see
        :func:`~sbi_diffusion.benchmark.fields.spectra.radial_wavenumbers`).

        Returns:
            ``(wavenumbers, power)``, each ``(num_bins,)``, float64.
        """
        power = fourier(self.mean, self.N).abs() ** 2 + self.variance_spectrum
        return radial_wavenumbers(self.N)[1], radial_average(power)


class GaussianRandomFieldProblem:
    r"""Infer a Gaussian random field from a blurred, noisy image of it.

    See the module docstring for the model. The prior pixel sd is 1. With the
    defaults the exact posterior pixel sd is 0.356 at ``N = 32``: the data pin
    down the large scales, the prior rules the small ones. Wavenumbers count
    cycles per box while the blur is in pixels, so a finer grid sees the same
    continuum field at higher resolution with a relatively narrower blur, and
    the posterior sd falls with ``N`` (0.476 at ``N = 16``, 0.267 at ``N = 64``).

    Args:
        N: Grid size; the field has ``N * N`` pixels. At least 2.
        beta: Spectral exponent of the prior (3: a smooth field).
        k0: Wavenumber (cycles per box side) where the spectrum flattens; keeps it
            finite at ``k = 0``. Positive.
        blur_width: Standard deviation of the Gaussian blur, in pixels. >= 0.
        noise_sd: Standard deviation :math:`\sigma` of the white observation
            noise. Positive.
        dtype: Dtype of prior samples and simulations (float32 for ``sbi``).

    Attributes:
        spectrum: Prior spectrum :math:`\lambda_k`, ``(N, N)``, float64.
        transfer: Blur transfer function :math:`b_k`, ``(N, N)``, float64.
        prior: :class:`StationaryGaussianField` over flat fields, usable by
            ``sbi`` (``sample``, ``log_prob``, event shape ``(N * N,)``).
    """

    def __init__(
        self,
        N: int = 32,
        beta: float = 3.0,
        k0: float = 1.0,
        blur_width: float = 1.5,
        noise_sd: float = 0.2,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.N = check_grid_size(N)
        if not noise_sd > 0:
            raise ValueError(f"noise_sd must be positive, got {noise_sd}.")
        self.beta, self.k0 = float(beta), float(k0)
        self.blur_width, self.noise_sd = float(blur_width), float(noise_sd)
        self.dtype = dtype
        self.spectrum = power_law_spectrum(self.N, self.beta, self.k0)
        self.transfer = gaussian_blur_transfer(self.N, self.blur_width)
        self.prior = StationaryGaussianField(self.spectrum, dtype=dtype)

    @property
    def dim_parameters(self) -> int:
        """Number of parameters, ``N * N``."""
        return self.N**2

    @property
    def x_shape(self) -> tuple[int, int, int]:
        """Shape of one observation, ``(1, N, N)`` (one channel)."""
        return (1, self.N, self.N)

    def _check_fields(self, theta: Tensor) -> Tensor:
        theta = torch.as_tensor(theta)
        if theta.ndim != 2 or theta.shape[-1] != self.N**2:
            raise ValueError(
                f"theta must have shape (n, {self.N**2}), got {tuple(theta.shape)}."
            )
        return theta

    def blur(self, theta: Tensor) -> Tensor:
        """The noiseless observation :math:`B\\theta`, ``(n, N * N)``, float64."""
        theta = self._check_fields(theta).to(torch.float64)
        return inverse_fourier(fourier(theta, self.N) * self.transfer)

    def simulate(
        self, theta: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Observe fields: ``x = B theta + noise_sd * eps``.

        Args:
            theta: Fields ``(n, N * N)``.
            generator: Optional torch generator, for reproducible noise.

        Returns:
            Images ``(n, 1, N, N)`` in ``dtype``.
        """
        clean = self.blur(theta)
        noise = torch.randn(clean.shape, dtype=torch.float64, generator=generator)
        x = clean + self.noise_sd * noise
        return x.reshape(-1, *self.x_shape).to(self.dtype)

    def sample_prior(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Prior fields ``(num_samples, N * N)``, drawn by FFT."""
        return self.prior.sample((num_samples,), generator=generator)

    def observation(self, seed: int = 0) -> tuple[Tensor, Tensor]:
        """A reproducible ground-truth field and its observation.

        Returns:
            ``(theta_o, x_o)`` of shapes ``(1, N * N)`` and ``(1, 1, N, N)``.
        """
        generator = torch.Generator().manual_seed(seed)
        theta = self.sample_prior(1, generator=generator)
        return theta, self.simulate(theta, generator=generator)

    def posterior_variance_spectrum(self) -> Tensor:
        r""":math:`v_k = (1/\lambda_k + b_k^2/\sigma^2)^{-1}`, ``(N, N)``, float64.

        It does not depend on the observation."""
        return 1.0 / (1.0 / self.spectrum + self.transfer**2 / self.noise_sd**2)

    def exact_posterior(self, x_o: Tensor) -> GaussianFieldPosterior:
        r"""The exact posterior :math:`p(\theta \mid x_o)`.

        Args:
            x_o: One observation with ``N * N`` values, e.g. ``(1, 1, N, N)``,
                ``(N, N)`` or ``(N * N,)``.

        Returns:
            The posterior, with mean :math:`\mu = F^H(v \odot b \odot \hat x_o) /
            \sigma^2` and per-mode variances :math:`v`.
        """
        x_o = torch.as_tensor(x_o, dtype=torch.float64)
        if x_o.numel() != self.N**2:
            raise ValueError(
                f"x_o must hold one observation of {self.N**2} values, got shape "
                f"{tuple(x_o.shape)}."
            )
        variance = self.posterior_variance_spectrum()
        hat = fourier(x_o.reshape(-1), self.N)
        mean = inverse_fourier(variance * self.transfer * hat / self.noise_sd**2)
        return GaussianFieldPosterior(mean, variance, self.dtype)
