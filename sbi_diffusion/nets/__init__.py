"""Vector-field networks ``net(z, condition_embedding, time) -> output``."""

from sbi_diffusion.nets.mlp import AdaLNMLP, ResidualMLP, build_net
from sbi_diffusion.nets.time_embedding import SinusoidalTimeEmbedding

__all__ = ["ResidualMLP", "AdaLNMLP", "SinusoidalTimeEmbedding", "build_net"]
