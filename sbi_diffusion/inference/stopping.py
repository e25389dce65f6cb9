r"""Early-stopping rules of the vector-field trainers.

After each validation the training loop hands the per-row validation losses to
a :class:`StoppingRule`, which keeps the weights it will return, counts the
optimiser steps since the last improvement and says when to stop:

- :class:`PatienceStopping` keeps the weights with the lowest mean validation
  loss and stops after ``patience`` optimiser steps without a lower one
  (:func:`~sbi_diffusion.inference.budget.patience_steps`);
- :class:`NoiseBandStopping` (``train(noise_bands=K)``, ``K > 1``) also keeps,
  for each of ``K`` bands of noise levels, the weights with the lowest loss on
  that band (:class:`~sbi_diffusion.inference.noise_bands.NoiseBandSelection`),
  counts an improvement on any band as an improvement, and returns the banded
  combination of those weights.

:func:`make_stopping_rule` picks the rule for ``noise_bands``, and
:func:`stopping_rule_for_call` decides what a new ``train()`` call keeps of the
previous one.
"""

from __future__ import annotations

import math
from copy import deepcopy
from typing import Protocol

from torch import Tensor, nn

from sbi_diffusion.inference.noise_bands import NoiseBandSelection

__all__ = [
    "NoiseBandStopping",
    "PatienceStopping",
    "StoppingRule",
    "make_stopping_rule",
    "stopping_rule_for_call",
]


class StoppingRule(Protocol):
    """What the training loop asks of an early-stopping rule.

    Attributes:
        num_bands: bands of noise levels with their own best weights (1: one
            set of weights for all levels).
        best_loss: lowest mean validation loss so far.
        steps_since_improvement: optimiser steps since the last improvement.
    """

    num_bands: int
    best_loss: float
    steps_since_improvement: int

    def carry_over(self, previous: StoppingRule | None) -> None:
        """Go on with the lowest loss and step count of ``previous`` (afresh if
        None)."""

    def begin(self, model: nn.Module, patience: int) -> None:
        """Start a ``train()`` call: ``model``'s weights are the fallback, and
        ``patience`` optimiser steps without improvement end training."""

    def update(self, row_losses: Tensor, model: nn.Module, steps: int) -> bool:
        """Take the validation losses ``row_losses`` of ``model`` after ``steps``
        optimiser steps since the last validation; True if it improved."""

    def should_stop(self) -> bool:
        """True once the patience has run out."""

    def estimator(self, model: nn.Module) -> nn.Module:
        """The estimator training returns, from the kept weights; ``model`` (the
        one validated) receives the weights with the lowest mean loss."""


class PatienceStopping:
    """Keep the weights with the lowest mean validation loss; stop after
    ``patience`` optimiser steps without a lower one.

    The lowest loss and the steps since it carry over to a resumed ``train()``
    call; the fallback weights and the patience are set by each call
    (:meth:`begin`).
    """

    num_bands = 1

    def __init__(self) -> None:
        self.best_loss = math.inf
        self.steps_since_improvement = 0
        self.patience = 0
        self.best_state: dict[str, Tensor] | None = None

    def carry_over(self, previous: StoppingRule | None) -> None:
        """Continue the count of ``previous`` (a fresh start if None)."""
        if previous is None:
            self.best_loss, self.steps_since_improvement = math.inf, 0
        else:
            self.best_loss = previous.best_loss
            self.steps_since_improvement = previous.steps_since_improvement

    def begin(self, model: nn.Module, patience: int) -> None:
        self.patience = patience
        self.best_state = deepcopy(model.state_dict())

    def update(self, row_losses: Tensor, model: nn.Module, steps: int) -> bool:
        improved = self._keep_if_better(row_losses, model)
        if improved:
            self.steps_since_improvement = 0
        else:
            self.steps_since_improvement += steps
        return improved

    def _keep_if_better(self, row_losses: Tensor, model: nn.Module) -> bool:
        """Keep ``model``'s weights if its mean loss is the lowest so far."""
        loss = row_losses.mean().item()
        if loss < self.best_loss:
            self.best_loss = loss
            self.best_state = deepcopy(model.state_dict())
            return True
        return False

    def should_stop(self) -> bool:
        return self.steps_since_improvement >= self.patience

    def estimator(self, model: nn.Module) -> nn.Module:
        model.load_state_dict(self.best_state)
        return model


class NoiseBandStopping(PatienceStopping):
    r"""Early stopping per band of noise levels (``train(noise_bands=K)``).

    Keeps, besides the weights with the lowest mean loss, those with the lowest
    loss on each band (:class:`NoiseBandSelection`); a lower loss on any band
    restarts the patience, and :meth:`estimator` answers each noise level with
    its band's weights (a
    :class:`~sbi_diffusion.inference.noise_bands.NoiseBandNet`).

    Args:
        selection: the per-band selection, kept across resumed calls.
    """

    def __init__(self, selection: NoiseBandSelection):
        super().__init__()
        self.selection = selection

    @property
    def num_bands(self) -> int:  # type: ignore[override]
        return self.selection.num_bands

    def _keep_if_better(self, row_losses: Tensor, model: nn.Module) -> bool:
        improved = super()._keep_if_better(row_losses, model)
        return self.selection.update(row_losses, model) or improved

    def estimator(self, model: nn.Module) -> nn.Module:
        return self.selection.build(super().estimator(model))


def make_stopping_rule(
    noise_bands: int, model: nn.Module, validation_times: Tensor
) -> StoppingRule:
    """:class:`PatienceStopping` for ``noise_bands=1``, else
    :class:`NoiseBandStopping` over the bands of ``validation_times``.

    Raises:
        ValueError: for ``noise_bands`` that is not a positive integer, and the
            errors of :class:`NoiseBandSelection`.
    """
    if not isinstance(noise_bands, bool) and noise_bands == 1:
        return PatienceStopping()
    return NoiseBandStopping(NoiseBandSelection(model, validation_times, noise_bands))


def stopping_rule_for_call(
    previous: StoppingRule | None,
    noise_bands: int,
    model: nn.Module,
    validation_times: Tensor,
    resume_training: bool,
    restarted: bool,
) -> StoppingRule:
    """The stopping rule of a ``train()`` call.

    A resumed call with the same ``noise_bands`` keeps the ``previous`` rule
    (and the weights it kept); otherwise a new rule (:func:`make_stopping_rule`)
    goes on with the previous rule's lowest loss and step count. A call that
    restarted training starts the count afresh.
    """
    same_bands = previous is not None and previous.num_bands == noise_bands
    if resume_training and same_bands:
        rule = previous
    else:
        rule = make_stopping_rule(noise_bands, model, validation_times)
    if rule is not previous or restarted:
        rule.carry_over(None if restarted else previous)
    return rule
