"""sbi-diffusion: diffusion, flow-matching and consistency models for
simulation-based inference, as estimators for the ``sbi`` package."""

from sbi_diffusion.denoiser import Denoiser
from sbi_diffusion.guidance import (
    ClassifierFreeGuidance,
    ConstraintGuidance,
    LikelihoodTemperature,
    PriorSwap,
)
from sbi_diffusion.inference import (
    DiffusionNPE,
    DiffusionPosterior,
    FlowMatchingNPE,
)
from sbi_diffusion.inference.consistency import ConsistencyNPE
from sbi_diffusion.joint import JointDiffusion

__version__ = "0.1.0"

__all__ = [
    "ClassifierFreeGuidance",
    "ConstraintGuidance",
    "LikelihoodTemperature",
    "PriorSwap",
    "ConsistencyNPE",
    "DiffusionNPE",
    "FlowMatchingNPE",
    "JointDiffusion",
    "DiffusionPosterior",
    "Denoiser",
    "__version__",
]
