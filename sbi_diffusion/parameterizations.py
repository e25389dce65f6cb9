"""Deprecated location; use :mod:`sbi_diffusion.path.parameterizations`.

Kept for one release so that old imports and pickled models load.
"""

import warnings

from sbi_diffusion.path.parameterizations import (  # noqa: F401
    PARAMETERIZATIONS,
    SIGMA_DATA,
    DataPrediction,
    EDMPreconditioning,
    NoisePrediction,
    Parameterization,
    PathPoint,
    ScorePrediction,
    Velocity,
    get_parameterization,
)

warnings.warn(
    "sbi_diffusion.parameterizations is deprecated and will be removed in the next "
    "release; import from sbi_diffusion.path.parameterizations instead.",
    DeprecationWarning,
    stacklevel=2,
)
