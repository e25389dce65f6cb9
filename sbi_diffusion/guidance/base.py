"""The frame of guidance: score transforms, their context, and applying them.

A :class:`ScoreTransform` maps a ``DenoiseFn`` ``(z, t) -> x_hat`` to another
one (a :class:`GuidedDenoiser`); :func:`apply_guidance` applies a list of them
in order. The :class:`GuidanceContext` carries what transforms need besides the
``DenoiseFn``: the z-scoring of ``theta``, the trained estimator and its prior.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.distributions.transforms import Transform, identity_transform

from sbi_diffusion.composition import DiffusedPrior, diffused_prior
from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.path.schedules import Schedule
from sbi_diffusion.path.vector_field import as_time

__all__ = [
    "GuidanceContext",
    "GuidedDenoiser",
    "ScoreTransform",
    "apply_guidance",
    "as_transform_list",
    "check_sampler_accepts_guidance",
    "z_dim_evals",
]


@dataclass
class GuidanceContext:
    """What transforms may need besides the ``DenoiseFn``.

    Attributes:
        shift, scale: z-scoring of ``theta`` (``theta = shift + scale z``), ``(d,)``;
            with a change of variables ``T``, of ``u = T(theta)``.
        estimator: the trained denoiser (unconditional score, prior moments):
            what :func:`~sbi_diffusion.composition.diffused_prior` uses.
        prior: the training prior.
        prior_score: which diffused prior score to use (see
            :func:`sbi_diffusion.composition.diffused_prior`).
        transform: the estimator's ``theta_transform`` ``T`` (identity if none):
            ``theta = T^{-1}(shift + scale z)``.
        fits: precisions of :class:`GaussianFit` by transform and condition, so
            that the chunks and rejection rounds of one sampling call (one
            context each) share one fit per observation.
        setup_evaluations: network evaluations spent on those fits, in total.
    """

    shift: Tensor
    scale: Tensor
    estimator: Any = None
    prior: Any = None
    prior_score: str = "auto"
    transform: Transform = field(default_factory=lambda: identity_transform)
    _diffused_prior: DiffusedPrior | None = field(default=None, repr=False)
    fits: dict = field(default_factory=dict, repr=False)
    setup_evaluations: float = 0.0

    @classmethod
    def from_estimator(
        cls, estimator: Any, prior: Any = None, prior_score: str = "auto"
    ) -> GuidanceContext:
        """The context of ``estimator`` (its ``theta_dim`` and z-scoring
        ``theta_shift``/``theta_scale`` and ``theta_transform``), with its
        training ``prior``."""
        d = int(estimator.theta_dim)
        shift = estimator.theta_shift.reshape(-1).detach().expand(d).clone()
        scale = estimator.theta_scale.reshape(-1).detach().expand(d).clone()
        transform = getattr(estimator, "theta_transform", identity_transform)
        return cls(shift, scale, estimator, prior, prior_score, transform=transform)

    def theta(self, z: Tensor) -> Tensor:
        """``theta = T^{-1}(shift + scale z)`` (differentiable)."""
        return self.transform.inv(self.shift.to(z) + self.scale.to(z) * z)

    def prior_max_variance(self) -> float | None:
        """Largest variance of the standardised training prior (None if unknown)."""
        if self.estimator is None or self.prior is None:
            return None
        try:
            cov = self.diffused_prior().cov
        except ValueError:
            return None
        return float(torch.linalg.eigvalsh(cov.double()).max())

    def diffused_prior(self) -> DiffusedPrior:
        """The training prior as a denoiser (built once)."""
        if self._diffused_prior is None:
            if self.estimator is None:
                raise ValueError("This transform needs the estimator and its prior.")
            self._diffused_prior = diffused_prior(
                self.estimator, self.prior, self.prior_score
            )
        return self._diffused_prior


class GuidedDenoiser:
    """A ``DenoiseFn`` built by a transform from ``base``.

    Attributes:
        schedule: the schedule of ``base``.
        evaluations_per_call: network evaluations per call (NFE reporting).
    """

    def __init__(
        self,
        base: DenoiseFn,
        fn: Callable[[Tensor, Tensor], Tensor],
        evaluations_per_call: float,
    ):
        self.base = base
        self.schedule: Schedule = base.schedule
        self._fn = fn
        self.evaluations_per_call = evaluations_per_call

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        return self._fn(z, as_time(t, z))


class ScoreTransform:
    """Base class: ``transform.apply(denoise, context) -> DenoiseFn``."""

    name = "transform"

    def apply(self, denoise: DenoiseFn, context: GuidanceContext) -> DenoiseFn:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}={v!r}" for k, v in vars(self).items() if not callable(v)
        )
        return f"{type(self).__name__}({fields})"


def z_dim_evals(context: GuidanceContext) -> int:
    """Backward passes of a Jacobian (one per dimension)."""
    return int(context.shift.numel())


def as_transform_list(guidance: Any) -> list[ScoreTransform]:
    """``guidance`` (None, a score transform or a sequence of them) as a list.

    Raises:
        ValueError: for anything else, e.g. a name such as ``"cfg"``.
    """
    if guidance is None:
        return []
    if isinstance(guidance, ScoreTransform):
        return [guidance]
    if isinstance(guidance, Sequence) and not isinstance(guidance, str):
        items = []
        for item in guidance:
            nested = isinstance(item, Sequence) and not isinstance(item, str)
            items.extend(as_transform_list(item) if nested else [item])
        for item in items:
            if not isinstance(item, ScoreTransform):
                raise ValueError(
                    f"guidance items must be ScoreTransform instances "
                    f"(ClassifierFreeGuidance, ConstraintGuidance, PriorSwap, "
                    f"LikelihoodTemperature), got {type(item).__name__}."
                )
        return items
    raise ValueError(
        "guidance must be a ScoreTransform or a list of them (e.g. "
        f"ClassifierFreeGuidance(2.0)), got {guidance!r}."
    )


def apply_guidance(
    denoise: DenoiseFn,
    guidance: ScoreTransform | Sequence[ScoreTransform] | None,
    context: GuidanceContext,
) -> DenoiseFn:
    """Apply transforms in order: ``guidance[-1](...guidance[0](denoise))``."""
    for transform in as_transform_list(guidance):
        denoise = transform.apply(denoise, context)
    return denoise


def check_sampler_accepts_guidance(sampler: str, sampler_fn: Callable) -> None:
    """Raise if a sampler does not integrate a ``DenoiseFn`` (e.g. a one-step
    consistency sampler marked ``accepts_guidance = False``)."""
    if not getattr(sampler_fn, "accepts_guidance", True):
        raise ValueError(
            f"Sampler {sampler!r} cannot use score transforms (it does not "
            "integrate the model's score). Pick one of the score-based samplers: "
            "euler, heun, ddim, dpm++2m, euler_maruyama, adaptive_sde, dopri5."
        )
