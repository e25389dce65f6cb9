"""Deprecated location; use :mod:`sbi_diffusion.path.gaussian`.

Kept for one release so that old imports and pickled models load.
"""

import warnings

from sbi_diffusion.path.gaussian import (  # noqa: F401
    GaussianDenoiser,
    gaussian_marginal,
    linear_gaussian_posterior,
)

warnings.warn(
    "sbi_diffusion.gaussian is deprecated and will be removed in the next "
    "release; import from sbi_diffusion.path.gaussian instead.",
    DeprecationWarning,
    stacklevel=2,
)
