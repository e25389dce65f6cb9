"""Deprecated location of the denoiser; use :mod:`sbi_diffusion.model`.

Kept for one release so that old imports and pickled models load.
"""

import warnings

from sbi_diffusion.model import (
    CPU_NETWORK_ROWS,
    ConditionedDenoiser,
    Denoiser,
    default_network_rows,
    denoise_rows_in_pieces,
    denoise_trials_flat,
    expand_trial_rows,
)

warnings.warn(
    "sbi_diffusion.denoiser is deprecated and will be removed in the next "
    "release; import from sbi_diffusion.model instead.",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "CPU_NETWORK_ROWS",
    "ConditionedDenoiser",
    "Denoiser",
    "default_network_rows",
    "denoise_rows_in_pieces",
    "denoise_trials_flat",
    "expand_trial_rows",
]
