r"""Posteriors for many i.i.d. trials composed from a single-trial score model.

For ``N`` i.i.d. observations ``x_1, ..., x_N`` Bayes' rule gives

.. math::
    p(\theta \mid x_{1:N}) \propto p(\theta)^{1 - N}
    \prod_{i=1}^N p(\theta \mid x_i),

so a model of the single-trial posterior ``p(theta | x)`` and the prior define
the ``N``-trial posterior without retraining (Geffner et al. 2023,
"Compositional Score Modeling for Simulation-Based Inference"). The diffused
(noisy) ``N``-trial posterior does not factorise like this, and the methods here
differ in how they correct for it. All of them work on denoisers: every factor
``k`` (the ``N`` single-trial posteriors and the prior, with weights
``w_k = 1`` and ``w_prior = 1 - N``) gives ``x_hat_k(z, t) = E_k[theta_0 | z_t]``
in standardised space, and with denoising precisions
``P_k = Cov_k[theta_0 | z_t]^{-1}`` the composed estimate is

.. math::
    \Lambda = \sum_k w_k P_k, \qquad
    \hat x(z, t) = \Lambda^{-1} \sum_k w_k P_k \hat x_k(z, t).

Because ``sum_k w_k = 1`` the corresponding score is
``Lambda^{-1} sum_k w_k P_k s_k`` (Tweedie: ``s_k = (alpha x_hat_k - z) /
sigma^2``), the GAUSS/JAC score of Linhart et al. 2024 ("Diffusion posterior
sampling for simulation-based inference in tall data settings", Eq. 12). It is
exact whenever the denoising posteriors ``p_k(theta_0 | z_t)`` are Gaussian,
e.g. for a Gaussian prior and a linear-Gaussian simulator. Methods
(``IID_METHODS``):

``factorized``
    ``P_k = I``: ``x_hat = sum_i x_hat_i + (1 - N) x_hat_prior``, the sum of
    diffused scores (Geffner et al. 2023, Eq. 7, with the diffused prior score).
``factorized_bridge``
    Geffner et al. 2023, Sec. 3.2: the diffused prior score replaced by the
    undiffused one, annealed in time (a bridge of densities),
    ``s = sum_i s_i + (1 - N) lambda(t) grad log p(z)``,
    ``lambda(t) = (t_max - t) / (t_max - t_min)``; meant for stochastic samplers
    with a Langevin corrector (annealed Langevin dynamics).
``gauss``
    GAUSS (Linhart et al. 2024): ``P_i = Sigma_i^{-1} + alpha^2 / sigma^2 I``
    with ``Sigma_i`` the covariance of samples of each single-trial posterior
    (drawn once from the model; its inverse debiased,
    :func:`unbiased_precision_factor`, and at least the prior's precision,
    :func:`at_least_prior_precision`) and ``P_prior = S^{-1} + alpha^2 / sigma^2
    I`` that of the prior's moment-matched Gaussian ``N(m, S)``, the same
    approximation as the trials' (``prior_precision="gaussian"``, GAUSS's
    default; ``"exact"`` takes the exact denoising precision of an analytic
    prior).
``jac``
    JAC (Linhart et al. 2024): ``Cov_k[theta_0 | z_t] = (sigma^2 / alpha)
    d x_hat_k / dz`` (Tweedie's second-order formula) from the Jacobian of the
    network, computed per trial (mini-batched over trials), its eigenvalues
    bounded by those of a target no wider than the prior
    (:func:`precision_from_jacobian`); ``P_prior`` is the analytic prior's exact
    denoising precision by default (``prior_precision="exact"``), since the
    Jacobian precisions change with ``z`` as it does.

The prior's diffused score (:func:`diffused_prior`) is analytic for Gaussian
priors (``N(alpha m, alpha^2 S + sigma^2 I)`` in standardised space) and for
box-uniform priors (a product of truncated normals); otherwise it is the
network's unconditional score (trained with condition dropout) or a
moment-matched Gaussian approximation of the prior.

Mini-batches of trials (``trial_batch_size``) and a damping of the composed
correction at high noise (:mod:`~sbi_diffusion.composition.damping`) serve
compositions over many groups (Arruda et al. 2025;
:mod:`sbi_diffusion.hierarchical`), as does GAUSS's ``noise_floor``: where the
noise is narrower than the ``N``-trial posterior, ``P_i ~ alpha^2 / sigma^2 I``
and the composed estimate is about the sum of the ``N`` trials' estimates, so
the network's errors there add up ``N`` times; below the floor each trial's
estimate is taken from the network at the floor through a Gaussian of the
trial's covariance (:meth:`IIDComposedDenoiser._floored`).

Modules: :mod:`~sbi_diffusion.composition.iid` (the composed denoiser),
:mod:`~sbi_diffusion.composition.diffused_prior` (the prior as a denoiser),
:mod:`~sbi_diffusion.composition.moments` (denoising precisions from Jacobians
and from samples), :mod:`~sbi_diffusion.composition.linalg` (symmetric
eigen-decompositions and clamped inverses),
:mod:`~sbi_diffusion.composition.bridge` (the sampler the bridge needs) and
:mod:`~sbi_diffusion.composition.path` (noise levels of the path).
"""

from sbi_diffusion.composition.bridge import warn_if_bridge_without_noise
from sbi_diffusion.composition.damping import SNRDamping
from sbi_diffusion.composition.diffused_prior import (
    PRIOR_SCORES,
    BoxDiffusedPrior,
    DiffusedPrior,
    GaussianDiffusedPrior,
    NetworkDiffusedPrior,
    diffused_prior,
)
from sbi_diffusion.composition.iid import (
    DEFAULT_PRIOR_PRECISION,
    IID_METHODS,
    PRIOR_PRECISIONS,
    IIDComposedDenoiser,
)
from sbi_diffusion.composition.linalg import (
    clamp_eigenvalues,
    inverse_clamped,
    symmetric_eigh,
)
from sbi_diffusion.composition.moments import (
    TrialMoments,
    at_least_prior_precision,
    denoiser_jacobian,
    estimate_trial_moments,
    precision_from_jacobian,
    sample_on_fixed_grid,
    unbiased_precision_factor,
)

__all__ = [
    "BoxDiffusedPrior",
    "DEFAULT_PRIOR_PRECISION",
    "DiffusedPrior",
    "GaussianDiffusedPrior",
    "IIDComposedDenoiser",
    "IID_METHODS",
    "NetworkDiffusedPrior",
    "PRIOR_PRECISIONS",
    "PRIOR_SCORES",
    "SNRDamping",
    "TrialMoments",
    "at_least_prior_precision",
    "clamp_eigenvalues",
    "denoiser_jacobian",
    "diffused_prior",
    "estimate_trial_moments",
    "inverse_clamped",
    "precision_from_jacobian",
    "sample_on_fixed_grid",
    "symmetric_eigh",
    "unbiased_precision_factor",
    "warn_if_bridge_without_noise",
]
