r"""Masked joint denoisers: one diffusion model for every conditional.

Following the Simformer (Gloeckler et al. 2024, "All-in-one simulation-based
inference"), parameters ``theta`` and data ``x`` are stacked into one vector
``v = (theta, x)`` of ``D`` variables, and a *condition mask*
``m in {0, 1}^D`` says which variables are observed (``m_i = 1``: held fixed
at their clean value) and which are latent (``m_i = 0``: they diffuse along the
Gaussian path ``z_t = alpha(t) v + sigma(t) eps``). The network sees every
variable as a token and returns the denoised estimate of the latent block,

.. math::
    \hat v_{latent}(z_t, t \mid v_{obs})
    = c_{skip}(t) z_t + c_{out}(t) F\big(c_{in}(t) z_t,\, v_{obs},\, m,\,
    c_{noise}(t)\big),

so that one network gives ``E[v_latent | z_t, v_obs]`` for *any* split:
the posterior ``p(theta | x)`` (``m = (0, 1)``), the likelihood
``p(x | theta)`` (``m = (1, 0)``), the joint (``m = 0``), and conditionals such
as ``p(theta_2 | x, theta_1)``. Training draws ``m`` from a mixture
(:class:`MaskDistribution`) and minimises the denoising loss on latent entries
only (Simformer, Eq. 6).

Missing values (NaN) are latent variables whose clean value is unknown: in
training they enter the network at the largest noise level, ``t_max``, with a
pure-noise value (a token that carries no information about ``v``) and are
excluded from the loss; at inference an observed entry given as NaN is treated
the same way, which marginalises it out.

An optional *edge mask* (the dependency structure between variables) restricts
attention (Simformer, Sec. 3.3): variable ``i`` attends to ``j`` if either
depends directly on the other; observed variables do not attend to latent ones.

:class:`GaussianJointDenoiser` is the exact masked denoiser of a Gaussian joint
distribution, which tests every code path that uses a masked denoiser
independently of training.

The package, one concept per module:

- :mod:`~sbi_diffusion.joint.masks`: condition masks, edge (attention) masks
  and the training mask distribution;
- :mod:`~sbi_diffusion.joint.model`: the masked joint model's interface, the
  network-based denoiser and the exact Gaussian one;
- :mod:`~sbi_diffusion.joint.conditional`: one conditional as a denoiser
  (:class:`ConditionalView`);
- :mod:`~sbi_diffusion.joint.posterior`: the posterior, the likelihood and any
  conditional, all through the core posterior;
- :mod:`~sbi_diffusion.joint.likelihood_mcmc`: the learned likelihood in sbi's
  MCMC;
- :mod:`~sbi_diffusion.joint.trainer`: :class:`JointDiffusion`, the trainer.
"""

from sbi_diffusion.joint.conditional import ConditionalView, JointConditionalDenoiser
from sbi_diffusion.joint.likelihood_mcmc import (
    MCMC_INITS,
    JointLikelihoodPotential,
    JointPosteriorProposal,
)
from sbi_diffusion.joint.masks import (
    MASK_KINDS,
    MaskDistribution,
    attention_mask,
    check_condition_mask,
    check_conditional_mask,
    check_edge_mask,
    join_flat,
)
from sbi_diffusion.joint.model import (
    GaussianJointDenoiser,
    JointDenoiser,
    MaskedJointModel,
)
from sbi_diffusion.joint.posterior import (
    ConditionalPosterior,
    JointConditional,
    JointLikelihood,
    JointPosterior,
)
from sbi_diffusion.joint.trainer import POSTERIOR_METHODS, JointDiffusion

__all__ = [
    "MASK_KINDS",
    "MCMC_INITS",
    "POSTERIOR_METHODS",
    "ConditionalPosterior",
    "ConditionalView",
    "GaussianJointDenoiser",
    "JointConditional",
    "JointConditionalDenoiser",
    "JointDenoiser",
    "JointDiffusion",
    "JointLikelihood",
    "JointLikelihoodPotential",
    "JointPosterior",
    "JointPosteriorProposal",
    "MaskDistribution",
    "MaskedJointModel",
    "attention_mask",
    "check_condition_mask",
    "check_conditional_mask",
    "check_edge_mask",
    "join_flat",
]
