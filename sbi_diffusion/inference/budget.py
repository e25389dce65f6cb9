r"""How long the vector-field trainers train: steps per epoch, the bound on
optimiser steps, and the patience of early stopping; and the check of
``train()``'s arguments (:func:`check_train_arguments`).

:meth:`TrainingBudget.resolve` turns the arguments of ``train()`` into the
numbers the training loop runs on. The default bound on optimiser steps grows as
the square root of the training set (:func:`auto_max_num_steps`), and the
learning rate decays (cosine) over the bound, so the bound is also the length
of the learning-rate schedule.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Any

from sbi_diffusion.nets.sizing import mlp_size

__all__ = [
    "AUTO_STEPS_PER_ROOT_SIMULATION",
    "DEFAULT_MAX_NUM_STEPS",
    "MIN_AUTO_STEPS",
    "VALIDATION_INTERVAL",
    "TrainingBudget",
    "auto_max_num_steps",
    "check_train_arguments",
    "patience_steps",
    "resolve_max_num_steps",
    "steps_per_epoch",
    "total_steps",
    "training_recipe",
]

VALIDATION_INTERVAL = 20
"""Default of ``train(validation_interval=...)``: optimiser steps between
validations, at least."""

AUTO_STEPS_PER_ROOT_SIMULATION = 130
"""``c`` of the ``"auto"`` step bound ``c sqrt(n_train)``."""

MIN_AUTO_STEPS = 1000
"""Floor of the ``"auto"`` step bound."""

DEFAULT_MAX_NUM_STEPS = "auto"
"""Default of ``train(max_num_steps=...)``."""

NO_EPOCH_BOUND = 2**31 - 1
"""The epoch bound used when ``max_num_epochs`` is None."""


def steps_per_epoch(num_train: int, training_batch_size: int) -> int:
    """Optimiser steps of one epoch: ``max(1, floor(n_train / b))`` batches of
    ``b = min(training_batch_size, n_train)``."""
    return max(1, num_train // min(training_batch_size, num_train))


def patience_steps(
    stop_after_epochs: int, stop_after_steps: int, epoch_steps: int
) -> int:
    """Optimiser steps without a better validation loss before training stops.

    The larger of ``stop_after_epochs`` epochs (``stop_after_epochs *
    epoch_steps``) and ``stop_after_steps``. With few simulations an epoch is a
    handful of steps, and a patience counted in epochs alone would stop a
    diffusion model long before it has converged.
    """
    return max(int(stop_after_epochs) * epoch_steps, int(stop_after_steps))


def auto_max_num_steps(num_train: int) -> int:
    r"""The ``"auto"`` bound on optimiser steps for ``num_train`` training
    simulations:

    .. math::
        S_{max} = \max(10^3,\; \lceil 130 \sqrt{n_{train}} \rceil),

    3,900 steps at 10^3 simulations (900 for training), 12,333 at 10^4 and
    39,000 at 10^5. The number of passes over the data, ``S_max b / n_train``,
    falls as ``1 / sqrt(n_train)``: a small training set needs many passes
    (each sees new noise levels), a large one fewer. The learning rate decays
    over these steps (cosine), so the bound is also the length of the schedule
    when early stopping does not end training first.
    """
    steps = math.ceil(AUTO_STEPS_PER_ROOT_SIMULATION * math.sqrt(num_train))
    return max(MIN_AUTO_STEPS, steps)


def resolve_max_num_steps(
    max_num_steps: int | str | None, num_train: int
) -> int | None:
    """The bound on optimiser steps that ``train()`` uses.

    ``"auto"`` is :func:`auto_max_num_steps`, an integer is used as given, None
    means no bound (early stopping only).

    Raises:
        ValueError: for anything else, or an integer below 1.
    """
    if max_num_steps is None:
        return None
    if max_num_steps == "auto":
        return auto_max_num_steps(num_train)
    if isinstance(max_num_steps, bool) or not isinstance(
        max_num_steps, numbers.Integral
    ):
        raise ValueError(
            "max_num_steps must be a positive integer, 'auto' or None; got "
            f"{max_num_steps!r}."
        )
    if max_num_steps < 1:
        raise ValueError(f"max_num_steps must be at least 1, got {max_num_steps}.")
    return int(max_num_steps)


def total_steps(
    num_train: int,
    training_batch_size: int,
    max_num_epochs: int | None,
    max_num_steps: int | str | None,
) -> int | None:
    """Optimiser steps training runs unless early stopping ends it first: the
    smaller of ``max_num_epochs`` epochs and the step bound
    (:func:`resolve_max_num_steps`); None when neither is given.

    Raises:
        ValueError: for an invalid ``max_num_steps``.
    """
    step_bound = resolve_max_num_steps(max_num_steps, num_train)
    bounds = [b for b in (step_bound,) if b is not None]
    if max_num_epochs is not None:
        epoch_steps = steps_per_epoch(num_train, training_batch_size)
        bounds.append(int(max_num_epochs) * epoch_steps)
    return min(bounds) if bounds else None


@dataclass(frozen=True)
class TrainingBudget:
    """The numbers one ``train()`` call runs on.

    Attributes:
        batch_size: rows per optimiser step, ``min(training_batch_size,
            n_train)``.
        epoch_steps: optimiser steps per epoch (:func:`steps_per_epoch`).
        patience: optimiser steps without improvement before early stopping
            (:func:`patience_steps`).
        max_epochs: epochs this call runs at most.
        total_steps: optimiser steps this call runs at most, the length of the
            learning-rate decay; None for no bound.
    """

    batch_size: int
    epoch_steps: int
    patience: int
    max_epochs: int
    total_steps: int | None

    @classmethod
    def resolve(
        cls,
        num_train: int,
        training_batch_size: int,
        stop_after_epochs: int,
        stop_after_steps: int | str,
        max_num_epochs: int | None,
        max_num_steps: int | str | None,
    ) -> TrainingBudget:
        """The budget of ``train()``'s arguments for ``num_train`` training
        simulations. ``stop_after_steps="auto"`` is a quarter of the
        ``"auto"`` step bound.

        Raises:
            ValueError: for an invalid ``max_num_steps``.
        """
        epoch_steps = steps_per_epoch(num_train, training_batch_size)
        if stop_after_steps == "auto":
            stop_after_steps = auto_max_num_steps(num_train) // 4
        patience = patience_steps(stop_after_epochs, stop_after_steps, epoch_steps)
        max_epochs = NO_EPOCH_BOUND if max_num_epochs is None else int(max_num_epochs)
        steps = total_steps(
            num_train, training_batch_size, max_num_epochs, max_num_steps
        )
        if steps is not None:
            max_epochs = min(max_epochs, -(-steps // epoch_steps))
        return cls(
            batch_size=min(training_batch_size, num_train),
            epoch_steps=epoch_steps,
            patience=patience,
            max_epochs=max_epochs,
            total_steps=steps,
        )


def training_recipe(trainer_class: type) -> dict[str, Any]:
    """The defaults that decide what a training with no options builds: the
    constructor's and ``train()``'s default arguments of ``trainer_class``, its
    class defaults (``default_schedule``, ``default_parameterization``,
    ``default_weighting``, ``sizes_net_by_budget``) and the budget rules
    (:func:`auto_max_num_steps`, :func:`~sbi_diffusion.nets.sizing.mlp_size`)."""

    def defaults(func: Any) -> dict[str, str]:
        return {
            name: repr(p.default)
            for name, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty
        }

    cls = trainer_class
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "init": defaults(cls.__init__),
        "train": defaults(cls.train),
        "schedule": repr(cls.default_schedule),
        "parameterization": repr(cls.default_parameterization),
        "weighting": repr(cls.default_weighting),
        "sizes_net_by_budget": cls.sizes_net_by_budget,
        "sizing": [mlp_size(10**k, 2) for k in range(2, 7)],
        "steps": [auto_max_num_steps(10**k) for k in range(2, 7)],
    }


def check_train_arguments(
    trainer_name: str,
    has_simulations: bool,
    kwargs: dict[str, Any],
    discard_prior_samples: bool,
    stop_after_epochs: int,
    stop_after_steps: int | str,
    training_batch_size: int,
    learning_rate: float,
    validation_fraction: float,
    validation_interval: int,
) -> None:
    """Raise a ValueError naming the first invalid argument of ``train()``.

    Args:
        trainer_name: the trainer's class name, for the message.
        has_simulations: whether simulations were appended.
        kwargs: ``train()``'s further keyword arguments (only sbi's
            ``calibration_kernel``, ``exclude_invalid_x``, ``dataloader_kwargs``
            and ``force_first_round_loss`` are accepted, and ignored).
        discard_prior_samples, stop_after_epochs, stop_after_steps,
        training_batch_size, learning_rate, validation_fraction,
        validation_interval: as given to ``train()``.
    """
    unknown = set(kwargs) - {
        "calibration_kernel",
        "exclude_invalid_x",
        "dataloader_kwargs",
        "force_first_round_loss",
    }
    if unknown:
        raise ValueError(
            f"Unknown train() arguments {sorted(unknown)}. See "
            f"{trainer_name}.train for the accepted ones."
        )
    if discard_prior_samples:
        raise ValueError("discard_prior_samples is not supported: single round.")
    if not has_simulations:
        raise ValueError(
            "No simulations: call append_simulations(theta, x) before train()."
        )
    steps_ok = stop_after_steps == "auto" or (
        isinstance(stop_after_steps, numbers.Integral) and stop_after_steps >= 0
    )
    if stop_after_epochs < 1 or not steps_ok:
        raise ValueError(
            "stop_after_epochs must be positive and stop_after_steps "
            f"non-negative or 'auto', got {stop_after_epochs} and "
            f"{stop_after_steps!r}."
        )
    if training_batch_size < 1 or learning_rate <= 0:
        raise ValueError("training_batch_size and learning_rate must be positive.")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction must be in (0, 1), got {validation_fraction}."
        )
    if validation_interval < 1:
        raise ValueError(
            f"validation_interval must be at least 1, got {validation_interval}."
        )
