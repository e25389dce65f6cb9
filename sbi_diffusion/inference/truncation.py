r"""Truncation regions for truncated sequential inference: regions around
posterior samples, and the highest-density region with checked densities.

Truncated sequential NPE (TSNPE; Deistler et al. 2022, "Truncated proposals for
scalable and hassle-free simulation-based inference") simulates each new round
from the prior restricted to a region ``S`` that holds the posterior's mass,

.. math::
    \tilde p(\theta) \propto p(\theta)\, 1[\theta \in S],

and sbi's ``get_density_thresholder`` takes ``S`` to be the ``1 - epsilon``
highest-density region, which needs the posterior density of 10^6 samples.
Through the probability-flow ODE that density costs minutes
(``benchmarks/sequential/README.md``). Any ``S`` that holds the posterior's
mass keeps the rounds exact, because the truncated prior is proportional to
the prior on ``S`` (:mod:`sbi_diffusion.inference.proposals`); a larger ``S``
only spends simulations less efficiently. Deistler et al. (2022, Sec. 3)
name such regions as alternatives; :class:`SampleRegion` builds two of them
from posterior samples alone:

* ``"box"``: the axis-aligned box ``[l_j - m w_j, u_j + m w_j]``, with ``l_j``
  and ``u_j`` the ``epsilon / (2d)`` and ``1 - epsilon / (2d)`` sample quantiles
  of coordinate ``j`` (the union bound over ``2d`` tails), ``w_j = u_j - l_j``
  and the margin ``m``;
* ``"ellipsoid"``: ``{theta : (theta - mu)^T C^{-1} (theta - mu) <= (1 + m)^2
  r^2}`` with the sample mean ``mu``, covariance ``C`` and ``r^2`` the
  ``1 - epsilon`` sample quantile of the squared Mahalanobis distances.

Below ``1 / num_samples`` a quantile is the sample extreme. A region from
samples can miss mass that the samples did not reach (a mode the posterior
estimate has not found); the margin widens it against that, and the box is the
safer of the two for curved or multimodal posteriors. Both are loose where the
posterior is curved or has long tails.

:class:`DensityRegion` is the highest-density region itself,

.. math::
    S = \{\theta : \log q(\theta \mid x_o) \ge \tau\}, \qquad
    \tau = \text{the } \epsilon \text{ quantile of } \log q(\theta_i \mid
    x_o), \; \theta_i \sim q(\theta \mid x_o),

as sbi's ``get_density_thresholder`` defines it, at a fraction of its cost
(:func:`get_density_region`): every density is first taken with a few fixed
Heun steps of the probability-flow ODE, and only the points whose cheap
density lies within the measured error ``delta`` of the threshold are
evaluated again with the adaptive solver. The lowest cheap densities among the
samples are checked this way before ``tau`` is taken, and ``delta`` is the
largest cheap-minus-adaptive difference seen among them. The region decides
exactly as the adaptive density does; its cost depends on how wide the band
is: with 4 Heun steps on a two_moons model trained on 300 simulations the band
was 8.7 nats and 86% of prior draws needed the adaptive check
(``benchmarks/sequential/README.md``); with 16 steps, the default, the band
was 4.4 nats and 58% needed it.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch import Tensor

from sbi_diffusion._deprecation import moved_names
from sbi_diffusion.samplers import Solver

__all__ = [
    "REGION_SHAPES",
    "DensityRegion",
    "SampleRegion",
    "get_density_region",
    "get_sample_thresholder",
]

REGION_SHAPES = ("box", "ellipsoid")


class SampleRegion:
    """A region around posterior samples, callable as sbi's ``accept_reject_fn``.

    ``region(theta)`` returns a boolean tensor, True where ``theta`` lies in
    the region, so ``RestrictedPrior(prior, region, sample_with="rejection")``
    draws from the prior truncated to it. The region declares nothing about
    the proposal: the ``RestrictedPrior`` is what the trainers accept.

    Args:
        samples: posterior samples, shape ``(num_samples, dim)``.
        shape: ``"box"`` or ``"ellipsoid"`` (see the module docstring).
        quantile: the posterior mass ``epsilon`` the region may leave out, in
            ``(0, 1)``.
        margin: relative widening ``m >= 0`` of the region.

    Raises:
        ValueError: for an unknown shape, a quantile outside ``(0, 1)``, a
            negative margin, samples that are not a 2D tensor of at least two
            rows, or samples with NaN or inf.
    """

    def __init__(
        self,
        samples: Tensor,
        shape: str = "box",
        quantile: float = 1e-4,
        margin: float = 0.1,
    ) -> None:
        if shape not in REGION_SHAPES:
            raise ValueError(
                f"Unknown region shape {shape!r}. Pass one of {list(REGION_SHAPES)}."
            )
        check_quantile(quantile)
        if margin < 0.0:
            raise ValueError(f"margin must be >= 0, got {margin}.")
        if samples.dim() != 2 or samples.shape[0] < 2:
            raise ValueError(
                "samples must have shape (num_samples, dim) with at least two "
                f"samples, got {tuple(samples.shape)}."
            )
        if not torch.isfinite(samples).all():
            raise ValueError(
                "samples contain NaN or inf; the region needs finite ones."
            )
        self.shape = shape
        self.quantile = float(quantile)
        self.margin = float(margin)
        self.num_samples = int(samples.shape[0])
        samples = samples.detach().double()
        dim = samples.shape[1]
        if shape == "box":
            tail = quantile / (2 * dim)
            low = _quantile(samples, tail)
            high = _quantile(samples, 1.0 - tail)
            width = high - low
            self.low = low - margin * width
            self.high = high + margin * width
        else:
            self.mean = samples.mean(0)
            centred = samples - self.mean
            cov = centred.T @ centred / (samples.shape[0] - 1)
            # a jitter keeps a degenerate sample covariance invertible
            jitter = 1e-9 * cov.diagonal().mean().clamp_min(1e-12)
            cov = cov + jitter * torch.eye(dim, dtype=cov.dtype)
            self.cholesky = torch.linalg.cholesky(cov)
            radius2 = _quantile(self._mahalanobis2(samples)[:, None], 1 - quantile)
            self.radius2 = float(radius2) * (1.0 + margin) ** 2

    def _mahalanobis2(self, theta: Tensor) -> Tensor:
        centred = (theta - self.mean).T
        whitened = torch.linalg.solve_triangular(self.cholesky, centred, upper=False)
        return (whitened**2).sum(0)

    def __call__(self, theta: Tensor) -> Tensor:
        """True where ``theta`` (shape ``(n, dim)``) lies in the region."""
        dim = self.low.shape[0] if self.shape == "box" else self.mean.shape[0]
        if theta.dim() != 2 or theta.shape[1] != dim:
            raise ValueError(
                f"theta must have shape (n, {dim}), got {tuple(theta.shape)}."
            )
        values = theta.detach().double().cpu()
        if self.shape == "box":
            inside = ((values >= self.low) & (values <= self.high)).all(dim=1)
        else:
            inside = self._mahalanobis2(values) <= self.radius2
        return inside.to(theta.device)

    def to_dict(self) -> dict[str, Any]:
        """The region as JSON-able numbers (for benchmark rows)."""
        record: dict[str, Any] = {
            "shape": self.shape,
            "quantile": self.quantile,
            "margin": self.margin,
            "num_samples": self.num_samples,
        }
        if self.shape == "box":
            record["low"] = self.low.tolist()
            record["high"] = self.high.tolist()
        else:
            record["mean"] = self.mean.tolist()
            record["cholesky"] = self.cholesky.tolist()
            record["radius2"] = self.radius2
        return record


def inside_all(regions: list[SampleRegion], theta: Tensor) -> Tensor:
    """True where ``theta`` ``(n, dim)`` lies in every one of ``regions``
    (everywhere for no regions)."""
    inside = torch.ones(theta.shape[0], dtype=torch.bool, device=theta.device)
    for region in regions:
        inside &= region(theta)
    return inside


def cheap_error_summary(cheap: Tensor, reference: Tensor) -> tuple[float, float]:
    """Median and largest ``|cheap - reference|`` over the entries where both
    densities are finite, in nats (0 where there is none)."""
    finite = torch.isfinite(cheap) & torch.isfinite(reference)
    errors = (cheap - reference)[finite].abs()
    if not errors.numel():
        return 0.0, 0.0
    return float(errors.median()), float(errors.max())


def check_quantile(quantile: float) -> None:
    """Raise a ValueError unless ``0 < quantile < 1``."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}.")


def _quantile(values: Tensor, q: float) -> Tensor:
    """Per-column ``q`` quantile of ``values`` (the extreme row below ``1/n``)."""
    n = values.shape[0]
    if q * n < 1.0:
        return values.min(0).values
    if (1.0 - q) * n < 1.0:
        return values.max(0).values
    return torch.quantile(values, q, dim=0)


def get_sample_thresholder(
    posterior: Any,
    x: Tensor | None = None,
    num_samples: int = 100_000,
    shape: str = "box",
    quantile: float = 1e-4,
    margin: float = 0.1,
    show_progress_bars: bool = False,
) -> SampleRegion:
    """A truncation region from ``num_samples`` posterior samples, in place of
    sbi's ``get_density_thresholder``::

        region = get_sample_thresholder(posterior, x_o)
        proposal = RestrictedPrior(prior, region, sample_with="rejection")

    Args:
        posterior: any posterior with ``sample(shape, x=..., show_progress_bars=
            ...)`` (ours or sbi's).
        x: the observation; None uses the posterior's default ``x``.
        num_samples: posterior samples the region is built from.
        shape, quantile, margin: as in :class:`SampleRegion`.
        show_progress_bars: passed to ``posterior.sample``.

    Returns:
        The :class:`SampleRegion`, callable as ``accept_reject_fn``.
    """
    samples = posterior.sample(
        (int(num_samples),), x=x, show_progress_bars=show_progress_bars
    )
    return SampleRegion(samples, shape=shape, quantile=quantile, margin=margin)


class DensityRegion:
    """The highest-density region ``log q(theta | x_o) >= threshold`` of one of
    our posteriors, callable as sbi's ``accept_reject_fn`` (build it with
    :func:`get_density_region` or ``get_density_thresholder``).

    A point is accepted when its cheap density (``cheap_solver``) exceeds
    ``threshold + band``, rejected below ``threshold - band``, and decided by
    ``checked_solver`` in between (the adaptive solver in
    :func:`get_density_region`; 64 Heun steps in
    :func:`~sbi_diffusion.inference.density_thresholder.get_density_thresholder`).

    Args:
        posterior: a posterior with the probability-flow ``log_prob``
            (:class:`~sbi_diffusion.inference.log_density.ProbabilityFlowDensity`).
        x: the observation.
        threshold: ``tau``, in nats.
        band: ``delta >= 0``, in nats.
        cheap_solver: the fixed-step solver of the first pass.
        checked_solver: the solver of the points within the band.
    """

    def __init__(
        self,
        posterior: Any,
        x: Tensor,
        threshold: float,
        band: float,
        cheap_solver: Solver,
        checked_solver: Solver,
    ) -> None:
        self.posterior = posterior
        self.x = x
        self.threshold = float(threshold)
        self.band = float(band)
        self.cheap_solver = cheap_solver
        self.checked_solver = checked_solver
        #: points seen and points decided by the checked solver, over all calls
        self.num_evaluated = 0
        self.num_checked = 0
        #: what :func:`get_density_region` measured while building the region
        self.build_record: dict[str, Any] = {}
        #: regions that each hold this one (e.g. a box and an ellipsoid around
        #: the support samples); points outside any of them are rejected
        #: without a density
        self.enclosing_regions: list[SampleRegion] = []

    def __call__(self, theta: Tensor) -> Tensor:
        """True where ``theta`` lies in the region."""
        if not self.enclosing_regions:
            return self._decide(theta)
        inside = inside_all(self.enclosing_regions, theta)
        if inside.any():
            inside[inside.clone()] = self._decide(theta[inside])
        return inside

    def _decide(self, theta: Tensor) -> Tensor:
        """True where the density of ``theta`` reaches the threshold."""
        with torch.no_grad():
            cheap = self.posterior.log_prob(theta, x=self.x, solver=self.cheap_solver)
            inside = cheap >= self.threshold
            undecided = (cheap - self.threshold).abs() < self.band
            undecided &= torch.isfinite(cheap)
            if undecided.any():
                checked = self.posterior.log_prob(
                    theta[undecided], x=self.x, solver=self.checked_solver
                )
                inside[undecided] = checked >= self.threshold
        self.num_evaluated += int(theta.shape[0])
        self.num_checked += int(undecided.sum())
        return inside

    def to_dict(self) -> dict[str, Any]:
        """The region's settings and build measurements, JSON-able."""
        return {
            "shape": "density",
            "threshold": self.threshold,
            "band": self.band,
            "cheap_solver": self.cheap_solver.as_dict(),
            "checked_solver": self.checked_solver.as_dict(),
            "num_evaluated": self.num_evaluated,
            "num_checked": self.num_checked,
            **self.build_record,
        }


def get_density_region(
    posterior: Any,
    x: Tensor | None = None,
    num_samples: int = 1_000_000,
    quantile: float = 1e-4,
    cheap_steps: int = 16,
    num_candidates: int | None = None,
    sample_options: dict[str, Any] | None = None,
    show_progress_bars: bool = False,
) -> DensityRegion:
    """The ``1 - quantile`` highest-density region of ``posterior`` at ``x``, in
    place of sbi's ``get_density_thresholder``::

        region = get_density_region(posterior, x_o)
        proposal = RestrictedPrior(prior, region, sample_with="rejection")

    Steps: draw ``num_samples`` posterior samples; take their densities with
    ``cheap_steps`` Heun steps; take the ``num_candidates`` lowest again with the
    adaptive ``dopri5``; ``tau`` is the ``quantile`` quantile of these densities
    (adaptive where checked, cheap elsewhere), and the band ``delta`` the
    largest cheap-minus-adaptive difference among the candidates. The
    candidates must reach above ``tau + delta``, so that no unchecked sample
    could lie below ``tau``; otherwise a warning asks for more candidates.

    Args:
        posterior: one of our posteriors (``DiffusionPosterior`` and the
            posteriors built on it), trained for one observation or amortised.
        x: the observation; None uses the posterior's default ``x``.
        num_samples: samples the quantile is taken over (sbi: 10^6).
        quantile: ``epsilon``, the posterior mass left out.
        cheap_steps: Heun steps of the first density pass (``2 * cheap_steps``
            network evaluations with the divergence).
        num_candidates: samples checked with ``dopri5``; default ``max(10^4,
            100 * quantile * num_samples)``, at most ``num_samples``.
        sample_options: keyword arguments of ``posterior.sample`` (e.g. a
            cheaper ``sampler``/``steps``).
        show_progress_bars: passed to ``posterior.sample``.

    Returns:
        The :class:`DensityRegion`; its ``build_record`` holds the threshold,
        the band, the cheap pass's median and largest error on the candidates
        and the seconds of each step.

    Raises:
        TypeError: for a posterior without the probability-flow ``log_prob``
            (sbi's own posteriors: use sbi's ``get_density_thresholder``).
        ValueError: for a quantile outside ``(0, 1)``, fewer than two samples,
            or ``cheap_steps < 1``.
    """
    from sbi_diffusion.inference.log_density import ProbabilityFlowDensity

    if not isinstance(posterior, ProbabilityFlowDensity):
        raise TypeError(
            f"get_density_region needs one of this package's posteriors, got "
            f"{type(posterior).__name__}; for sbi's posteriors use "
            "sbi.utils.get_density_thresholder, or get_sample_thresholder."
        )
    check_quantile(quantile)
    if int(num_samples) < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}.")
    if isinstance(cheap_steps, bool) or int(cheap_steps) < 1:
        raise ValueError(f"cheap_steps must be a positive integer, got {cheap_steps}.")
    num_samples = int(num_samples)
    if num_candidates is None:
        num_candidates = max(10_000, int(100 * quantile * num_samples))
    num_candidates = max(1, min(int(num_candidates), num_samples))
    x = posterior._resolve_x(x)
    cheap_solver = Solver("heun", steps=int(cheap_steps))
    checked_solver = Solver("dopri5")
    seconds: dict[str, float] = {}
    with torch.no_grad():
        start = time.perf_counter()
        samples = posterior.sample(
            (num_samples,),
            x=x,
            show_progress_bars=show_progress_bars,
            **dict(sample_options or {}),
        )
        seconds["sample_s"] = time.perf_counter() - start
        start = time.perf_counter()
        cheap = posterior.log_prob(samples, x=x, solver=cheap_solver)
        seconds["cheap_log_prob_s"] = time.perf_counter() - start
        start = time.perf_counter()
        candidates = torch.topk(cheap, num_candidates, largest=False).indices
        checked = posterior.log_prob(samples[candidates], x=x, solver=checked_solver)
        seconds["checked_log_prob_s"] = time.perf_counter() - start
    values = cheap.clone()
    values[candidates] = checked
    rank = max(1, int(quantile * num_samples))
    threshold = float(torch.kthvalue(values.double().cpu(), rank).values)
    error_median, band = cheap_error_summary(cheap[candidates], checked)
    covered = num_candidates == num_samples or (
        float(cheap[candidates].max()) - band >= threshold
    )
    if not covered:
        warnings.warn(
            "The checked candidates do not reach past the threshold plus the "
            f"cheap pass's error ({band:.2f} nats), so unchecked samples may lie "
            "below it: pass a larger num_candidates or more cheap_steps.",
            stacklevel=2,
        )
    region = DensityRegion(posterior, x, threshold, band, cheap_solver, checked_solver)
    region.build_record = {
        "quantile": float(quantile),
        "num_samples": num_samples,
        "num_candidates": num_candidates,
        "cheap_error_median": error_median,
        "cheap_error_max": band,
        "candidates_cover_threshold": bool(covered),
        **{key: round(value, 3) for key, value in seconds.items()},
    }
    return region


__getattr__ = moved_names(
    __name__,
    ("get_density_thresholder", "posterior_covariance_basis"),
    "sbi_diffusion.inference.density_thresholder",
)
