r"""Denoising covariances of a Gaussian fitted to samples of a guided target.

With ``P`` the (debiased) precision of samples of the target, the denoising
covariance ``C(t) = (P + alpha_t^2 / sigma_t^2 I)^{-1}`` is exact for a Gaussian
target (as GAUSS does for single-trial posteriors; Linhart et al. 2024).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from sbi_diffusion.composition import (
    sample_on_fixed_grid,
    unbiased_precision_factor,
)
from sbi_diffusion.composition.linalg import inverse_clamped
from sbi_diffusion.guidance.base import GuidanceContext, ScoreTransform
from sbi_diffusion.model import ConditionedDenoiser
from sbi_diffusion.model.interface import DenoiseFn

__all__ = ["GaussianFit", "shared_fit", "check_covariance_samples"]

_MAX_FIT_PASSES = 100


def _condition_embedding(denoise: Any) -> Tensor | None:
    """The per-row condition embedding of the :class:`ConditionedDenoiser` inside
    ``denoise`` (through guided and counting wrappers), or None."""
    inner = denoise
    for _ in range(32):
        if isinstance(inner, ConditionedDenoiser):
            return inner.embedding
        outer = inner
        inner = getattr(outer, "base", None)
        if inner is None:
            inner = getattr(outer, "denoise", None)
        if inner is None:
            return None
    return None


class GaussianFit:
    r"""The denoising covariance of a Gaussian fitted to the target of a
    ``DenoiseFn``: with ``P`` the precision of samples of the target (drawn at
    the first call, debiased with
    :func:`~sbi_diffusion.composition.unbiased_precision_factor`),

    .. math::
        C(t) = \big(P + \tfrac{\alpha_t^2}{\sigma_t^2} I\big)^{-1},

    the exact ``Cov[theta_0 | z_t]`` of a Gaussian target (as GAUSS does for
    single-trial posteriors; Linhart et al. 2024). Unlike the Jacobian of a
    learned denoiser it does not depend on the network's derivatives, which a
    small model gets wrong.

    Rows of the batch conditioned on different observations (``sample_batched``,
    joint conditionals) get separate fits: the samples are drawn with the batch
    of the first call, as many passes as the rarest condition needs. Fits are
    kept in ``context.fits`` under ``key`` and the condition, so later chunks
    and rejection rounds of the same sampling call reuse them.

    Args:
        denoise: the target (conditioned, possibly already guided).
        dim: dimension of ``theta``.
        num_samples: samples per fit (more than ``dim + 2``).
        seed: seed of the fit's own generator (the fit does not consume the
            caller's random numbers, and repeats exactly).
        context: holds the fits of a sampling call and counts their network
            evaluations (``setup_evaluations``); a private one if None.
        key: the fit's key in ``context.fits`` (transform and place in the
            chain of transforms).
    """

    def __init__(
        self,
        denoise: DenoiseFn,
        dim: int,
        num_samples: int,
        seed: int = 0,
        context: GuidanceContext | None = None,
        key: Any = None,
    ):
        unbiased_precision_factor(num_samples, dim)  # checks num_samples
        self.denoise, self.dim = denoise, dim
        self.num_samples, self.seed = int(num_samples), int(seed)
        self.context = (
            context
            if context is not None
            else GuidanceContext(torch.zeros(dim), torch.ones(dim))
        )
        self.key = key
        self._precisions: Tensor | None = None  # (batch, d, d) or (1, d, d)

    def _fit(self, batch: int, device: torch.device) -> Tensor:
        embedding = _condition_embedding(self.denoise)
        if embedding is not None and embedding.shape[0] == batch:
            rows, groups = torch.unique(embedding, dim=0, return_inverse=True)
            names = [(self.key, tuple(row.tolist())) for row in rows.cpu()]
        else:
            groups = torch.zeros(batch, dtype=torch.long, device=device)
            names = [(self.key, None)]
        counts = torch.bincount(groups, minlength=len(names))
        missing = [g for g, name in enumerate(names) if name not in self.context.fits]
        if missing:
            self._draw_fits(batch, device, groups, counts, names, missing)
        precisions = torch.stack([self.context.fits[name] for name in names])
        precisions = precisions.to(device)
        return precisions if len(names) == 1 else precisions[groups]

    def _draw_fits(self, batch, device, groups, counts, names, missing) -> None:
        passes = math.ceil(self.num_samples / int(counts[missing].min()))
        if passes > _MAX_FIT_PASSES:
            raise ValueError(
                f"covariance='gaussian' needs {self.num_samples} samples per "
                f"observation, but a batch holds as few as "
                f"{int(counts[missing].min())} rows of one observation ({passes} "
                "sampling passes); sample more per observation at once, pass "
                "fewer covariance_samples, or use covariance='isotropic' or "
                "'jacobian'."
            )
        generator = torch.Generator().manual_seed(self.seed)
        draws = []
        for _ in range(passes):
            samples, per_sample = sample_on_fixed_grid(
                self.denoise, (batch, self.dim), generator=generator, device=device
            )
            draws.append(samples.double())
            self.context.setup_evaluations += per_sample * batch
        samples = torch.stack(draws)  # (passes, batch, d)
        for g in missing:
            s = samples[:, groups == g].reshape(-1, self.dim)
            s = s[torch.isfinite(s).all(-1)]
            if s.shape[0] <= self.dim + 2:
                raise ValueError(
                    "Too few finite samples of the target to fit its covariance."
                )
            cov = torch.cov(s.T).reshape(self.dim, self.dim)
            factor = unbiased_precision_factor(s.shape[0], self.dim)
            self.context.fits[names[g]] = factor * inverse_clamped(cov, 1e-10)

    def precision(self, batch: int, device: torch.device) -> Tensor:
        """``P`` per row ``(batch, d, d)`` in float64 (fitted at the first call).

        Raises:
            ValueError: if a later call has a different batch while the rows
                have different conditions (a sampler that drops rows).
        """
        if self._precisions is None:
            self._precisions = self._fit(batch, device)
        precisions = self._precisions.to(device)
        if precisions.shape[0] == 1:
            return precisions.expand(batch, self.dim, self.dim)
        if precisions.shape[0] != batch:
            raise ValueError(
                "covariance='gaussian' with one condition per row needs the "
                "sampler to evaluate every row at every step; use a fixed-step "
                "sampler."
            )
        return precisions

    def denoising_precision(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """``C(t)^{-1} = P + alpha^2 / sigma^2 I`` ``(batch, d, d)`` in float64,
        for per-row ``alpha``, ``sigma``."""
        precision = self.precision(alpha.shape[0], alpha.device)
        snr = alpha.double() ** 2 / torch.clamp(sigma.double() ** 2, min=1e-12)
        eye = torch.eye(self.dim, dtype=torch.float64, device=alpha.device)
        return precision + snr[:, None, None] * eye

    def covariance(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """``C(t)`` ``(batch, d, d)`` for per-row ``alpha``, ``sigma``."""
        inverse = torch.linalg.inv(self.denoising_precision(alpha, sigma))
        return inverse.to(alpha.dtype)


def check_covariance_samples(num_samples: int) -> int:
    """Checks ``num_samples > d + 2`` for ``d = 1`` (the fit checks the real ``d``
    at sampling time) and returns it."""
    unbiased_precision_factor(int(num_samples), 1)
    return int(num_samples)


def _chain_depth(denoise: Any) -> int:
    """Number of wrappers above the innermost ``DenoiseFn``."""
    depth, inner = 0, getattr(denoise, "base", None)
    while inner is not None and depth < 64:
        depth, inner = depth + 1, getattr(inner, "base", None)
    return depth


def shared_fit(
    covariance: str,
    denoise: DenoiseFn,
    context: GuidanceContext,
    num_samples: int,
    owner: ScoreTransform,
) -> GaussianFit | None:
    """The :class:`GaussianFit` of ``owner`` for ``denoise`` if ``covariance`` is
    ``"gaussian"``, else None.

    The fit's key in ``context.fits`` is the transform and its place in the chain
    of transforms, so that the chunks and rejection rounds of one sampling call
    share one fit per condition.
    """
    if covariance != "gaussian":
        return None
    # the same transform at the same place in the chain: one fit per call
    key = (id(owner), _chain_depth(denoise))
    return GaussianFit(
        denoise, int(context.shift.numel()), num_samples, 0, context, key
    )
