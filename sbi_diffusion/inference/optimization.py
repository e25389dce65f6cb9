r"""The parts of an optimiser step that diffusion models need and sbi's trainers
lack.

- :func:`make_optimizer`: AdamW (Loshchilov & Hutter 2019).
- :func:`learning_rate_factor`: linear warm-up, then cosine decay (Loshchilov &
  Hutter 2017) when the number of steps is known.
- :class:`ExponentialMovingAverage` of the weights (Polyak averaging), used for
  sampling (Song & Ermon 2020; Karras et al. 2022).
- :class:`TrainingDivergedError`, raised when the loss is no longer finite.
"""

from __future__ import annotations

import math
from copy import deepcopy

import torch
from torch import Tensor, nn

__all__ = [
    "ExponentialMovingAverage",
    "learning_rate_factor",
    "make_optimizer",
    "TrainingDivergedError",
]


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
        """Move the average towards the current weights of ``model``.

        All parameters move in one multi-tensor ``lerp`` (one kernel launch per
        device and dtype instead of one per tensor). The tensor lists are
        gathered once per model: listing a module's parameters walks its whole
        tree, a large share of the update's cost for a small network
        (``benchmarks/training_speed/README.md``, "Per-step costs").
        """
        self.num_updates += 1
        beta = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        averages, current, average_buffers, buffers = self._tensors(model)
        if averages:
            torch._foreach_lerp_(averages, current, 1.0 - beta)
        for avg, cur in zip(average_buffers, buffers, strict=True):
            avg.copy_(cur)

    def _tensors(
        self, model: nn.Module
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """The average's and ``model``'s parameters and buffers, cached for the
        last model seen.

        Raises:
            ValueError: if the two models have different numbers of parameters.
        """
        cached = getattr(self, "_cached_tensors", None)
        if cached is not None and cached[0] is model:
            current = cached[1][1]
            first = next(model.parameters(), None)
            # a module moved with .to() may hold new parameter storage
            if first is None or first.data_ptr() == current[0].data_ptr():
                return cached[1]
        averages = list(self.model.parameters())
        current = [p.detach() for p in model.parameters()]
        if len(averages) != len(current):
            raise ValueError("The model's parameters do not match the average's.")
        tensors = (
            averages,
            current,
            list(self.model.buffers()),
            list(model.buffers()),
        )
        self._cached_tensors = (model, tensors)
        return tensors

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_cached_tensors", None)
        return state


def make_optimizer(
    parameters: list[nn.Parameter], learning_rate: float, weight_decay: float = 0.0
) -> torch.optim.AdamW:
    r"""AdamW (Loshchilov & Hutter 2019) with its fused kernel where available.

    The update is Adam's,
    ``w <- w - lr (m_hat / (sqrt(v_hat) + eps) + lambda w)``; the fused
    implementation does it for all parameters in one kernel (CPU and CUDA in
    PyTorch >= 2.4), the multi-tensor (``foreach``) one otherwise. Both avoid the
    per-tensor Python loop of the default path, a large share of a step's cost
    for the small networks of low-dimensional problems
    (``benchmarks/training_speed/README.md``, "Per-step costs").
    """
    parameters = list(parameters)
    try:
        return torch.optim.AdamW(
            parameters, lr=learning_rate, weight_decay=weight_decay, fused=True
        )
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(
            parameters, lr=learning_rate, weight_decay=weight_decay, foreach=True
        )


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
