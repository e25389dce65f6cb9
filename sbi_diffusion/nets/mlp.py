r"""Residual MLPs for low-dimensional vector fields.

Both networks map ``(z, c, t)`` — the (scaled) noisy parameters, the embedded
condition and the time input ``c_noise`` — to an output of the shape of ``z``.
"""

from __future__ import annotations

from torch import Tensor, nn

from sbi_diffusion._deprecation import moved_names
from sbi_diffusion.nets.time_embedding import SinusoidalTimeEmbedding

__all__ = ["ResidualMLP", "AdaLNMLP"]


class _ResidualBlock(nn.Module):
    """``h + W_2 dropout(SiLU(W_1 SiLU(LN(h)) + e))`` with a context embedding ``e``."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear_in = nn.Linear(width, width)
        self.context = nn.Linear(width, width)
        self.linear_out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, context: Tensor) -> Tensor:
        u = self.linear_in(self.act(self.norm(h))) + self.context(context)
        return h + self.linear_out(self.dropout(self.act(u)))


class _AdaLNBlock(nn.Module):
    r"""Residual block with adaptive layer norm (Peebles & Xie 2023, DiT):

    .. math::
        h \leftarrow h + g(e) \odot \mathrm{MLP}((1 + a(e)) \odot LN(h) + b(e)),

    where the scale ``a``, shift ``b`` and gate ``g`` come from the context ``e``
    (gate initialised at zero, so each block starts as the identity).
    """

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(width, 3 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.mlp = nn.Sequential(
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
        )

    def forward(self, h: Tensor, context: Tensor) -> Tensor:
        scale, shift, gate = self.modulation(nn.functional.silu(context)).chunk(3, -1)
        return h + gate * self.mlp((1 + scale) * self.norm(h) + shift)


class ResidualMLP(nn.Module):
    """Residual MLP with a time embedding, the default vector-field network.

    The time embedding and the condition embedding are summed into a context
    vector that is added inside every residual block.

    Leading dimensions broadcast: ``z`` ``(..., input_dim)``, ``condition``
    ``(..., condition_dim)`` and ``time`` ``(...)`` may have any leading shapes
    that broadcast against each other (``broadcasts_inputs``). The context is
    then computed once per distinct condition and time, e.g. for one ``z``
    against many conditions (:meth:`Denoiser.denoise_trials
    <sbi_diffusion.model.Denoiser.denoise_trials>`).

    Args:
        input_dim: dimension of ``z`` (the flattened parameters).
        condition_dim: dimension of the embedded condition (0: unconditional).
        width: hidden width.
        depth: number of residual blocks.
        dropout: dropout probability inside the blocks.
    """

    block = _ResidualBlock
    #: leading dimensions of ``z``, ``condition`` and ``time`` broadcast
    broadcasts_inputs = True

    def __init__(
        self,
        input_dim: int,
        condition_dim: int,
        width: int = 256,
        depth: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1, got {width}, {depth}.")
        self.input_dim, self.condition_dim = input_dim, condition_dim
        self.time_embedding = SinusoidalTimeEmbedding(width)
        self.condition_embedding = (
            nn.Sequential(nn.Linear(condition_dim, width), nn.SiLU())
            if condition_dim > 0
            else None
        )
        self.input_layer = nn.Linear(input_dim, width)
        self.blocks = nn.ModuleList(self.block(width, dropout) for _ in range(depth))
        self.output_norm = nn.LayerNorm(width)
        self.output_layer = nn.Linear(width, input_dim)
        nn.init.zeros_(self.output_layer.weight)
        nn.init.zeros_(self.output_layer.bias)

    def forward(self, z: Tensor, condition: Tensor, time: Tensor) -> Tensor:
        """Evaluate on ``z`` ``(batch, input_dim)``, ``condition``
        ``(batch, condition_dim)`` and ``time`` ``(batch,)``, or on any leading
        shapes that broadcast against each other; the output has the broadcast
        leading shape."""
        context = self.time_embedding(time)
        if self.condition_embedding is not None:
            context = context + self.condition_embedding(condition)
        h = self.input_layer(z)
        for block in self.blocks:
            h = block(h, context)
        return self.output_layer(nn.functional.silu(self.output_norm(h)))


class AdaLNMLP(ResidualMLP):
    """Residual MLP whose blocks are conditioned by adaptive layer norm
    (scale, shift and gate from the time and condition embedding)."""

    block = _AdaLNBlock


# ``NETS`` and ``build_net`` moved to :mod:`sbi_diffusion.nets.registry`.
__getattr__ = moved_names(__name__, ("NETS", "build_net"), "sbi_diffusion.nets")
