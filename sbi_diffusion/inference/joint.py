"""Deprecated: the joint model's trainer and posteriors moved to
:mod:`sbi_diffusion.joint` (``sbi_diffusion.joint.trainer``,
``sbi_diffusion.joint.posterior``, ``sbi_diffusion.joint.likelihood_mcmc``).

This module re-exports them for one release; import from
:mod:`sbi_diffusion.joint` instead.
"""

import warnings

from sbi_diffusion.joint import (
    MCMC_INITS,
    POSTERIOR_METHODS,
    JointConditional,
    JointDiffusion,
    JointLikelihood,
    JointLikelihoodPotential,
    JointPosterior,
    JointPosteriorProposal,
)

__all__ = [
    "JointDiffusion",
    "JointPosterior",
    "JointConditional",
    "JointLikelihood",
    "JointLikelihoodPotential",
    "JointPosteriorProposal",
    "POSTERIOR_METHODS",
    "MCMC_INITS",
]

warnings.warn(
    "sbi_diffusion.inference.joint is deprecated; import JointDiffusion and the "
    "joint posteriors from sbi_diffusion.joint instead.",
    DeprecationWarning,
    stacklevel=2,
)
