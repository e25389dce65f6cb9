r"""Guidance at sampling time: score transforms applied to a posterior's denoiser.

A score transform changes the diffused score the sampler follows without
retraining, e.g. classifier-free guidance (Ho & Salimans 2022)

.. math::
    \nabla \log p^w_t(z \mid x) = w \nabla \log p_t(z \mid x)
    + (1 - w) \nabla \log p_t(z),

constraints, a changed prior or a tempered likelihood
(:mod:`sbi_diffusion.guidance`). :class:`GuidedSampling` keeps a posterior's
transforms and wraps its conditioned denoiser in them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from torch import Tensor

from sbi_diffusion.guidance import (
    GuidanceContext,
    ScoreTransform,
    apply_guidance,
    as_transform_list,
    check_sampler_accepts_guidance,
)
from sbi_diffusion.model import ConditionedDenoiser
from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.samplers import get_sampler

__all__ = ["GuidedSampling"]


class GuidedSampling:
    """Mixin of :class:`~sbi_diffusion.inference.posterior.DiffusionPosterior`:
    score transforms on its denoiser.

    Uses the posterior's ``estimator``, ``prior``, ``guidance`` (the list of
    transforms set by :meth:`with_guidance`) and ``sampler_options``.
    """

    def guidance_context(self, prior_score: str = "auto") -> GuidanceContext:
        """What score transforms need: z-scoring, estimator and prior."""
        return GuidanceContext.from_estimator(self.estimator, self.prior, prior_score)

    def with_guidance(
        self, *transforms: ScoreTransform | Sequence[ScoreTransform]
    ) -> GuidedSampling:
        """A copy of this posterior that applies ``transforms`` (after any it
        already has) in every ``sample`` call; chain calls to compose."""
        new = copy.copy(self)
        new.guidance = list(self.guidance) + as_transform_list(list(transforms))
        new.sampler_options = dict(self.sampler_options)
        return new

    def _guidance_list(self, guidance) -> list[ScoreTransform]:
        return list(self.guidance) + as_transform_list(guidance)

    def _guidance_for(
        self,
        sampler: str,
        guidance: ScoreTransform | Sequence[ScoreTransform] | None,
        composed: bool = False,
    ) -> tuple[list[ScoreTransform], GuidanceContext | None]:
        """The score transforms of a sampling call (after those of
        :meth:`with_guidance`) and their context; checks that ``sampler`` takes
        a transformed denoiser where there are transforms or the denoiser is
        ``composed`` from i.i.d. trials."""
        transforms = self._guidance_list(guidance)
        if transforms or composed:
            check_sampler_accepts_guidance(sampler, get_sampler(sampler))
        context = self.guidance_context() if transforms else None
        return transforms, context

    def _guided_factory(
        self,
        embeddings: Tensor,
        transforms: list[ScoreTransform],
        context: GuidanceContext | None,
    ) -> Callable[[Tensor], DenoiseFn]:
        """``make_denoise`` of :meth:`_draw` for one sample per row of the
        condition ``embeddings``: the conditioned denoiser of the rows, transformed
        by ``transforms``."""

        def make_denoise(rows: Tensor) -> DenoiseFn:
            base = ConditionedDenoiser(self.estimator, embeddings[rows])
            return apply_guidance(base, transforms, context) if transforms else base

        return make_denoise
