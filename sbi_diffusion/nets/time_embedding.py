r"""Embedding of the scalar noise level fed to the networks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalTimeEmbedding(nn.Module):
    r"""Random-frequency Fourier features of the time input
    (Tancik et al. 2020; used for diffusion by Song et al. 2021):

    .. math::
        e(c) = [\sin(2\pi w c), \cos(2\pi w c)], \qquad w \sim N(0, s^2),

    with fixed frequencies ``w``, followed by a two-layer MLP.

    Args:
        dim: output dimension.
        num_frequencies: number of frequencies ``w``.
        scale: standard deviation ``s`` of the frequencies.
    """

    def __init__(self, dim: int, num_frequencies: int = 32, scale: float = 4.0):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer(
            "frequencies", torch.randn(num_frequencies, generator=generator) * scale
        )
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_frequencies, dim), nn.SiLU(), nn.Linear(dim, dim)
        )

    def forward(self, time: Tensor) -> Tensor:
        """Embed ``time`` of shape ``(...)`` into ``(..., dim)``."""
        angles = 2 * math.pi * time[..., None] * self.frequencies
        return self.mlp(torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1))
