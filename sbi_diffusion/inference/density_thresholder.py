r"""sbi's ``get_density_thresholder`` for this package's posteriors: the
``1 - epsilon`` highest-density region (Deistler et al. 2022, "Truncated
proposals for scalable and hassle-free simulation-based inference"),

.. math::
    S = \{\theta : \log q(\theta \mid x_o) \ge \tau\}, \qquad
    \tau = \text{the } \epsilon \text{ quantile of } \log q(\theta_i \mid
    x_o), \; \theta_i \sim q(\theta \mid x_o),

with the densities of the support samples integrated along their own sampling
paths (:meth:`~sbi_diffusion.inference.log_density.ProbabilityFlowDensity.
sample_with_log_prob`), and new points decided by a cheap density pass, a
checked one within a measured band of ``tau``, and enclosing regions that
reject most prior draws without a density
(:mod:`sbi_diffusion.inference.truncation` holds the regions).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from sbi_diffusion.inference.truncation import (
    REGION_SHAPES,
    DensityRegion,
    SampleRegion,
    cheap_error_summary,
    check_quantile,
    inside_all,
)
from sbi_diffusion.samplers import Solver

__all__ = ["get_density_thresholder", "posterior_covariance_basis"]

BAND_PROBES = 1000
"""Prior draws inside the enclosing regions, and lowest-density support
samples, on which :func:`get_density_thresholder` measures its cheap pass's
error (up to this many of each)."""

BAND_PRIOR_DRAWS = 100_000
"""Prior draws searched for the band's probes inside the enclosing regions."""

BAND_SAFETY = 1.5
"""The band is this many times the largest error seen on the probes."""

THRESHOLDER_EXACT_MAX_DIM = 2
"""Parameter dimensions up to this get the exact divergence in
:func:`get_density_thresholder` with ``divergence="auto"``."""

CHEAP_STEP_CHOICES = (8, 16, 32)
"""The cheap passes ``cheap_steps="auto"`` chooses among."""

PROBE_BASIS_SAMPLES = 10_000
"""Posterior samples the probe basis of :func:`get_density_thresholder` is
estimated from (:func:`posterior_covariance_basis`)."""


def get_density_thresholder(
    posterior: Any,
    quantile: float = 1e-4,
    num_samples_to_estimate_support: int = 1_000_000,
    x: Tensor | None = None,
    steps: int | None = None,
    divergence: str = "auto",
    density_steps: int = 64,
    box_margin: float = 0.1,
    cheap_steps: int | str | None = "auto",
    show_progress_bars: bool = False,
) -> DensityRegion:
    r"""sbi's ``get_density_thresholder`` for this package's posteriors, with the
    density of each support sample taken along its own sampling path.

    A drop-in for ``sbi.utils.get_density_thresholder`` (same first three
    arguments, same region)::

        from sbi_diffusion import get_density_thresholder
        accept_reject_fn = get_density_thresholder(posterior, quantile=1e-4)
        proposal = RestrictedPrior(prior, accept_reject_fn, sample_with="rejection")

    sbi's version draws the samples and then solves the probability-flow ODE
    again for each density; here
    :meth:`~sbi_diffusion.inference.log_density.ProbabilityFlowDensity.
    sample_with_log_prob` integrates the divergence along the sampling
    trajectory, so the 10^6 samples and densities cost one pass. The threshold
    ``tau`` is the ``quantile`` quantile of these densities, and the region
    ``{theta : log q(theta | x_o) >= tau}`` decides a new point with
    ``density_steps`` fixed Heun steps of ``log_prob`` (exact divergence up to
    32 parameters). Points outside the box or outside the ellipsoid around
    the support samples above the threshold (:class:`SampleRegion` with
    ``quantile=1e-12``, the samples' extremes, widened by ``box_margin``) are
    rejected without a density, so that rejection sampling from the prior
    spends densities only near the region: the density of a new point is
    most of the cost of sampling the truncated prior, and where the
    posterior's parameters are correlated the ellipsoid excludes much of the
    box. Inside them, a point is first decided by ``cheap_steps`` Heun steps,
    and only where that density lies within the band ``delta`` of the
    threshold by the ``density_steps`` ones; ``delta`` is
    :data:`BAND_SAFETY` times the largest difference of the two densities on
    :data:`BAND_PROBES` prior draws inside the enclosing regions (the points
    rejection sampling asks about) and on the lowest-density support samples
    (those nearest the threshold). The densities that set the
    threshold follow the sampling paths, where they stay accurate in the
    posterior's tail; a few fixed steps of ``log_prob`` from the far end are
    not (``benchmarks/sequential/README.md``), which is why sbi's thresholder
    on this posterior truncates more than it should and the region takes 64
    steps. For a region decided by the adaptive solver near the threshold, use
    :func:`get_density_region`.

    Args:
        posterior: one of this package's ODE posteriors, with a default ``x``
            or ``x`` given.
        quantile: ``epsilon``, the posterior mass left out.
        num_samples_to_estimate_support: samples the quantile is taken over.
        x: the observation; None uses the posterior's default ``x``.
        steps: solver steps of the sampling pass (default
            :data:`~sbi_diffusion.density.DEFAULT_FUSED_STEPS`).
        divergence: ``"exact"``, ``"hutchinson"`` or ``"auto"``: exact up to
            :data:`THRESHOLDER_EXACT_MAX_DIM` parameters, Hutchinson's estimate
            with one probe above, its probes drawn in the eigenbasis of the
            posterior covariance of 10^4 samples
            (:func:`posterior_covariance_basis`). The exact trace costs one
            backward pass per parameter at every step; Hutchinson's costs one,
            and its noise widens the region (a noisy density spreads the
            sample quantile downwards), which keeps the posterior's mass
            inside at the price of a looser truncation.
        density_steps: Heun steps of the region's density for new points.
        box_margin: margin ``m`` of the enclosing box and ellipsoid, in units of
            the box's width and of the ellipsoid's radius.
        cheap_steps: Heun steps of the first pass of a new point's density;
            None decides every point with ``density_steps``; ``"auto"`` takes
            the one of :data:`CHEAP_STEP_CHOICES` with the least expected
            cost per point inside the enclosing regions,

            .. math::
                c(s) = s + f(s)\,\text{density\_steps},

            where ``f(s)`` is the fraction of the prior-draw probes whose
            ``s``-step density lies within that pass's band of the threshold
            (the points the checked pass must decide). A sharp posterior makes
            the probability-flow ODE stiff, the 8-step density's error large
            and its band wide, so that nearly every point needs the checked
            pass; a longer cheap pass then costs less (on lotka_volterra
            trained on 10^4 simulations ``"auto"`` took 16 steps and drew the
            truncated prior 1.26x faster than 8 steps;
            ``benchmarks/sequential/README.md``). Measuring the candidates
            costs a few seconds per region.
        show_progress_bars: show a tqdm bar over the support samples.

    Returns:
        A :class:`DensityRegion`, callable as ``accept_reject_fn``; its
        ``build_record`` holds the seconds of the sampling pass and the band
        with the cheap pass's measured errors (band 0 with
        ``cheap_steps=None``).

    Raises:
        TypeError: for a posterior without the probability-flow density.
        ValueError: for a quantile outside ``(0, 1)``, fewer than two samples,
            or ``cheap_steps`` below 1 (or a string other than ``"auto"``).
    """
    from sbi_diffusion.density import DEFAULT_FUSED_STEPS
    from sbi_diffusion.inference.log_density import ProbabilityFlowDensity

    if not isinstance(posterior, ProbabilityFlowDensity):
        raise TypeError(
            f"get_density_thresholder needs one of this package's posteriors, got "
            f"{type(posterior).__name__}; for sbi's posteriors use "
            "sbi.utils.get_density_thresholder."
        )
    check_quantile(quantile)
    num_samples = int(num_samples_to_estimate_support)
    if num_samples < 2:
        raise ValueError(
            f"num_samples_to_estimate_support must be at least 2, got {num_samples}."
        )
    if (
        cheap_steps is not None
        and cheap_steps != "auto"
        and (isinstance(cheap_steps, bool | str) or int(cheap_steps) < 1)
    ):
        raise ValueError(
            f"cheap_steps must be a positive integer, 'auto' or None, got "
            f"{cheap_steps!r}."
        )
    x = posterior._resolve_x(x)
    dim = int(posterior.estimator.theta_dim)
    if divergence == "auto":
        divergence = "exact" if dim <= THRESHOLDER_EXACT_MAX_DIM else "hutchinson"
    steps = DEFAULT_FUSED_STEPS if steps is None else int(steps)
    start = time.perf_counter()
    basis = None
    if divergence == "hutchinson":
        basis = posterior_covariance_basis(
            posterior, x, min(num_samples, PROBE_BASIS_SAMPLES)
        )
    samples, log_p = posterior.sample_with_log_prob(
        (num_samples,),
        x=x,
        steps=steps,
        divergence=divergence,
        probe_basis=basis,
        show_progress_bars=show_progress_bars,
    )
    seconds = time.perf_counter() - start
    rank = max(1, int(quantile * num_samples))
    threshold = float(torch.kthvalue(log_p.double().cpu(), rank).values)
    region_solver = Solver("heun", steps=int(density_steps))
    flat = samples.reshape(num_samples, -1)
    enclosing = [
        SampleRegion(
            flat[log_p >= threshold], shape=shape, quantile=1e-12, margin=box_margin
        )
        for shape in REGION_SHAPES
    ]
    band_record: dict[str, Any] = {
        "cheap_steps": cheap_steps,
        "cheap_steps_requested": cheap_steps,
    }
    if cheap_steps is None:
        cheap_solver, band = region_solver, 0.0
    else:
        lowest = torch.topk(log_p, min(BAND_PROBES, num_samples), largest=False)
        inside = _draws_inside(posterior.prior, enclosing, BAND_PROBES)
        probes = torch.cat(
            [inside.reshape(-1, *samples.shape[1:]), samples[lowest.indices]]
        )
        choices = CHEAP_STEP_CHOICES if cheap_steps == "auto" else (cheap_steps,)
        cheap_solver, band, measured = _chosen_cheap_pass(
            posterior,
            x,
            probes,
            int(inside.shape[0]),
            threshold,
            [int(s) for s in choices],
            region_solver,
        )
        band_record.update(measured)
    region = DensityRegion(posterior, x, threshold, band, cheap_solver, region_solver)
    region.enclosing_regions = enclosing
    region.build_record = {
        "quantile": float(quantile),
        "num_samples": num_samples,
        "divergence": divergence,
        "probes": "posterior_eigenbasis" if basis is not None else None,
        "box_margin": float(box_margin),
        "density_steps": int(density_steps),
        "sample_with_log_prob_steps": steps,
        "sample_with_log_prob_s": round(seconds, 3),
        **band_record,
    }
    return region


def _draws_inside(prior: Any, regions: list[SampleRegion], num: int) -> Tensor:
    """Up to ``num`` prior draws that lie in every one of ``regions`` (from at
    most :data:`BAND_PRIOR_DRAWS` draws); shape ``(<= num, dim)``."""
    draws = prior.sample((BAND_PRIOR_DRAWS,)).reshape(BAND_PRIOR_DRAWS, -1)
    return draws[inside_all(regions, draws)][:num]


def _chosen_cheap_pass(
    posterior: Any,
    x: Tensor,
    probes: Tensor,
    num_prior_probes: int,
    threshold: float,
    choices: list[int],
    reference: Solver,
) -> tuple[Solver, float, dict[str, Any]]:
    """The cheap pass of least expected cost among ``choices`` (Heun steps), its
    band ``delta = BAND_SAFETY * max_i |log q_cheap(theta_i) - log
    q_ref(theta_i)|`` over the ``probes``, and a JSON-able record.

    The expected cost per point is ``s + f(s) * reference steps``, ``f(s)`` the
    fraction of the first ``num_prior_probes`` probes (prior draws inside the
    enclosing regions; all probes if there are none) within the band of the
    threshold."""
    start = time.perf_counter()
    with torch.no_grad():
        reference_log_p = posterior.log_prob(probes, x=x, solver=reference)
    candidates = []
    for steps in choices:
        solver = Solver("heun", steps=steps)
        with torch.no_grad():
            cheap_log_p = posterior.log_prob(probes, x=x, solver=solver)
        median, largest = cheap_error_summary(cheap_log_p, reference_log_p)
        band = BAND_SAFETY * largest
        near = cheap_log_p[: num_prior_probes or None]
        fraction = float(((near - threshold).abs() < band).float().mean())
        cost = steps + fraction * int(reference.options["steps"])
        candidates.append(
            {
                "cheap_steps": steps,
                "band": band,
                "cheap_error_median": median,
                "cheap_error_max": largest,
                "fraction_in_band": fraction,
                "expected_steps": cost,
            }
        )
    best = min(candidates, key=lambda c: c["expected_steps"])
    record = {
        **best,
        "band_probes": int(probes.shape[0]),
        "band_s": round(time.perf_counter() - start, 3),
    }
    if len(candidates) > 1:
        record["cheap_step_candidates"] = candidates
    return Solver("heun", steps=best["cheap_steps"]), best["band"], record


def posterior_covariance_basis(posterior: Any, x: Tensor, num_samples: int) -> Tensor:
    r"""The eigenvectors ``U`` ``(dim, dim)`` of the covariance of
    ``num_samples`` posterior samples in the model's standardised space: the
    basis in which Hutchinson's probes have the least variance for a Gaussian
    posterior (:func:`~sbi_diffusion.density._probes`)."""
    with torch.no_grad():
        samples = posterior.sample((int(num_samples),), x=x, show_progress_bars=False)
        z = posterior.estimator.to_z(samples).reshape(samples.shape[0], -1)
    _, basis = torch.linalg.eigh(torch.cov(z.T.double()))
    return basis.to(z.dtype)
