r"""The joint model's likelihood inside sbi's MCMC (the NLE recipe).

``posterior_method="likelihood_mcmc"`` samples the unnormalised posterior
``sum_i log p(x_i | theta) + log p(theta)`` with the joint model's learned
likelihood (Papamakarios et al. 2019, "Sequential neural likelihood"), its
chains started from the joint model's own posterior by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from sbi.inference.posteriors import MCMCPosterior
from sbi.utils.sbiutils import mcmc_transform
from torch import Tensor
from torch.distributions import Distribution

from sbi_diffusion.inference.likelihood_potential import (
    DEFAULT_LOG_PROB_OPTIONS,
    LikelihoodPotential,
)
from sbi_diffusion.joint.posterior import JointLikelihood, JointPosterior

__all__ = [
    "MCMC_INITS",
    "JointLikelihoodPotential",
    "JointPosteriorProposal",
    "check_mcmc_init",
    "likelihood_mcmc_posterior",
]

MCMC_INITS = ("posterior", "prior")
"""Where the MCMC chains start: the joint model's posterior, or the prior."""


def check_mcmc_init(mcmc_init: str) -> str:
    """Return ``mcmc_init``, raising ``ValueError`` unless it is in
    :data:`MCMC_INITS`."""
    if mcmc_init not in MCMC_INITS:
        raise ValueError(
            f"Unknown mcmc_init {mcmc_init!r}; pass one of {list(MCMC_INITS)}."
        )
    return mcmc_init


JointLikelihoodPotential = LikelihoodPotential
"""The potential of the joint model's likelihood (:class:`LikelihoodPotential`)."""


class JointPosteriorProposal:
    r"""Starting points of MCMC chains drawn from the joint model's own posterior.

    sbi's ``MCMCPosterior`` starts its chains from its ``proposal``. With the
    prior as proposal and sbi's default ``init_strategy="resample"``, every
    chain costs 10,000 potential evaluations (sampling-importance-resampling
    from the prior), a large share of the work when every evaluation solves a
    probability-flow ODE (``benchmarks/joint/README.md``). This proposal instead
    draws each starting point from the amortised posterior ``q(theta | x_o)`` of
    the same joint model (sampled with its default sampler, at the observation
    currently set in the potential), which lies where the likelihood-based
    posterior has its mass; the chains then target ``p(x_o | theta) p(theta)``
    as before, and the warm-up removes what is left of the starting points'
    error.

    It stands in for the prior where sbi uses the proposal for something other
    than drawing: ``support``, ``mean`` and ``stddev`` (the MCMC transform) are
    the prior's. It has no tractable density, so ``init_strategy="sir"`` (which
    needs one) is refused; use ``"proposal"`` (the default with it) or
    ``"resample"``.

    Args:
        posterior: the joint model's diffusion posterior.
        potential: the MCMC potential whose ``x_o`` is the observation.
        prior: the prior.
    """

    def __init__(
        self,
        posterior: JointPosterior,
        potential: LikelihoodPotential,
        prior: Distribution,
    ):
        self.posterior = posterior
        self.potential = potential
        self.prior = prior

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        """Draw from ``q(theta | x_o)`` at the potential's observation(s)."""
        x_o = getattr(self.potential, "_x_o", None)
        if x_o is None:
            raise ValueError(
                "No observation set: sample the MCMC posterior with x=..., or call "
                "set_default_x first."
            )
        return self.posterior.sample(
            torch.Size(sample_shape), x=x_o, show_progress_bars=False
        )

    def log_prob(self, theta: Tensor) -> Tensor:
        """Not available: the proposal is a sampler without a cheap density."""
        raise ValueError(
            "The joint posterior proposal has no tractable density, so "
            "init_strategy='sir' cannot use it. Use init_strategy='proposal' or "
            "'resample', or build the posterior with mcmc_init='prior'."
        )

    @property
    def support(self) -> Any:
        """The prior's support."""
        return self.prior.support

    @property
    def mean(self) -> Tensor:
        """The prior's mean."""
        return self.prior.mean

    @property
    def stddev(self) -> Tensor:
        """The prior's standard deviation."""
        return self.prior.stddev

    def to(self, device: str | torch.device) -> JointPosteriorProposal:
        """Move the posterior and the prior (if it can move) to ``device``."""
        self.posterior.to(device)
        if hasattr(self.prior, "to"):
            self.prior.to(device)
        return self


def likelihood_mcmc_posterior(
    diffusion_posterior: JointPosterior,
    prior: Distribution,
    method: str,
    mcmc_parameters: Mapping[str, Any],
    log_prob_options: Mapping[str, Any] | None,
    mcmc_init: str,
    device: str | torch.device,
) -> MCMCPosterior:
    """sbi's ``MCMCPosterior`` on the learned likelihood of a joint model.

    Args:
        diffusion_posterior: the joint model's diffusion posterior (its model
            gives the likelihood; with ``mcmc_init="posterior"`` it also draws
            the chains' starting points).
        prior: the prior.
        method: sbi MCMC method (``"slice_np_vectorized"``, ...).
        mcmc_parameters: sbi MCMC settings (``num_chains``, ``thin``,
            ``warmup_steps``, ``init_strategy``, ...).
        log_prob_options: likelihood ODE options, over the default
            ``{"rtol": 1e-3, "atol": 1e-3}``.
        mcmc_init: ``"posterior"`` (:class:`JointPosteriorProposal`, with
            ``init_strategy="proposal"`` unless set) or ``"prior"``.
        device: device of the likelihood and the MCMC.
    """
    likelihood = JointLikelihood(
        diffusion_posterior.model, device=device, show_progress_bars=False
    )
    options = {**DEFAULT_LOG_PROB_OPTIONS, **(log_prob_options or {})}
    potential = JointLikelihoodPotential(
        likelihood, prior, device=device, log_prob_options=options
    )
    parameters = dict(mcmc_parameters)
    proposal: Any = prior
    if mcmc_init == "posterior":
        proposal = JointPosteriorProposal(diffusion_posterior, potential, prior)
        parameters.setdefault("init_strategy", "proposal")
        if parameters["init_strategy"] == "sir":
            proposal.log_prob(prior.sample((1,)))  # raises the clear error
    return MCMCPosterior(
        potential_fn=potential,
        proposal=proposal,
        theta_transform=mcmc_transform(prior, device=device),
        method=method,
        device=device,
        **parameters,
    )
