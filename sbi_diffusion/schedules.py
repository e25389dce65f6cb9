"""Deprecated location; use :mod:`sbi_diffusion.path.schedules`.

Kept for one release so that old imports and pickled models load.
"""

import warnings

from sbi_diffusion.path.schedules import (  # noqa: F401
    SCHEDULES,
    CosineSchedule,
    EDMSchedule,
    EDMVPSchedule,
    RectifiedFlowSchedule,
    Schedule,
    VPLinearSchedule,
    get_schedule,
    shift_times,
)

warnings.warn(
    "sbi_diffusion.schedules is deprecated and will be removed in the next "
    "release; import from sbi_diffusion.path.schedules instead.",
    DeprecationWarning,
    stacklevel=2,
)
