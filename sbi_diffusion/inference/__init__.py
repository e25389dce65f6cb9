"""sbi trainers and posteriors."""

from sbi_diffusion.inference.likelihood import (
    DiffusionLikelihood,
    DiffusionNLE,
    FlowMatchingNLE,
)
from sbi_diffusion.inference.posterior import DiffusionPosterior, DiffusionPotential
from sbi_diffusion.inference.trainer import (
    DiffusionNPE,
    FlowMatchingNPE,
    VectorFieldInference,
)

__all__ = [
    "DiffusionLikelihood",
    "DiffusionNLE",
    "FlowMatchingNLE",
    "DiffusionNPE",
    "FlowMatchingNPE",
    "VectorFieldInference",
    "DiffusionPosterior",
    "DiffusionPotential",
]
