"""Steering samples into a constraint set ``{theta : c_j(theta) <= 0}``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sbi_diffusion.guidance.base import (
    GuidanceContext,
    GuidedDenoiser,
    ScoreTransform,
    z_dim_evals,
)
from sbi_diffusion.guidance.gaussian_fit import check_covariance_samples, shared_fit
from sbi_diffusion.guidance.tilt import check_covariance, denoising_covariance
from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.samplers import network_evaluations_per_call

__all__ = [
    "ConstraintGuidance",
    "interval_constraint",
    "linear_constraint",
    "soft_indicator_moments",
]


def interval_constraint(
    low: Tensor | float | None = None, high: Tensor | float | None = None
) -> Callable[[Tensor], Tensor]:
    """Constraint ``low <= theta <= high`` as ``c(theta) <= 0`` ``(batch, 2d)``."""
    if low is None and high is None:
        raise ValueError("Pass low=, high= or both for an interval constraint.")

    def constraint(theta: Tensor) -> Tensor:
        parts = []
        if low is not None:
            parts.append(torch.as_tensor(low).to(theta) - theta)
        if high is not None:
            parts.append(theta - torch.as_tensor(high).to(theta))
        return torch.cat(parts, dim=-1)

    return constraint


def linear_constraint(matrix: Tensor, bound: Tensor) -> Callable[[Tensor], Tensor]:
    """Linear inequalities ``A theta <= b`` as ``c(theta) = A theta - b``
    ``(batch, m)``."""
    matrix = torch.as_tensor(matrix, dtype=torch.float32)
    bound = torch.as_tensor(bound, dtype=torch.float32).reshape(-1)
    if matrix.dim() != 2 or matrix.shape[0] != bound.shape[0]:
        raise ValueError(
            f"linear_constraint needs A (m, d) and b (m,), got {tuple(matrix.shape)} "
            f"and {tuple(bound.shape)}."
        )

    def constraint(theta: Tensor) -> Tensor:
        return theta @ matrix.to(theta).T - bound.to(theta)

    return constraint


class ConstraintGuidance(ScoreTransform):
    r"""Steer samples into ``{theta : c_j(theta) <= 0 for all j}``.

    The target is the posterior times the soft indicator

    .. math::
        r(\theta) = \prod_j \big(1 - w + w\, \Phi(-c_j(\theta) / \tau)\big),

    with ``w = strength``: a point outside the constraint keeps a fraction
    ``1 - w`` of its density (``w = 1``: none, for ``tau -> 0`` the posterior
    truncated to the constraint set). At each noise level the denoising
    posterior ``N(x_hat, C)`` (:mod:`sbi_diffusion.guidance.tilt`) is
    multiplied by ``r``, with each ``c_j`` linearised at ``x_hat``
    (``c_j(theta) ~ c_j + a_j^T (theta - x_hat)``), and its mean and covariance
    are matched one constraint after another (the probit update of expectation
    propagation, Minka 2001):

    .. math::
        s = \sqrt{a^T C a + \tau^2},\quad u = -c / s,\quad
        \lambda = \frac{w \varphi(u)}{1 - w + w \Phi(u)},\quad
        \hat x \leftarrow \hat x - \frac{\lambda}{s} C a,\quad
        C \leftarrow C - \frac{\lambda (\lambda + u)}{s^2} C a a^T C.

    It is exact for a linear constraint and a Gaussian denoising posterior. The
    shift is bounded by about the distance to the constraint's boundary (plus a
    few ``sqrt(a^T C a)``), unlike a gradient step on ``log r``, which overshoots
    far for a sharp indicator.

    Args:
        constraint: ``c(theta)`` returning ``(batch,)`` or ``(batch, m)``;
            differentiable (e.g. :func:`interval_constraint`,
            :func:`linear_constraint`, or any torch function).
        strength: ``w`` in ``[0, 1]``, the weight of the indicator (0: no
            guidance, 1: exclude the outside).
        tau: softness of the indicator's edge, in the units of ``c``.
        covariance: the denoising covariance ``C``: ``"isotropic"`` (default;
            that of a unit-variance standardised prior: cheap and composable
            with every transform, but too wide for a narrow posterior, so
            samples end somewhat too far inside; measured in
            ``benchmarks/iid/README.md``, "Evidence behind defaults"),
            ``"gaussian"`` (:class:`GaussianFit` to ``covariance_samples``
            samples of the unguided target, drawn once per call of ``sample``;
            exact for a Gaussian posterior and a linear constraint, no network
            derivatives, follows any other transform) or ``"jacobian"``
            (Tweedie's second-order formula, one backward pass per dimension;
            exact for a Gaussian posterior and a linear constraint, but it
            cannot follow another tilt such as :class:`PriorSwap`, whose output
            is not differentiable).
        covariance_samples: samples for ``"gaussian"``.

    Raises:
        ValueError: for ``strength`` outside ``[0, 1]`` or ``tau <= 0``; (at
            sampling time) if ``c`` returns the wrong shape or NaN.
    """

    name = "constraint"

    def __init__(
        self,
        constraint: Callable[[Tensor], Tensor],
        strength: float = 1.0,
        tau: float = 1e-3,
        covariance: str = "isotropic",
        covariance_samples: int = 1000,
    ):
        if not callable(constraint):
            raise ValueError("constraint must be a callable theta -> c(theta).")
        if not 0.0 <= float(strength) <= 1.0 or not float(tau) > 0:
            raise ValueError(
                f"Pass 0 <= strength <= 1 (the weight of the indicator) and tau > 0, "
                f"got strength={strength} and tau={tau}."
            )
        self.constraint = constraint
        self.strength, self.tau = float(strength), float(tau)
        self.covariance = check_covariance(covariance)
        self.covariance_samples = check_covariance_samples(covariance_samples)

    def _checked(self, theta: Tensor) -> Tensor:
        c = self.constraint(theta)
        if not isinstance(c, Tensor):
            raise ValueError(
                f"The constraint returned {type(c).__name__}; return a tensor of "
                f"shape ({theta.shape[0]},) or ({theta.shape[0]}, m)."
            )
        if c.dim() == 1:
            c = c[:, None]
        if c.dim() != 2 or c.shape[0] != theta.shape[0]:
            raise ValueError(
                f"The constraint returned shape {tuple(c.shape)} for theta of shape "
                f"{tuple(theta.shape)}; return ({theta.shape[0]},) or "
                f"({theta.shape[0]}, m), one value per sample (and constraint)."
            )
        if torch.isnan(c).any():
            raise ValueError(
                "The constraint returned NaN; it must be defined (finite) for every "
                "theta the sampler visits."
            )
        return c

    def satisfied(self, theta: Tensor) -> Tensor:
        """Boolean ``(batch,)``: all ``c_j(theta) <= 0``."""
        return (self._checked(theta) <= 0).all(dim=-1)

    def _value_and_jacobian(
        self, context: GuidanceContext, x_hat: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``c`` at ``theta(x_hat)`` ``(batch, m)`` and its Jacobian with respect
        to the standardised ``x_hat`` ``(batch, m, d)``."""
        with torch.enable_grad():
            x = x_hat.detach().requires_grad_(True)
            c = self._checked(context.theta(x))
            rows = []
            for j in range(c.shape[1]):
                (grad,) = torch.autograd.grad(
                    c[:, j].sum(), x, retain_graph=True, allow_unused=True
                )
                rows.append(torch.zeros_like(x) if grad is None else grad)
        return c.detach(), torch.stack(rows, dim=1)

    def apply(self, denoise: DenoiseFn, context: GuidanceContext) -> DenoiseFn:
        jacobian = self.covariance == "jacobian"
        max_variance = context.prior_max_variance() if jacobian else None
        fit = shared_fit(
            self.covariance, denoise, context, self.covariance_samples, self
        )

        def fn(z: Tensor, t: Tensor) -> Tensor:
            x_hat, cov = denoising_covariance(
                denoise, z, t, self.covariance, max_variance, fit
            )
            c, slopes = self._value_and_jacobian(context, x_hat)
            return soft_indicator_moments(
                x_hat, cov, c, slopes, self.strength, self.tau
            )

        extra = z_dim_evals(context) if jacobian else 0
        evaluations = network_evaluations_per_call(denoise) * (1 + extra)
        return GuidedDenoiser(denoise, fn, evaluations)


def soft_indicator_moments(
    mean: Tensor,
    cov: Tensor,
    c: Tensor,
    slopes: Tensor,
    strength: float,
    tau: float,
) -> Tensor:
    r"""Mean of ``N(mean, cov)`` times ``prod_j (1 - w + w Phi(-c_j(theta) /
    tau))`` with each ``c_j`` linear (value ``c[:, j]`` at ``mean``, gradient
    ``slopes[:, j]``), by moment matching one factor after another (see
    :class:`ConstraintGuidance`).

    Args:
        mean: ``(batch, d)``.
        cov: ``(batch, d, d)``.
        c: ``(batch, m)`` constraint values at ``mean``.
        slopes: ``(batch, m, d)`` their gradients.
        strength: ``w`` in ``[0, 1]``.
        tau: softness of the edge.

    Returns:
        The matched mean ``(batch, d)``.
    """
    dtype = mean.dtype
    start = mean.double()
    m, C = start.clone(), cov.double()
    c, slopes = c.double(), slopes.double()
    log_w = math.log(strength) if strength > 0 else -math.inf
    log_rest = math.log1p(-strength) if strength < 1 else -math.inf
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    for j in range(c.shape[1]):
        a = slopes[:, j]
        Ca = (C @ a[:, :, None])[:, :, 0]
        s = torch.sqrt((a * Ca).sum(-1) + tau**2)
        u = -(c[:, j] + (a * (m - start)).sum(-1)) / s
        log_z = torch.logaddexp(
            torch.full_like(u, log_rest), log_w + torch.special.log_ndtr(u)
        )
        lam = torch.exp(log_w - 0.5 * u**2 - half_log_2pi - log_z)
        m = m - (lam / s)[:, None] * Ca
        shrink = lam * (lam + u) / s**2
        C = C - shrink[:, None, None] * Ca[:, :, None] * Ca[:, None, :]
    return m.to(dtype)
