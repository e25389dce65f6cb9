r"""A Gaussian distribution over flat fields with a circulant covariance.

:math:`u \sim N(m, C)` with :math:`C = F^H \operatorname{diag}(\lambda) F`
(conventions in :mod:`sbi_diffusion.benchmark.fields.spectra`). Sampling and
density cost one FFT per field, for any ``N``, where a dense
``MultivariateNormal`` would need an ``N^2 x N^2`` Cholesky factor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from sbi_diffusion.benchmark.fields.spectra import color_noise, fourier

__all__ = ["StationaryGaussianField"]


class StationaryGaussianField(Distribution):
    r"""Gaussian over flat ``N x N`` fields with a stationary (circulant) covariance.

    The event is a field flattened row-major, event shape ``(N * N,)``; the batch
    shape is empty. The density is

    .. math::
        \log p(u) = -\tfrac12 \sum_k \frac{|\widehat{(u - m)}_k|^2}{\lambda_k}
        - \tfrac12 \sum_k \log \lambda_k - \tfrac{N^2}{2} \log 2\pi,

    with the unitary FFT, since :math:`(u-m)^T C^{-1} (u-m) = \sum_k
    |\widehat{(u-m)}_k|^2 / \lambda_k` and :math:`\log\det C = \sum_k \log
    \lambda_k`. The algebra runs in float64; samples come in ``dtype``
    (float32 by default, as ``sbi`` expects), ``log_prob`` in the dtype of its
    input.

    Args:
        spectrum: Eigenvalues :math:`\lambda` of the covariance, ``(N, N)``,
            positive and symmetric under ``k -> -k``.
        mean: Mean field ``(N * N,)``; zero if omitted.
        dtype: Dtype of samples.
        validate_args: Passed to :class:`torch.distributions.Distribution`.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        spectrum: Tensor,
        mean: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        validate_args: bool | None = None,
    ) -> None:
        spectrum = torch.as_tensor(spectrum, dtype=torch.float64)
        if spectrum.ndim != 2 or spectrum.shape[0] != spectrum.shape[1]:
            shape = tuple(spectrum.shape)
            raise ValueError(f"The spectrum must be (N, N), got {shape}.")
        if not bool((spectrum > 0).all()):
            raise ValueError("The spectrum must be positive.")
        self.N = spectrum.shape[-1]
        self.spectrum = spectrum
        if mean is None:
            mean = torch.zeros(self.N * self.N, dtype=torch.float64)
        mean = torch.as_tensor(mean, dtype=torch.float64)
        if mean.shape != (self.N * self.N,):
            raise ValueError(f"The mean must have shape ({self.N * self.N},).")
        self.loc = mean
        self.dtype = dtype
        super().__init__(
            batch_shape=torch.Size(),
            event_shape=torch.Size([self.N * self.N]),
            validate_args=validate_args,
        )

    @property
    def mean(self) -> Tensor:
        """The mean field ``(N * N,)``."""
        return self.loc.to(self.dtype)

    @property
    def variance(self) -> Tensor:
        """Per-pixel variance (the same for every pixel): the spectrum's mean."""
        return self.spectrum.mean().expand(self.N * self.N).to(self.dtype)

    def rsample(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw fields of shape ``sample_shape + (N * N,)``.

        Args:
            sample_shape: Leading shape of the draws.
            generator: Optional torch generator, for reproducible draws.
        """
        shape = torch.Size(sample_shape) + self.event_shape
        white = torch.randn(shape, dtype=torch.float64, generator=generator)
        return (self.loc + color_noise(white, self.spectrum)).to(self.dtype)

    def sample(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """As :meth:`rsample`, without gradients."""
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def log_prob(self, value: Tensor) -> Tensor:
        """Log density of fields ``(..., N * N)``; returns shape ``(...)``."""
        if self._validate_args:
            self._validate_sample(value)
        if value.shape[-1] != self.N * self.N:
            raise ValueError(
                f"Fields must have {self.N * self.N} values, got {value.shape[-1]}."
            )
        hat = fourier(value.to(torch.float64) - self.loc, self.N)
        quad = (hat.abs() ** 2 / self.spectrum).sum(dim=(-2, -1))
        norm = self.spectrum.log().sum() + self.N**2 * math.log(2 * math.pi)
        out_dtype = value.dtype if value.is_floating_point() else self.dtype
        return (-0.5 * (quad + norm)).to(out_dtype)

    def entropy(self) -> Tensor:
        """Differential entropy, ``(N^2 (1 + log 2 pi) + log det C) / 2``."""
        n = self.N**2
        value = 0.5 * (n * (1 + math.log(2 * math.pi)) + self.spectrum.log().sum())
        return value.to(self.dtype)
