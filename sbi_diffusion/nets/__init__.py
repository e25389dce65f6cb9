"""Vector-field networks ``net(z, condition_embedding, time) -> output``."""

from sbi_diffusion.nets.mlp import AdaLNMLP, ResidualMLP
from sbi_diffusion.nets.registry import NETS, build_net, check_net_options
from sbi_diffusion.nets.time_embedding import SinusoidalTimeEmbedding
from sbi_diffusion.nets.transformer import ConditionalTokenTransformer, TokenTransformer
from sbi_diffusion.nets.unet import UNet

__all__ = [
    "NETS",
    "ResidualMLP",
    "AdaLNMLP",
    "ConditionalTokenTransformer",
    "SinusoidalTimeEmbedding",
    "TokenTransformer",
    "UNet",
    "build_net",
    "check_net_options",
]
