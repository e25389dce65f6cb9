"""Vector-field networks ``net(z, condition_embedding, time) -> output``."""

from sbi_diffusion.nets.mlp import AdaLNMLP, ResidualMLP, build_net
from sbi_diffusion.nets.time_embedding import SinusoidalTimeEmbedding
from sbi_diffusion.nets.transformer import TokenTransformer

__all__ = [
    "ResidualMLP",
    "AdaLNMLP",
    "SinusoidalTimeEmbedding",
    "TokenTransformer",
    "build_net",
]
