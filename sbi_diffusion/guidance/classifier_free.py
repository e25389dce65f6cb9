"""Classifier-free guidance (Ho & Salimans 2022)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbi_diffusion.guidance.base import GuidanceContext, GuidedDenoiser, ScoreTransform
from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.samplers import network_evaluations_per_call

__all__ = ["ClassifierFreeGuidance"]


class ClassifierFreeGuidance(ScoreTransform):
    r"""Classifier-free guidance (Ho & Salimans 2022):

    .. math::
        s_w = s(z, t \mid \varnothing) + w\,\big(s(z, t \mid x)
        - s(z, t \mid \varnothing)\big), \qquad
        \hat x_w = \hat x_\varnothing + w (\hat x_x - \hat x_\varnothing),

    the diffused version of ``p(theta) p(x | theta)^w``. ``w = 1`` is the
    posterior, ``w = 0`` the prior. Needs a model trained with condition dropout
    and must act on the conditional denoiser (first in a list of transforms): a
    ``DenoiseFn`` with the trained ``denoiser`` and the condition's ``embedding``
    (as :class:`~sbi_diffusion.model.ConditionedDenoiser` has).

    Args:
        scale: the guidance scale ``w``.
    """

    name = "cfg"

    def __init__(self, scale: float):
        if not math.isfinite(float(scale)):
            raise ValueError(f"guidance scale must be finite, got {scale!r}.")
        self.scale = float(scale)

    def apply(self, denoise: DenoiseFn, context: GuidanceContext) -> DenoiseFn:
        inner = getattr(denoise, "denoiser", None)
        embedding = getattr(denoise, "embedding", None)
        if inner is None or embedding is None:
            raise ValueError(
                "Classifier-free guidance acts on the conditional denoiser of a "
                "trained model (posterior.denoiser_for(x)); put it first in the "
                "list of transforms, and use LikelihoodTemperature for i.i.d. "
                "compositions."
            )
        null = inner.null_condition(1)  # clear error without condition dropout
        w = self.scale

        def fn(z: Tensor, t: Tensor) -> Tensor:
            b = z.shape[0]
            emb = embedding.expand(b, -1)
            both = inner.denoise_embedded(
                torch.cat([z, z]),
                torch.cat([emb, null.expand(b, -1)]),
                torch.cat([t, t]),
            )
            x_cond, x_null = both[:b], both[b:]
            return x_null + w * (x_cond - x_null)

        return GuidedDenoiser(denoise, fn, 2 * network_evaluations_per_call(denoise))
