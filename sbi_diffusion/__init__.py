"""sbi-diffusion: diffusion, flow-matching and consistency models for
simulation-based inference, as estimators for the ``sbi`` package."""

from sbi_diffusion.consistency import ConsistencyNPE
from sbi_diffusion.guidance import (
    ClassifierFreeGuidance,
    ConstraintGuidance,
    LikelihoodTemperature,
    PriorSwap,
)
from sbi_diffusion.hierarchical import HierarchicalNPE
from sbi_diffusion.inference import (
    DiffusionNPE,
    DiffusionPosterior,
    FlowMatchingNPE,
)
from sbi_diffusion.inference.density_thresholder import get_density_thresholder
from sbi_diffusion.inference.likelihood import (
    DiffusionLikelihood,
    DiffusionNLE,
    FlowMatchingNLE,
)
from sbi_diffusion.inference.truncation import (
    DensityRegion,
    SampleRegion,
    get_density_region,
    get_sample_thresholder,
)
from sbi_diffusion.joint import JointDiffusion
from sbi_diffusion.model import Denoiser
from sbi_diffusion.samplers import Solver

__version__ = "0.1.0"

__all__ = [
    "ClassifierFreeGuidance",
    "ConstraintGuidance",
    "LikelihoodTemperature",
    "PriorSwap",
    "ConsistencyNPE",
    "DiffusionNLE",
    "DiffusionNPE",
    "FlowMatchingNLE",
    "FlowMatchingNPE",
    "HierarchicalNPE",
    "JointDiffusion",
    "DiffusionLikelihood",
    "DiffusionPosterior",
    "DensityRegion",
    "Denoiser",
    "SampleRegion",
    "Solver",
    "get_density_region",
    "get_density_thresholder",
    "get_sample_thresholder",
    "__version__",
]
