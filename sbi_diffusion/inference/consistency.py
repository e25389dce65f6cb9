"""Deprecated: the consistency trainer and posterior moved to
:mod:`sbi_diffusion.consistency` (``ConsistencyNPE``, ``ConsistencyPosterior``).
This module re-exports them for one release."""

import warnings

from sbi_diffusion.consistency import ConsistencyNPE, ConsistencyPosterior

__all__ = ["ConsistencyNPE", "ConsistencyPosterior"]

warnings.warn(
    "sbi_diffusion.inference.consistency is deprecated; import ConsistencyNPE and "
    "ConsistencyPosterior from sbi_diffusion.consistency.",
    DeprecationWarning,
    stacklevel=2,
)
