r"""Closed forms for Gaussian targets: the exact denoiser and linear-Gaussian
posteriors.

For data ``x ~ N(m, S)`` and ``z_t = alpha x + sigma eps`` the posterior mean is

.. math::
    E[x \mid z_t] = m + \alpha S (\alpha^2 S + \sigma^2 I)^{-1} (z_t - \alpha m),

and ``z_t ~ N(alpha m, alpha^2 S + sigma^2 I)``. For a Gaussian prior
``theta ~ N(m_0, S_0)`` and ``N`` i.i.d. observations ``x_i ~ N(A theta + b, L)``
the posterior is Gaussian with

.. math::
    S_N^{-1} = S_0^{-1} + N A^T L^{-1} A, \qquad
    m_N = S_N \left(S_0^{-1} m_0 + A^T L^{-1} \textstyle\sum_i (x_i - b)\right).

These give exact references for samplers, densities, composition and guidance.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

from sbi_diffusion.path.schedules import Schedule

__all__ = ["GaussianDenoiser", "linear_gaussian_posterior", "gaussian_marginal"]


class GaussianDenoiser(nn.Module):
    """Exact ``x_hat(z, t)`` for data ``N(mean, cov)``; a ``DenoiseFn``.

    Args:
        schedule: the Gaussian path.
        mean: ``(dim,)`` data mean.
        cov: ``(dim, dim)`` data covariance.
    """

    def __init__(self, schedule: Schedule, mean: Tensor, cov: Tensor):
        super().__init__()
        self.schedule = schedule
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("cov", torch.as_tensor(cov, dtype=torch.float64))

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=z.device)
        t = t.expand(z.shape[0]) if t.dim() == 0 else t
        alpha = self.schedule.alpha(t)[:, None, None]
        sigma = self.schedule.sigma(t)[:, None, None]
        eye = torch.eye(self.mean.shape[0], dtype=torch.float64, device=z.device)
        marginal_cov = alpha**2 * self.cov + sigma**2 * eye
        gain = alpha * self.cov @ torch.linalg.inv(marginal_cov)
        resid = z.double() - alpha[:, :, 0] * self.mean
        x_hat = self.mean + (gain @ resid[:, :, None])[:, :, 0]
        return x_hat.to(z.dtype)


def gaussian_marginal(
    schedule: Schedule, mean: Tensor, cov: Tensor, t: float
) -> MultivariateNormal:
    """The distribution of ``z_t`` for data ``N(mean, cov)``."""
    tt = torch.tensor([t], dtype=torch.float64)
    alpha, sigma = schedule.alpha(tt)[0], schedule.sigma(tt)[0]
    cov = torch.as_tensor(cov, dtype=torch.float64)
    eye = torch.eye(cov.shape[0], dtype=torch.float64)
    return MultivariateNormal(
        alpha * torch.as_tensor(mean, dtype=torch.float64),
        alpha**2 * cov + sigma**2 * eye,
    )


def linear_gaussian_posterior(
    prior_mean: Tensor,
    prior_cov: Tensor,
    matrix: Tensor,
    noise_cov: Tensor,
    x: Tensor,
    shift: Tensor | None = None,
    likelihood_power: float = 1.0,
) -> tuple[Tensor, Tensor]:
    r"""Posterior mean and covariance for ``theta ~ N(m_0, S_0)`` and i.i.d.
    ``x_i ~ N(A theta + b, L)``.

    Args:
        prior_mean: ``(d,)``.
        prior_cov: ``(d, d)``.
        matrix: ``A``, ``(k, d)``.
        noise_cov: ``L``, ``(k, k)``.
        x: observations ``(N, k)`` (or ``(k,)`` for one).
        shift: ``b`` ``(k,)``; zero if None.
        likelihood_power: tempering ``p(x | theta)^gamma`` of the likelihood.

    Returns:
        ``(mean (d,), cov (d, d))`` in float64.
    """
    f64 = torch.float64
    m0, s0 = prior_mean.to(f64), prior_cov.to(f64)
    a, noise = matrix.to(f64), noise_cov.to(f64)
    x = torch.atleast_2d(x.to(f64))
    b = torch.zeros(a.shape[0], dtype=f64) if shift is None else shift.to(f64)
    noise_inv = torch.linalg.inv(noise)
    precision = torch.linalg.inv(s0) + likelihood_power * x.shape[0] * (
        a.T @ noise_inv @ a
    )
    cov = torch.linalg.inv(precision)
    mean = cov @ (
        torch.linalg.inv(s0) @ m0 + likelihood_power * a.T @ noise_inv @ (x - b).sum(0)
    )
    return mean, 0.5 * (cov + cov.T)
