r"""The training loop of the vector-field trainers, in named parts.

- :class:`OptimizerStep`: one AdamW step on the denoising loss with the
  scheduled learning rate (:class:`LearningRateSchedule`), gradient clipping and
  the EMA update; :meth:`OptimizerStep.run_epoch` runs one pass over the
  training set.
- :func:`check_finite`: the divergence check after each epoch.
- :class:`TrainingLoop`: epochs until the budget
  (:class:`~sbi_diffusion.inference.budget.TrainingBudget`) is spent or the
  stopping rule (:mod:`~sbi_diffusion.inference.stopping`) ends training, with
  the validation check (:meth:`TrainingLoop.validate`) at the end of the first
  epoch that completes ``validation_interval`` optimiser steps since the last
  one.

The validation loss is that of the EMA weights on a
:class:`~sbi_diffusion.inference.validation.ValidationSet` (fixed times and
noise).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sbi_diffusion.inference.budget import TrainingBudget
from sbi_diffusion.inference.optimization import (
    ExponentialMovingAverage,
    TrainingDivergedError,
    learning_rate_factor,
)
from sbi_diffusion.inference.stopping import StoppingRule
from sbi_diffusion.inference.validation import ValidationSet

__all__ = [
    "LearningRateSchedule",
    "OptimizerStep",
    "TrainingLoop",
    "TrainingProgress",
    "check_finite",
    "end_of_training_message",
]


@dataclass
class TrainingProgress:
    """Counters a trainer keeps across ``train()`` calls.

    Attributes:
        steps_done: optimiser steps taken on the current network.
        schedule_start: the step at which the learning-rate schedule of the
            current call started (a new call, say a new round, runs its own
            warm-up and decay).
        epochs: epochs since training last restarted (a resumed call goes on
            counting).
    """

    steps_done: int = 0
    schedule_start: int = 0
    epochs: int = 0

    def restart(self) -> None:
        """Start a new schedule at the current step and count epochs from 0."""
        self.epochs = 0
        self.schedule_start = self.steps_done


@dataclass(frozen=True)
class LearningRateSchedule:
    """The learning rate at each optimiser step: ``base`` times
    :func:`~sbi_diffusion.inference.optimization.learning_rate_factor` of the
    steps since ``start``.

    Attributes:
        base: the peak learning rate.
        warmup_steps: steps of linear warm-up.
        total_steps: steps of the whole schedule (None: no decay).
        final_factor: learning rate at the end of the decay, relative to
            ``base``.
        start: the step at which the schedule starts.
    """

    base: float
    warmup_steps: int
    total_steps: int | None
    final_factor: float
    start: int

    def at(self, step: int) -> float:
        """Learning rate of optimiser step ``step``."""
        factor = learning_rate_factor(
            step - self.start, self.warmup_steps, self.total_steps, self.final_factor
        )
        return self.base * factor


@dataclass
class OptimizerStep:
    """One optimiser step on the denoising loss and its bookkeeping.

    Sets the scheduled learning rate, takes an optimiser step on the mean loss
    ``net.loss(theta, x)`` of a batch, clipping the gradient norm to
    ``clip_max_norm`` (None: no clipping), moves the EMA and counts the step.
    """

    net: nn.Module
    optimizer: torch.optim.Optimizer
    ema: ExponentialMovingAverage
    learning_rate: LearningRateSchedule
    clip_max_norm: float | None

    def __call__(
        self,
        theta: Tensor,
        x: Tensor,
        parameters: list[nn.Parameter],
        progress: TrainingProgress,
    ) -> Tensor:
        """One step on the batch ``(theta, x)``; returns its (detached) loss."""
        learning_rate = self.learning_rate.at(progress.steps_done)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.net.loss(theta, x).mean()
        loss.backward()
        if self.clip_max_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, self.clip_max_norm, foreach=True)
        self.optimizer.step()
        self.ema.update(self.net)
        progress.steps_done += 1
        return loss.detach()

    def run_epoch(
        self,
        theta: Tensor,
        x: Tensor,
        order: Tensor,
        budget: TrainingBudget,
        progress: TrainingProgress,
        device: torch.device | str | None = None,
    ) -> float:
        """One pass over the training set in the order ``order``:
        ``budget.epoch_steps`` batches of ``budget.batch_size`` rows, each moved
        to ``device`` (where the network is; no move if None), so the training
        set may stay on another device (e.g. the CPU). Returns the mean training
        loss (not checked: see :func:`check_finite`)."""
        self.net.train()
        parameters = list(self.net.parameters())
        size = budget.batch_size
        losses = []
        for b in range(budget.epoch_steps):
            idx = order[b * size : (b + 1) * size]
            theta_batch, x_batch = theta[idx], x[idx]
            if device is not None:
                theta_batch, x_batch = theta_batch.to(device), x_batch.to(device)
            losses.append(self(theta_batch, x_batch, parameters, progress))
        return torch.stack(losses).mean().item()


def check_finite(epoch_loss: float, steps_done: int) -> None:
    """Raise if the training loss of an epoch is not finite.

    Raises:
        TrainingDivergedError: if ``epoch_loss`` is NaN or infinite.
    """
    if not math.isfinite(epoch_loss):
        raise TrainingDivergedError(
            f"The training loss became {epoch_loss} by step "
            f"{steps_done}. Lower the learning_rate, use "
            "clip_max_norm, or check theta and x for extreme values."
        )


ValidationRecorder = Callable[[float, float, float], None]
"""Called after each validation with the mean training loss since the last
validation, the validation loss and the seconds since the last validation."""


@dataclass
class TrainingLoop:
    """Epochs of optimiser steps, validated and stopped by a stopping rule.

    Attributes:
        step: the optimiser step.
        theta, x: the training simulations, on the device they are kept on
            (``data_device``); each batch is moved to ``device``.
        validation: the validation set.
        rule: the stopping rule; it keeps the weights training returns.
        budget: batch size, epoch length, patience and bounds.
        validation_interval: optimiser steps between validations, at least.
        progress: the trainer's counters (updated in place).
        record: called after each validation (:data:`ValidationRecorder`).
        device: where the network trains; batches are moved there.
    """

    step: OptimizerStep
    theta: Tensor
    x: Tensor
    validation: ValidationSet
    rule: StoppingRule
    budget: TrainingBudget
    validation_interval: int
    progress: TrainingProgress
    record: ValidationRecorder
    device: torch.device | str

    def run(self, generator: torch.Generator, show_progress_bar: bool) -> bool:
        """Train until the budget is spent or the stopping rule stops training;
        the batch order of each epoch is a permutation drawn from
        ``generator``. Returns True if the stopping rule ended training before
        the last epoch of the budget.

        Raises:
            TrainingDivergedError: if the loss becomes NaN or infinite.
        """
        bar = tqdm(
            total=None if self.budget.total_steps is None else self.budget.max_epochs,
            disable=not show_progress_bar,
            desc="Training",
            leave=False,
        )
        try:
            return self._run(generator, bar)
        finally:
            bar.close()

    def _run(self, generator: torch.Generator, bar: tqdm) -> bool:
        num_train = self.theta.shape[0]
        epochs_this_call = 0
        steps_since_validation = 0
        train_losses: list[float] = []
        start = time.time()
        while epochs_this_call < self.budget.max_epochs:
            order = torch.randperm(num_train, generator=generator)
            epoch_loss = self.step.run_epoch(
                self.theta,
                self.x,
                order.to(self.theta.device),
                self.budget,
                self.progress,
                self.device,
            )
            check_finite(epoch_loss, self.progress.steps_done)
            train_losses.append(epoch_loss)
            self.progress.epochs += 1
            epochs_this_call += 1
            steps_since_validation += self.budget.epoch_steps
            bar.update(1)
            last_epoch = epochs_this_call == self.budget.max_epochs
            if steps_since_validation < self.validation_interval and not last_epoch:
                continue
            val_loss = self.validate(steps_since_validation)
            train_loss = sum(train_losses) / len(train_losses)
            self.record(train_loss, val_loss, time.time() - start)
            bar.set_postfix(val_loss=f"{val_loss:.4f}")
            train_losses, steps_since_validation, start = [], 0, time.time()
            if self.rule.should_stop():
                return not last_epoch
        return False

    def validate(self, steps: int) -> float:
        """The validation check: score the EMA weights on the validation set and
        hand the per-row losses to the stopping rule (``steps`` optimiser steps
        since the last check). Returns the mean validation loss."""
        model = self.step.ema.model
        row_losses = self.validation.losses(model)
        self.rule.update(row_losses, model, steps)
        return row_losses.mean().item()


def end_of_training_message(
    trainer_name: str,
    progress: TrainingProgress,
    best_loss: float,
    stopped_after: int | None,
) -> str:
    """How training ended: the epochs and steps run, the best validation loss
    and, if the stopping rule ended it (``stopped_after`` steps without
    improvement; None otherwise), why."""
    message = (
        f"{trainer_name}: trained {progress.epochs} epochs "
        f"({progress.steps_done} steps), best validation loss "
        f"{best_loss:.4f}"
    )
    if stopped_after is not None:
        message += f"; stopped early: no improvement in the last {stopped_after} steps"
    return message
