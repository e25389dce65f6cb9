r"""Guidance: score transforms applied at sampling time, without retraining.

A transform maps a ``DenoiseFn`` ``(z, t) -> x_hat`` to another one; since the
score and ``x_hat`` are related by Tweedie's formula
``s = (alpha x_hat - z) / sigma^2``, adding ``Delta s`` to the score is adding
``sigma^2 / alpha Delta s`` to ``x_hat``. Every sampler of
:mod:`sbi_diffusion.samplers` takes the result. Transforms work in the
estimator's standardised space ``z``; user functions of ``theta`` are evaluated
at ``theta = shift + scale * z`` and differentiated through it (chain rule by
automatic differentiation). Lists of transforms are applied in order
(:func:`apply_guidance`).

Tilting. A target ``p(theta | x) r(theta)`` has the denoising posterior
``p(theta_0 | z_t, x) r(theta_0)``. With the Gaussian approximation
``N(x_hat, C)`` of ``p(theta_0 | z_t, x)`` (``C`` from Tweedie's second-order
formula ``C = (sigma^2 / alpha) d x_hat / dz``, that of a Gaussian fitted to
samples of the target, ``C = (P + alpha^2 / sigma^2 I)^{-1}``
(:class:`GaussianFit`), or the isotropic ``C = sigma^2 / (alpha^2 + sigma^2) I``
of a unit-variance standardised prior)
and a second-order expansion of ``log r`` at ``x_hat`` (gradient ``g``, Hessian
``-R``),

.. math::
    \hat x_{new} = \hat x + (C^{-1} + R)^{-1} g,

which is exact when both factors are Gaussian. As ``t -> 0`` it adds
``grad_z log r`` to the score, and at large noise the correction vanishes with
``C`` (an annealing in time). :class:`PriorSwap` is such a tilt;
:class:`ConstraintGuidance` multiplies ``N(x_hat, C)`` by a soft indicator and
matches its moments (a sharp indicator has no useful second-order expansion);
:class:`ClassifierFreeGuidance` and :class:`LikelihoodTemperature` combine the
conditional and unconditional (prior) denoisers.

Modules: :mod:`~sbi_diffusion.guidance.base` (transforms, their context,
applying them), :mod:`~sbi_diffusion.guidance.classifier_free`,
:mod:`~sbi_diffusion.guidance.tilt` (the tilt and the denoising covariances),
:mod:`~sbi_diffusion.guidance.gaussian_fit`,
:mod:`~sbi_diffusion.guidance.prior_swap`,
:mod:`~sbi_diffusion.guidance.constraints` and
:mod:`~sbi_diffusion.guidance.temperature`.
"""

from sbi_diffusion.guidance.base import (
    GuidanceContext,
    GuidedDenoiser,
    ScoreTransform,
    apply_guidance,
    as_transform_list,
    check_sampler_accepts_guidance,
    z_dim_evals,
)
from sbi_diffusion.guidance.classifier_free import ClassifierFreeGuidance
from sbi_diffusion.guidance.constraints import (
    ConstraintGuidance,
    interval_constraint,
    linear_constraint,
    soft_indicator_moments,
)
from sbi_diffusion.guidance.gaussian_fit import GaussianFit
from sbi_diffusion.guidance.prior_swap import PriorSwap
from sbi_diffusion.guidance.temperature import LikelihoodTemperature

__all__ = [
    "GuidanceContext",
    "ScoreTransform",
    "GuidedDenoiser",
    "ClassifierFreeGuidance",
    "ConstraintGuidance",
    "PriorSwap",
    "LikelihoodTemperature",
    "GaussianFit",
    "interval_constraint",
    "linear_constraint",
    "soft_indicator_moments",
    "apply_guidance",
    "as_transform_list",
    "check_sampler_accepts_guidance",
    "z_dim_evals",
]
