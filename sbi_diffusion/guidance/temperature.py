"""Tempering the likelihood: ``p(theta) p(x | theta)^gamma``."""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_diffusion.composition import denoiser_jacobian, precision_from_jacobian
from sbi_diffusion.composition.linalg import inverse_clamped
from sbi_diffusion.guidance.base import (
    GuidanceContext,
    GuidedDenoiser,
    ScoreTransform,
    z_dim_evals,
)
from sbi_diffusion.guidance.gaussian_fit import check_covariance_samples, shared_fit
from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.samplers import network_evaluations_per_call

__all__ = ["LikelihoodTemperature"]


class LikelihoodTemperature(ScoreTransform):
    r"""Temper the likelihood: ``p(theta) p(x | theta)^gamma
    = p(theta)^{1 - gamma} p(theta | x)^gamma``.

    The factors combine as in :mod:`sbi_diffusion.composition`:
    ``Lambda = gamma P_post + (1 - gamma) P_prior``,
    ``x_hat = Lambda^{-1} (gamma P_post x_hat_post + (1 - gamma) P_prior
    x_hat_prior)`` with denoising precisions from the Jacobian (``"jacobian"``,
    exact for Gaussians; Linhart et al. 2024), from a Gaussian fitted to samples
    of the posterior (``"gaussian"``, :class:`GaussianFit`, with the prior's
    exact or moment-matched precision; exact for Gaussians, no network
    derivatives, and it can follow a tilt such as :class:`PriorSwap`) or equal
    (``"identity"``: the weighted sum of scores, classifier-free guidance with
    the prior's score).

    Args:
        power: ``gamma > 0``.
        precision: ``"gaussian"`` (default), ``"jacobian"`` or ``"identity"``.
            The Jacobian follows a non-Gaussian posterior locally where the
            network's derivatives are accurate, but a small trained model's are
            often not (measured in ``benchmarks/iid/README.md``, "Evidence
            behind defaults").
        covariance_samples: samples for ``"gaussian"``.
    """

    name = "temperature"

    def __init__(
        self,
        power: float,
        precision: str = "gaussian",
        covariance_samples: int = 1000,
    ):
        if not float(power) > 0:
            raise ValueError(f"power must be positive, got {power!r}.")
        if precision not in ("jacobian", "gaussian", "identity"):
            raise ValueError(
                f"Unknown precision {precision!r}. Pass 'jacobian', 'gaussian' or "
                "'identity'."
            )
        self.power, self.precision = float(power), precision
        self.covariance_samples = check_covariance_samples(covariance_samples)

    def apply(self, denoise: DenoiseFn, context: GuidanceContext) -> DenoiseFn:
        prior = context.diffused_prior()
        gamma, mode = self.power, self.precision
        # a tempered posterior is no wider than the prior (as in the JAC
        # composition): bounds the learned Jacobians' precisions from below
        max_variance = context.prior_max_variance()
        floor = 1e-3 if max_variance is None else 1.0 / max_variance
        fit = shared_fit(mode, denoise, context, self.covariance_samples, self)

        def fn(z: Tensor, t: Tensor) -> Tensor:
            if mode == "identity":
                return gamma * denoise(z, t) + (1 - gamma) * prior(z, t)
            schedule = denoise.schedule
            alpha, sigma = schedule.alpha(t), schedule.sigma(t)
            p_prior = prior.precision(z, t)
            if mode == "gaussian":
                x_post = denoise(z, t)
                p_post = fit.denoising_precision(alpha, sigma).to(z)
                if p_prior is None:
                    p_prior = prior.gaussian_precision(z, t)
                x_prior = prior(z, t)
            else:
                x_post, jac = denoiser_jacobian(denoise, z, t)
                p_post = precision_from_jacobian(
                    jac, alpha, sigma, max_variance=max_variance
                )
                if p_prior is None:
                    x_prior, jac_p = denoiser_jacobian(prior, z, t)
                    p_prior = precision_from_jacobian(
                        jac_p, alpha, sigma, max_variance=max_variance
                    )
                else:
                    x_prior = prior(z, t)
            lam = gamma * p_post + (1 - gamma) * p_prior
            num = gamma * (p_post @ x_post[:, :, None]) + (1 - gamma) * (
                p_prior @ x_prior[:, :, None]
            )
            snr = (alpha**2 / torch.clamp(sigma**2, min=1e-12)).double()
            inv = inverse_clamped(lam, snr + floor).to(z)
            return (inv @ num)[:, :, 0]

        evals = network_evaluations_per_call(denoise) + prior.evaluations_per_call
        if mode == "jacobian":
            evals *= 1 + z_dim_evals(context)
        return GuidedDenoiser(denoise, fn, evals)
