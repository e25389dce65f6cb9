r"""Truncation regions drawn from posterior samples, for truncated sequential
inference without density evaluations.

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
safer of the two for curved or multimodal posteriors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["REGION_SHAPES", "SampleRegion", "get_sample_thresholder"]

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
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must lie in (0, 1), got {quantile}.")
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
