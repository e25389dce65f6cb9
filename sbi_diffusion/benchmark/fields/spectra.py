r"""Fourier algebra of stationary fields on an ``N x N`` periodic grid.

Conventions, used by every module of :mod:`sbi_diffusion.benchmark.fields`:

- A field is a real vector of length ``N * N``, the image flattened row-major, so
  ``field.reshape(-1, N, N)`` gives images.
- Fourier transforms are ``torch.fft.fft2(..., norm="ortho")``: the transform
  :math:`F` is unitary, :math:`F_{k, r} = N^{-1} e^{-2\pi i\, k \cdot r / N}`,
  white noise stays white, and :math:`\|F u\|^2 = \|u\|^2`.
- A stationary covariance on the periodic grid is circulant,
  :math:`C = F^H \operatorname{diag}(\lambda) F`. Its eigenvalues
  :math:`\lambda_k = E|\hat u_k|^2` are what this package calls the *spectrum*; the
  pixel variance is their mean, :math:`C_{rr} = N^{-2} \sum_k \lambda_k`.
- Wavenumbers :math:`k = (k_x, k_y)` are integers in cycles per box side,
  :math:`k_x \in \{-\lfloor N/2 \rfloor, \dots, \lceil N/2 \rceil - 1\}`; the
  angular frequency in radians per pixel is :math:`\omega = 2 \pi k / N`.

A real field with spectrum :math:`\lambda` is drawn as
:math:`u = F^H(\sqrt{\lambda} \odot F w)` with :math:`w` white noise; it is real
(up to rounding, which ``.real`` drops) because :math:`F w` is Hermitian
symmetric and :math:`\lambda_k = \lambda_{-k}`, and its covariance is
:math:`F^H \operatorname{diag}(\lambda) F` (Lang & Potthoff 2011, "Fast simulation
of Gaussian random fields", Monte Carlo Methods Appl. 17(3)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "check_grid_size",
    "color_noise",
    "fourier",
    "gaussian_blur_transfer",
    "inverse_fourier",
    "power_law_spectrum",
    "radial_average",
    "radial_wavenumbers",
    "real_fourier_coefficients",
    "real_fourier_synthesis",
    "real_fourier_variances",
    "wavenumbers",
]


def check_grid_size(N: int) -> int:
    """Validate the grid size ``N`` (at least 2) and return it as an int."""
    if int(N) != N or N < 2:
        raise ValueError(f"The grid size N must be an integer >= 2, got {N!r}.")
    return int(N)


def wavenumbers(N: int) -> tuple[Tensor, Tensor]:
    """Integer wavenumbers ``(k_x, k_y)``, each of shape ``(N, N)``, float64.

    Entry ``[i, j]`` belongs to Fourier index ``(i, j)`` of ``fft2``: ``k_y`` (rows)
    varies along the first axis, ``k_x`` (columns) along the second.
    """
    freq = torch.fft.fftfreq(check_grid_size(N), d=1.0 / N, dtype=torch.float64)
    ky, kx = torch.meshgrid(freq, freq, indexing="ij")
    return kx, ky


def _abs_wavenumber(N: int) -> Tensor:
    kx, ky = wavenumbers(N)
    return torch.sqrt(kx**2 + ky**2)


def power_law_spectrum(
    N: int, beta: float | Tensor, k0: float = 1.0, variance: float | Tensor = 1.0
) -> Tensor:
    r"""Power-law spectrum :math:`\lambda_k = A (|k|^2 + k_0^2)^{-\beta / 2}`.

    The amplitude :math:`A` makes the pixel variance
    :math:`N^{-2} \sum_k \lambda_k` equal ``variance``.

    Args:
        N: Grid size.
        beta: Spectral exponent, a float or a tensor of any batch shape ``S``.
        k0: Wavenumber (cycles per box) below which the spectrum flattens; it
            keeps the spectrum finite at ``k = 0``. Must be positive.
        variance: Marginal pixel variance, a float or broadcastable to ``S``.

    Returns:
        The spectrum, shape ``S + (N, N)``, float64.
    """
    if k0 <= 0:
        raise ValueError(f"k0 must be positive, got {k0}.")
    beta = torch.as_tensor(beta, dtype=torch.float64)[..., None, None]
    variance = torch.as_tensor(variance, dtype=torch.float64)[..., None, None]
    shape = (_abs_wavenumber(N) ** 2 + k0**2) ** (-beta / 2)
    return variance * shape / shape.mean(dim=(-2, -1), keepdim=True)


def gaussian_blur_transfer(N: int, width: float) -> Tensor:
    r"""Transfer function of a periodic Gaussian blur of ``width`` pixels.

    :math:`b_k = \exp(-\tfrac12 s^2 |\omega|^2)` with :math:`\omega = 2\pi k / N`
    radians per pixel: the Fourier transform of a Gaussian kernel of standard
    deviation ``s = width`` pixels. ``b`` is real and symmetric under
    ``k -> -k``, so the blur is a real symmetric circulant matrix
    :math:`B = F^H \operatorname{diag}(b) F`, and ``b_0 = 1`` preserves the mean.
    ``width = 0`` is no blur.

    Returns:
        Shape ``(N, N)``, float64.
    """
    if width < 0:
        raise ValueError(f"The blur width must be non-negative, got {width}.")
    omega = 2 * math.pi * _abs_wavenumber(N) / N
    return torch.exp(-0.5 * (width * omega) ** 2)


def fourier(fields: Tensor, N: int) -> Tensor:
    """Unitary 2-D FFT of flat fields ``(..., N * N)`` -> complex ``(..., N, N)``."""
    return torch.fft.fft2(fields.reshape(*fields.shape[:-1], N, N), norm="ortho")


def inverse_fourier(modes: Tensor) -> Tensor:
    """Inverse of :func:`fourier`: ``(..., N, N)`` -> real flat ``(..., N * N)``."""
    field = torch.fft.ifft2(modes, norm="ortho").real
    return field.reshape(*modes.shape[:-2], -1)


def color_noise(white: Tensor, spectrum: Tensor) -> Tensor:
    r"""Map white noise to a field with the given spectrum.

    :math:`u = F^H(\sqrt{\lambda} \odot F w)`; for :math:`w \sim N(0, I)`,
    :math:`u \sim N(0, F^H \operatorname{diag}(\lambda) F)`.

    Args:
        white: White noise ``(..., N * N)``.
        spectrum: Spectrum ``(N, N)`` or broadcastable ``(..., N, N)``,
            symmetric under ``k -> -k``.

    Returns:
        The coloured field ``(..., N * N)``, float64.
    """
    N = spectrum.shape[-1]
    modes = fourier(white.to(torch.float64), N) * spectrum.sqrt()
    return inverse_fourier(modes)


def radial_wavenumbers(N: int) -> tuple[Tensor, Tensor]:
    """Radial bins of the Fourier grid.

    Mode ``k`` falls in bin ``round(|k|)``; bins run from 0 to the corner,
    ``round(N / sqrt 2)``, and every bin holds at least one mode.

    Returns:
        ``(index, centres)``: the bin of each mode, shape ``(N, N)`` (long), and
        the bins' wavenumbers ``0, 1, ...`` (float64).
    """
    index = torch.round(_abs_wavenumber(N)).long()
    return index, torch.arange(int(index.max()) + 1, dtype=torch.float64)


def radial_average(power: Tensor) -> Tensor:
    """Average ``power (..., N, N)`` over the modes of each radial bin.

    Returns:
        Shape ``(..., num_bins)``, bins as in :func:`radial_wavenumbers`.
    """
    N = power.shape[-1]
    index, centres = radial_wavenumbers(N)
    index = index.reshape(-1)
    flat = power.reshape(*power.shape[:-2], N * N)
    total = flat.new_zeros(*flat.shape[:-1], len(centres)).index_add_(-1, index, flat)
    return total / torch.bincount(index, minlength=len(centres)).to(flat)


def _real_basis(N: int) -> tuple[Tensor, Tensor, Tensor]:
    """For each real coefficient: its Fourier mode (flat), imaginary part or not,
    and scale (1 for self-conjugate modes, sqrt 2 for the others)."""
    i, j = torch.meshgrid(torch.arange(N), torch.arange(N), indexing="ij")
    flat = (i * N + j).reshape(-1)
    conj = (((-i) % N) * N + (-j) % N).reshape(-1)
    self_conj = flat[flat == conj]
    pairs = flat[flat < conj]
    modes = torch.cat([self_conj, pairs, pairs])
    imag = torch.cat(
        [torch.zeros(len(self_conj) + len(pairs), dtype=torch.bool)]
        + [torch.ones(len(pairs), dtype=torch.bool)]
    )
    scale = torch.ones(N * N, dtype=torch.float64)
    scale[len(self_conj) :] = math.sqrt(2.0)
    return modes, imag, scale


def real_fourier_coefficients(fields: Tensor, N: int) -> Tensor:
    r"""Coefficients of real fields in a real orthonormal Fourier basis.

    The basis holds, for each self-conjugate mode (``k = -k`` mod ``N``), the
    real cosine vector, and for each pair ``{k, -k}`` the vectors
    :math:`\sqrt 2\,\mathrm{Re}` and :math:`\sqrt 2\,\mathrm{Im}` of the
    Fourier row; it is orthonormal, so the transform is a rotation of
    :math:`\mathbb{R}^{N^2}`. Every circulant covariance is diagonal in it, the
    coefficient of mode ``k`` having variance :math:`\lambda_k`
    (:func:`real_fourier_variances`).

    Args:
        fields: Real fields ``(..., N * N)``.
        N: Grid size.

    Returns:
        Coefficients ``(..., N * N)``, float64, in the order of
        :func:`real_fourier_variances`.
    """
    modes, imag, scale = _real_basis(N)
    hat = fourier(fields.to(torch.float64), N).reshape(*fields.shape[:-1], N * N)
    parts = torch.where(imag, hat.imag[..., modes], hat.real[..., modes])
    return parts * scale


def real_fourier_variances(spectrum: Tensor) -> Tensor:
    """The spectrum ``(..., N, N)`` in the order of the real coefficients."""
    N = spectrum.shape[-1]
    modes, _, _ = _real_basis(N)
    return spectrum.reshape(*spectrum.shape[:-2], N * N)[..., modes]


def real_fourier_synthesis(coefficients: Tensor, N: int) -> Tensor:
    """Inverse of :func:`real_fourier_coefficients`: coefficients -> fields.

    Applied to unit vectors it gives the real orthonormal basis vectors.
    """
    modes, imag, scale = _real_basis(N)
    c = coefficients.to(torch.float64) / scale
    batch = c.shape[:-1]
    hat = torch.zeros(*batch, N * N, dtype=torch.complex128)
    hat[..., modes[~imag]] = c[..., ~imag].to(torch.complex128)
    hat[..., modes[imag]] += 1j * c[..., imag]
    # the conjugate partner of each pair: hat[-k] = conj(hat[k])
    i, j = modes[imag] // N, modes[imag] % N
    partner = ((-i) % N) * N + (-j) % N
    hat[..., partner] = hat[..., modes[imag]].conj()
    return inverse_fourier(hat.reshape(*batch, N, N))
