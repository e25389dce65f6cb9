r"""Tilting a denoiser by a factor ``r(theta)``, and the denoising covariances.

A target ``p(theta | x) r(theta)`` has the denoising posterior
``p(theta_0 | z_t, x) r(theta_0)``. With the Gaussian approximation
``N(x_hat, C)`` of ``p(theta_0 | z_t, x)`` and a second-order expansion of
``log r`` at ``x_hat`` (gradient ``g``, Hessian ``-R``),

.. math::
    \hat x_{new} = \hat x + (C^{-1} + R)^{-1} g,

which is exact when both factors are Gaussian. ``C`` is one of
:data:`COVARIANCES`: from Tweedie's second-order formula
``C = (sigma^2 / alpha) d x_hat / dz`` (``"jacobian"``), that of a Gaussian
fitted to samples of the target (``"gaussian"``,
:class:`~sbi_diffusion.guidance.gaussian_fit.GaussianFit`), or the isotropic
``C = sigma^2 / (alpha^2 + sigma^2) I`` of a unit-variance standardised prior
(``"isotropic"``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sbi_diffusion.composition import (
    denoiser_jacobian,
    precision_from_jacobian,
)
from sbi_diffusion.composition.linalg import inverse_clamped
from sbi_diffusion.guidance.base import GuidanceContext, GuidedDenoiser, z_dim_evals
from sbi_diffusion.guidance.gaussian_fit import GaussianFit
from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.samplers import network_evaluations_per_call

__all__ = [
    "COVARIANCES",
    "check_covariance",
    "denoising_covariance",
    "grad_and_hessian",
    "tilted_denoiser",
]

COVARIANCES = ("jacobian", "gaussian", "isotropic")
"""The choices of the denoising covariance ``C``."""


def check_covariance(covariance: str, allowed: tuple[str, ...] = COVARIANCES) -> str:
    """Returns ``covariance`` if it is one of ``allowed``.

    Raises:
        ValueError: otherwise.
    """
    if covariance not in allowed:
        raise ValueError(f"Unknown covariance {covariance!r}. Pass one of {allowed}.")
    return covariance


def grad_and_hessian(
    log_fn: Callable[[Tensor], Tensor], u: Tensor, hessian: bool
) -> tuple[Tensor, Tensor | None]:
    """Per-row gradient (and Hessian) of ``log_fn`` ``(batch,) `` at ``u``."""
    with torch.enable_grad():
        uu = u.detach().requires_grad_(True)
        value = log_fn(uu)
        (grad,) = torch.autograd.grad(value.sum(), uu, create_graph=hessian)
        hess = None
        if hessian:
            rows = []
            for j in range(u.shape[1]):
                if grad[:, j].requires_grad:
                    (h,) = torch.autograd.grad(
                        grad[:, j].sum(), uu, retain_graph=True, allow_unused=True
                    )
                    h = torch.zeros_like(u) if h is None else h
                else:
                    h = torch.zeros_like(u)
                rows.append(h)
            hess = torch.stack(rows, dim=1).detach()
    grad = torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
    if hess is not None:
        hess = torch.nan_to_num(hess, nan=0.0, posinf=0.0, neginf=0.0)
    return grad, hess


def denoising_covariance(
    denoise: DenoiseFn,
    z: Tensor,
    t: Tensor,
    covariance: str,
    max_variance: float | None = None,
    fit: GaussianFit | None = None,
) -> tuple[Tensor, Tensor]:
    """``x_hat`` and the denoising covariance ``C`` ``(batch, d, d)``; with
    ``max_variance`` (the training prior's largest standardised variance) a
    Jacobian covariance is bounded by that of a target no wider than the prior;
    ``"gaussian"`` takes it from ``fit``."""
    schedule = denoise.schedule
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    d = z.shape[1]
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    if covariance == "gaussian":
        return denoise(z, t), fit.covariance(alpha, sigma).to(z)
    if covariance == "jacobian":
        x_hat, jac = denoiser_jacobian(denoise, z, t)
        precision = precision_from_jacobian(
            jac, alpha, sigma, max_variance=max_variance
        )
        return x_hat, torch.linalg.inv(precision)
    x_hat = denoise(z, t)
    c = (sigma**2 / (alpha**2 + sigma**2))[:, None, None]
    return x_hat, c * eye


def tilted_mean(
    x_hat: Tensor, cov: Tensor, grad: Tensor, hess: Tensor | None
) -> Tensor:
    r"""``x_hat + (C^{-1} + R)^{-1} g`` with ``R = -hess`` (clamped to keep the
    combined precision positive definite)."""
    if hess is None:
        return x_hat + (cov @ grad[:, :, None])[:, :, 0]
    precision = torch.linalg.inv(cov.double()) - hess.double()
    combined = inverse_clamped(precision, 1e-6)
    return x_hat + (combined.to(x_hat) @ grad[:, :, None])[:, :, 0]


def tilted_denoiser(
    denoise: DenoiseFn,
    context: GuidanceContext,
    log_r: Callable[[Tensor], Tensor],
    covariance: str,
    hessian: bool,
    fit: GaussianFit | None = None,
) -> GuidedDenoiser:
    r"""The tilt of ``denoise`` by ``r`` (see the module docstring):
    ``x_hat_new = x_hat + (C^{-1} + R)^{-1} g`` with ``g`` and ``-R`` the gradient
    and Hessian of ``log r`` (a function of ``z``) at ``x_hat``, and ``C`` the
    ``"jacobian"``, ``"gaussian"`` (from ``fit``) or ``"isotropic"`` denoising
    covariance. Without ``hessian``,
    ``R = 0`` and ``x_hat_new = x_hat + C g``.

    A Jacobian covariance is bounded by the training prior's largest variance and
    costs one backward pass per dimension (counted in the evaluations per call).
    """
    max_variance = context.prior_max_variance() if covariance == "jacobian" else None

    def fn(z: Tensor, t: Tensor) -> Tensor:
        x_hat, cov = denoising_covariance(denoise, z, t, covariance, max_variance, fit)
        grad, hess = grad_and_hessian(log_r, x_hat, hessian)
        return tilted_mean(x_hat, cov, grad, hess)

    extra = z_dim_evals(context) if covariance == "jacobian" else 0
    evaluations = network_evaluations_per_call(denoise) * (1 + extra)
    return GuidedDenoiser(denoise, fn, evaluations)
