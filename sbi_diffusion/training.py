r"""Training utilities that diffusion models need and sbi's trainers lack.

- :class:`ExponentialMovingAverage` of the weights (Polyak averaging), used for
  sampling (Song & Ermon 2020; Karras et al. 2022).
- :func:`learning_rate_factor`: linear warm-up, then cosine decay (Loshchilov &
  Hutter 2017) when the number of epochs is known.
"""

from __future__ import annotations

import math
from copy import deepcopy

import torch
from torch import nn

__all__ = ["ExponentialMovingAverage", "learning_rate_factor", "TrainingDivergedError"]


class TrainingDivergedError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


class ExponentialMovingAverage:
    r"""Exponential moving average of a model's parameters.

    .. math::
        \bar w \leftarrow \beta_n \bar w + (1 - \beta_n) w, \qquad
        \beta_n = \min\left(\beta, \frac{1 + n}{10 + n}\right),

    where the warm-up of ``beta_n`` (Tensorflow's ``num_updates`` rule) keeps the
    average from being dominated by the initial weights.

    Args:
        model: the trained model; a deep copy holds the average.
        decay: ``beta``; 0 disables averaging (the copy follows the model).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}.")
        self.decay = decay
        self.model = deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards the current weights of ``model``."""
        self.num_updates += 1
        beta = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for avg, cur in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(cur.detach(), 1.0 - beta)
        for avg, cur in zip(self.model.buffers(), model.buffers(), strict=True):
            avg.copy_(cur)


def learning_rate_factor(
    step: int,
    warmup_steps: int,
    total_steps: int | None,
    final_factor: float = 0.05,
) -> float:
    r"""Multiplier of the base learning rate at optimiser step ``step``.

    Linear warm-up over ``warmup_steps``; then, if ``total_steps`` is known,
    cosine decay to ``final_factor``:
    ``f + (1 - f) (1 + cos(pi s)) / 2`` with ``s`` the fraction of decay steps
    done. Constant 1 after warm-up when ``total_steps`` is None.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps is None or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))
