"""Deprecated location; use :mod:`sbi_diffusion.path.weightings`.

Kept for one release so that old imports and pickled models load.
"""

import warnings

from sbi_diffusion.path.weightings import (  # noqa: F401
    WEIGHTINGS,
    check_weighting,
    loss_weight,
)

warnings.warn(
    "sbi_diffusion.weightings is deprecated and will be removed in the next "
    "release; import from sbi_diffusion.path.weightings instead.",
    DeprecationWarning,
    stacklevel=2,
)
