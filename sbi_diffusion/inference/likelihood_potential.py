r"""A learned likelihood inside sbi's samplers (the NLE recipe).

The unnormalised posterior of ``N`` i.i.d. observations under a learned
likelihood ``q(x | theta)`` (Papamakarios et al. 2019, "Sequential neural
likelihood"),

.. math::
    \log \tilde p(\theta \mid x_1, \dots, x_N)
    = \sum_{i=1}^{N} \log q(x_i \mid \theta) + \log p(\theta),

as an sbi potential: :class:`LikelihoodPotential` serves sbi's
``MCMCPosterior`` and ``ImportanceSamplingPosterior`` for the likelihood of
:class:`~sbi_diffusion.inference.likelihood.DiffusionNLE` and that of the joint
model (:class:`~sbi_diffusion.joint.posterior.JointLikelihood`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from sbi.inference.potentials.base_potential import BasePotential
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["DEFAULT_LOG_PROB_OPTIONS", "LearnedLikelihood", "LikelihoodPotential"]

DEFAULT_LOG_PROB_OPTIONS: dict[str, Any] = {"rtol": 1e-3, "atol": 1e-3}
"""Density options of a likelihood potential (adaptive solver, loose
tolerances: sbi's samplers evaluate the potential many times)."""


class LearnedLikelihood(Protocol):
    """What :class:`LikelihoodPotential` needs of a learned likelihood."""

    @property
    def theta_shape(self) -> torch.Size:
        """Shape of one parameter set."""

    @property
    def x_shape(self) -> torch.Size:
        """Shape of one observation."""

    def log_prob(self, x: Tensor, theta: Tensor, **kwargs: Any) -> Tensor:
        """``log q(x_b | theta_b)`` of ``B`` pairs, shape ``(B,)``."""


class LikelihoodPotential(BasePotential):
    r"""Unnormalised posterior ``sum_i log q(x_i | theta) + log p(theta)`` with a
    learned likelihood, for sbi's MCMC and importance samplers (the NLE recipe,
    Papamakarios et al. 2019).

    The observations ``x_o`` ``(N, *x_shape)`` are i.i.d.; every ``(theta,
    x_i)`` pair goes through one batched probability-flow ODE. The density has
    no gradient (ODE solve), so use gradient-free samplers (slice sampling),
    not HMC/NUTS.

    Args:
        likelihood: the learned likelihood.
        prior: the prior.
        x_o: observations, or None (set later with ``set_x``).
        device: device.
        log_prob_options: options of the likelihood's ``log_prob`` (e.g.
            ``{"rtol": 1e-3, "atol": 1e-3}``).
    """

    def __init__(
        self,
        likelihood: LearnedLikelihood,
        prior: Distribution,
        x_o: Tensor | None = None,
        device: str | torch.device = "cpu",
        log_prob_options: Mapping[str, Any] | None = None,
    ):
        self.likelihood = likelihood
        self.log_prob_options = dict(log_prob_options or {})
        super().__init__(prior, x_o, device=device)

    def set_x(self, x_o: Tensor | None, x_is_iid: bool | None = True, **kwargs):
        """Set the (i.i.d.) observations."""
        super().set_x(x_o, x_is_iid=x_is_iid)

    def __call__(self, theta: Tensor, track_gradients: bool = True) -> Tensor:
        theta = torch.as_tensor(theta, dtype=torch.float32).to(self.device)
        theta = theta.reshape(-1, *self.likelihood.theta_shape)
        x_o = self.x_o.reshape(-1, *self.likelihood.x_shape)
        num_theta, num_x = theta.shape[0], x_o.shape[0]
        thetas = theta.repeat_interleave(num_x, dim=0)
        xs = x_o.repeat(num_theta, *([1] * (x_o.dim() - 1)))
        log_lik = self.likelihood.log_prob(xs, theta=thetas, **self.log_prob_options)
        log_lik = log_lik.reshape(num_theta, num_x).sum(1)
        return log_lik + self.prior.log_prob(theta)
