r"""Scores of posterior samples of a field against the exact Gaussian posterior.

:func:`field_posterior_metrics` compares ``n`` samples of an estimator for
problem (a) (:class:`~sbi_diffusion.benchmark.fields.posterior_field.
GaussianRandomFieldProblem`) with the exact posterior
:math:`N(\mu, F^H \operatorname{diag}(v) F)`, whose pixels all have sd
:math:`s = \sqrt{N^{-2}\sum_k v_k}`. With sample mean :math:`\bar\theta`, sample
sd :math:`\hat s_r` of pixel :math:`r` and ``P = N^2`` pixels:

- mean error: :math:`e_r = (\bar\theta_r - \mu_r) / s`; reported as the RMS and the
  maximum of :math:`|e_r|` over pixels. Exact samples give
  :math:`e_r \sim N(0, 1/n)`: RMS about :math:`1/\sqrt n` (0.03 at ``n = 1000``),
  maximum about :math:`\sqrt{2 \log P / n}`.
- sd ratio :math:`\hat s_r / s`: mean, minimum, maximum over pixels. Monte-Carlo
  sd of one ratio :math:`\approx 1/\sqrt{2(n-1)}` (2.2% at ``n = 1000``).
- variance ratio along eigen-directions: the posterior covariance is diagonal in
  the real orthonormal Fourier basis; the sample variance of the centred samples'
  coefficients along the ``num_directions`` directions of largest (leading) and
  smallest (trailing) exact variance, divided by those variances, averaged. Monte-
  Carlo sd :math:`\approx \sqrt{2 / ((n-1) \cdot \text{num\_directions})}`
  (2.8% for ``n = 2000`` and 5 directions).
- power spectrum: the radially averaged :math:`|\hat\theta_k|^2` of the samples
  (not centred), against its exact expectation
  :math:`|\hat\mu_k|^2 + v_k`; summary :math:`\max_{\rm bins} |\log(\text{ratio})|`.
  A bin of ``m`` modes has relative Monte-Carlo sd at most
  :math:`\sqrt{2 / (n m)}`; the bin ``k = 0`` has one mode (3% at ``n = 2000``).
- coverage at level :math:`a` (0.5 and 0.9): for each pixel, the central
  interval :math:`[l_r, u_r]` between the :math:`(1-a)/2` and :math:`(1+a)/2`
  empirical quantiles of the samples; its exact posterior probability
  :math:`\Phi((u_r - \mu_r)/s) - \Phi((l_r - \mu_r)/s)`; averaged over pixels.
  Calibrated samples give :math:`a` up to an :math:`O(1/n)` bias of the
  empirical quantiles and a per-pixel Monte-Carlo sd of about
  :math:`\sqrt{a(1-a)/n}`; over- (under-) dispersed samples give more (less).
  Using the exact marginal instead of simulated truths makes the score free of
  simulation noise; it checks pixel marginals only (joint calibration, e.g. SBC,
  Talts et al. 2018, or TARP, Lemos et al. 2023, needs many observations).

No single score flags every failure, so read them together. Prior draws, for
example, have a large mean error and sd ratio, but their spectrum is close to
that of posterior draws (averaged over data the two agree), and their wide
intervals around the wrong centre can give near-nominal average coverage; an
over-smoothed estimator shows in the trailing variance ratio and the spectrum.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbi_diffusion.benchmark.fields.posterior_field import GaussianRandomFieldProblem
from sbi_diffusion.benchmark.fields.spectra import (
    fourier,
    radial_average,
    real_fourier_coefficients,
)

__all__ = ["COVERAGE_LEVELS", "field_posterior_metrics"]

COVERAGE_LEVELS: tuple[float, ...] = (0.5, 0.9)
"""Nominal levels of the per-pixel coverage."""


def _quantiles(samples: Tensor, levels: Tensor) -> Tensor:
    """Empirical quantiles along dim 0 (linear interpolation, as
    ``torch.quantile``, which refuses large inputs): ``(len(levels), ...)``."""
    ordered = torch.sort(samples, dim=0).values
    position = levels * (samples.shape[0] - 1)
    low = position.floor().long()
    high = position.ceil().long()
    weight = (position - low).reshape(-1, *[1] * (samples.ndim - 1))
    return ordered[low] * (1 - weight) + ordered[high] * weight


def _normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2.0)))


def field_posterior_metrics(
    samples: Tensor,
    problem: GaussianRandomFieldProblem,
    x_o: Tensor,
    num_directions: int = 5,
) -> dict[str, float | Tensor]:
    r"""Score posterior samples of a field against the exact posterior.

    Definitions and Monte-Carlo errors are in the module docstring.

    Args:
        samples: Posterior samples ``(n, N * N)`` from any estimator, ``n >= 2``.
        problem: The problem that produced ``x_o``.
        x_o: The observation (``N * N`` values, e.g. ``(1, 1, N, N)``).
        num_directions: Number of leading and of trailing eigen-directions.

    Returns:
        A dict of floats, except the spectra (float64 tensors ``(num_bins,)``):

        - ``num_samples``: ``n``; ``exact_pixel_sd``: :math:`s`.
        - ``mean_error_rms``, ``mean_error_max``: RMS and max of
          :math:`|\bar\theta_r - \mu_r| / s`; ``mean_error_rms_exact``:
          :math:`1/\sqrt n`, what exact samples give on average.
        - ``sd_ratio_mean``, ``sd_ratio_min``, ``sd_ratio_max``; ``sd_ratio_mc_sd``:
          :math:`1/\sqrt{2(n-1)}`.
        - ``leading_variance_ratio``, ``trailing_variance_ratio``;
          ``variance_ratio_mc_sd``: :math:`\sqrt{2/((n-1) k)}`.
        - ``spectrum_wavenumbers``, ``spectrum_samples``, ``spectrum_exact``;
          ``spectrum_max_abs_log_ratio``.
        - ``coverage_50``, ``coverage_90``.

    Raises:
        ValueError: If ``samples`` is not ``(n, N * N)`` with ``n >= 2``.
    """
    N = problem.N
    samples = torch.as_tensor(samples)
    if samples.ndim != 2 or samples.shape[1] != N * N or samples.shape[0] < 2:
        raise ValueError(
            f"samples must have shape (n, {N * N}) with n >= 2, got "
            f"{tuple(samples.shape)}."
        )
    if not 1 <= num_directions <= N * N:
        raise ValueError(f"num_directions must be in [1, {N * N}].")
    n = samples.shape[0]
    posterior = problem.exact_posterior(x_o)
    s, mu = posterior.pixel_sd, posterior.mean
    theta = samples.to(torch.float64)
    sample_mean = theta.mean(0)

    error = ((sample_mean - mu) / s).abs()
    sd_ratio = theta.std(0) / s

    coefficients = real_fourier_coefficients(theta - sample_mean, N)
    ratios = {}
    for name, leading in (("leading", True), ("trailing", False)):
        index, _, exact = posterior.eigen_directions(num_directions, leading)
        ratio = coefficients[:, index].var(0) / exact
        ratios[f"{name}_variance_ratio"] = float(ratio.mean())

    wavenumbers, spectrum_exact = posterior.expected_power_spectrum()
    spectrum_samples = radial_average((fourier(theta, N).abs() ** 2).mean(0))
    log_ratio = (spectrum_samples / spectrum_exact).log()

    levels = torch.tensor(COVERAGE_LEVELS, dtype=torch.float64)
    bounds = _quantiles(theta, torch.cat([(1 - levels) / 2, (1 + levels) / 2]))
    mass = _normal_cdf((bounds - mu) / s)
    coverage = (mass[len(levels) :] - mass[: len(levels)]).mean(1)

    return {
        "num_samples": n,
        "exact_pixel_sd": s,
        "mean_error_rms": float(error.pow(2).mean().sqrt()),
        "mean_error_max": float(error.max()),
        "mean_error_rms_exact": 1 / math.sqrt(n),
        "sd_ratio_mean": float(sd_ratio.mean()),
        "sd_ratio_min": float(sd_ratio.min()),
        "sd_ratio_max": float(sd_ratio.max()),
        "sd_ratio_mc_sd": 1 / math.sqrt(2 * (n - 1)),
        **ratios,
        "variance_ratio_mc_sd": math.sqrt(2 / ((n - 1) * num_directions)),
        "spectrum_wavenumbers": wavenumbers,
        "spectrum_samples": spectrum_samples,
        "spectrum_exact": spectrum_exact,
        "spectrum_max_abs_log_ratio": float(log_ratio.abs().max()),
        **{
            f"coverage_{round(100 * a)}": float(c)
            for a, c in zip(COVERAGE_LEVELS, coverage, strict=True)
        },
    }
