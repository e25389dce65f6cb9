"""Sampling the posterior under another prior than the training prior."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from sbi_diffusion.guidance.base import GuidanceContext, ScoreTransform
from sbi_diffusion.guidance.gaussian_fit import check_covariance_samples, shared_fit
from sbi_diffusion.guidance.tilt import check_covariance, tilted_denoiser
from sbi_diffusion.model.interface import DenoiseFn

__all__ = ["PriorSwap"]


def _log_prob_fn(dist_or_fn: Distribution | Callable, name: str) -> Callable:
    if isinstance(dist_or_fn, Distribution):
        return dist_or_fn.log_prob
    if callable(dist_or_fn):
        return dist_or_fn
    raise ValueError(
        f"{name} must be a torch Distribution or a callable theta -> log density "
        f"(batch,), got {type(dist_or_fn).__name__}."
    )


class PriorSwap(ScoreTransform):
    r"""Sample the posterior under a new prior: ``p(theta | x) p_new(theta) /
    p_train(theta)``, as a tilt with ``log r = log p_new - log p_train``.

    At small noise this adds ``grad log p_new - grad log p_train`` to the score;
    at larger noise the addition is annealed by the denoising covariance (see
    :mod:`sbi_diffusion.guidance.tilt`). Exact for Gaussian posteriors and
    Gaussian priors with either covariance. Any prior with a differentiable log
    density works (points where ``log p_train`` is not finite, e.g. outside a
    box, get no correction).

    Args:
        new_prior: a ``Distribution`` or a callable ``theta -> log p_new(theta)``.
        train_prior: the training prior; the posterior's if None.
        hessian: use the Hessian of ``log r`` (exact for Gaussian priors).
        covariance: the denoising covariance ``C``: ``"gaussian"`` (default;
            :class:`GaussianFit`, from ``covariance_samples`` samples of the
            unswapped posterior drawn once per call of ``sample``) or
            ``"jacobian"`` (Tweedie's second-order formula, one backward pass
            per dimension per step; it follows a non-Gaussian posterior locally,
            but a small trained model's Jacobian is often wrong). The isotropic
            shortcut of :class:`~sbi_diffusion.guidance.ConstraintGuidance` is
            not offered: it over-corrects (measurements of both in
            ``benchmarks/iid/README.md``, "Evidence behind defaults").
        covariance_samples: samples for ``"gaussian"``.
    """

    name = "prior_swap"

    def __init__(
        self,
        new_prior: Distribution | Callable[[Tensor], Tensor],
        train_prior: Distribution | Callable[[Tensor], Tensor] | None = None,
        hessian: bool = True,
        covariance: str = "gaussian",
        covariance_samples: int = 1000,
    ):
        self.new_log_prob = _log_prob_fn(new_prior, "new_prior")
        self.train_prior = train_prior
        self.covariance = check_covariance(covariance, ("gaussian", "jacobian"))
        self.covariance_samples = check_covariance_samples(covariance_samples)
        self.hessian = bool(hessian)

    def apply(self, denoise: DenoiseFn, context: GuidanceContext) -> DenoiseFn:
        train = self.train_prior if self.train_prior is not None else context.prior
        if train is None:
            raise ValueError("PriorSwap needs the training prior: pass train_prior=.")
        train_log_prob = _log_prob_fn(train, "train_prior")
        new_log_prob = self.new_log_prob

        def log_ratio(z: Tensor) -> Tensor:
            theta = context.theta(z)
            value = new_log_prob(theta) - train_log_prob(theta)
            return torch.where(torch.isfinite(value), value, torch.zeros_like(value))

        fit = shared_fit(
            self.covariance, denoise, context, self.covariance_samples, self
        )
        return tilted_denoiser(
            denoise, context, log_ratio, self.covariance, self.hessian, fit
        )
