"""Deprecated: per-band early stopping moved to
:mod:`sbi_diffusion.inference.noise_bands` (``NoiseBandNet``,
``NoiseBandSelection``; the stopping rule is
:class:`sbi_diffusion.inference.stopping.NoiseBandStopping`). This module
re-exports them for one release."""

import warnings

from sbi_diffusion.inference.noise_bands import NoiseBandNet, NoiseBandSelection

__all__ = ["NoiseBandNet", "NoiseBandSelection"]

warnings.warn(
    "sbi_diffusion.nets.noise_bands is deprecated; import NoiseBandNet and "
    "NoiseBandSelection from sbi_diffusion.inference.noise_bands.",
    DeprecationWarning,
    stacklevel=2,
)
