"""Deprecated: the training utilities moved to
:mod:`sbi_diffusion.inference.optimization` (``ExponentialMovingAverage``,
``learning_rate_factor``, ``make_optimizer``, ``TrainingDivergedError``) and
:mod:`sbi_diffusion.inference.validation` (``ValidationSet``). This module
re-exports them for one release."""

import warnings

from sbi_diffusion.inference.optimization import (
    ExponentialMovingAverage,
    TrainingDivergedError,
    learning_rate_factor,
    make_optimizer,
)
from sbi_diffusion.inference.validation import ValidationSet

__all__ = [
    "ExponentialMovingAverage",
    "learning_rate_factor",
    "make_optimizer",
    "TrainingDivergedError",
    "ValidationSet",
]

warnings.warn(
    "sbi_diffusion.training is deprecated; import from "
    "sbi_diffusion.inference.optimization (ExponentialMovingAverage, "
    "learning_rate_factor, make_optimizer, TrainingDivergedError) and "
    "sbi_diffusion.inference.validation (ValidationSet).",
    DeprecationWarning,
    stacklevel=2,
)
