"""Deprecated location; use :mod:`sbi_diffusion.path.vector_field`.

Kept for one release so that old imports and pickled models load.
"""

import warnings

from sbi_diffusion.model.interface import DenoiseFn  # noqa: F401
from sbi_diffusion.path.vector_field import (  # noqa: F401
    as_time,
    eps_from_x_hat,
    ode_drift,
    score_from_x_hat,
    x_hat_from_score,
)

warnings.warn(
    "sbi_diffusion.vector_field is deprecated and will be removed in the next "
    "release; import from sbi_diffusion.path.vector_field instead.",
    DeprecationWarning,
    stacklevel=2,
)
