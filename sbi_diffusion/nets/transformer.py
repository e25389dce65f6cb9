r"""A small transformer over variables as tokens (the Simformer's network).

Every scalar variable ``v_i`` of the joint vector ``(theta, x)`` is one token
(Gloeckler et al. 2024, "All-in-one simulation-based inference", Sec. 3.2):

.. math::
    h_i^{(0)} = W_v v_i + b_v + e^{id}_i + e^{cond}_{m_i},

a token-level linear map of its value (shared by all tokens, so the cost is
linear in the number of variables and ``x`` of dimension 100 is no problem), a
learned identifier embedding and an embedding of its condition state
(observed or latent). The per-token time input ``c_noise`` conditions every
block through adaptive layer norm (Peebles & Xie 2023, DiT):

.. math::
    h \leftarrow h + g_1 \odot \mathrm{Attn}\big((1 + a_1) \odot LN(h) + b_1\big),
    \qquad
    h \leftarrow h + g_2 \odot \mathrm{MLP}\big((1 + a_2) \odot LN(h) + b_2\big),

with ``(a, b, g)`` computed per token from the time and condition-state
embeddings (gates start at zero, so each block starts as the identity).
Attention may be restricted by a boolean mask (the dependency structure between
variables). A shared linear read-out maps each token to its scalar output.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from sbi_diffusion.nets.time_embedding import SinusoidalTimeEmbedding

__all__ = ["ConditionalTokenTransformer", "TokenTransformer"]


class _Block(nn.Module):
    """Pre-norm transformer block with adaptive layer norm."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.norm_attn = nn.LayerNorm(width, elementwise_affine=False)
        self.norm_mlp = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        hidden = max(1, int(mlp_ratio * width))
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, width),
        )
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.dropout = dropout

    def forward(self, h: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        batch, tokens, width = h.shape
        mods = self.modulation(functional.silu(context)).chunk(6, dim=-1)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
        u = (1 + scale_a) * self.norm_attn(h) + shift_a
        qkv = self.qkv(u).reshape(batch, tokens, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None]
        out = functional.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(batch, tokens, width)
        h = h + gate_a * self.proj(out)
        u = (1 + scale_m) * self.norm_mlp(h) + shift_m
        return h + gate_m * self.mlp(u)


class TokenTransformer(nn.Module):
    """Transformer denoising network over ``num_tokens`` scalar variables.

    Signature ``net(values, condition_mask, time, attention_mask) -> output``:

    - ``values`` ``(B, D)``: scaled noisy values of latent variables and clean
      values of observed ones;
    - ``condition_mask`` ``(B, D)`` booleans, True for observed variables;
    - ``time`` ``(B, D)`` per-token (or ``(B,)`` shared) time input ``c_noise``;
    - ``attention_mask`` ``(B, D, D)`` booleans (True: token ``i`` may attend to
      ``j``) or None;
    - output ``(B, D)``, one scalar per token.

    Args:
        num_tokens: number of variables ``D``.
        width: token embedding dimension.
        depth: number of transformer blocks.
        num_heads: attention heads (must divide ``width``).
        mlp_ratio: hidden width of the MLPs relative to ``width``.
        dropout: dropout in attention and MLPs.

    Raises:
        ValueError: for non-positive sizes or ``width`` not divisible by
            ``num_heads``.
    """

    def __init__(
        self,
        num_tokens: int,
        width: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if min(num_tokens, width, depth, num_heads) < 1:
            raise ValueError(
                "num_tokens, width, depth and num_heads must be positive, got "
                f"{num_tokens}, {width}, {depth}, {num_heads}."
            )
        if width % num_heads:
            raise ValueError(
                f"width ({width}) must be divisible by num_heads ({num_heads}); "
                "e.g. pass width=64, num_heads=4."
            )
        self.num_tokens = num_tokens
        self.value_embedding = nn.Linear(1, width)
        self.identifier = nn.Parameter(
            torch.randn(num_tokens, width) / math.sqrt(width)
        )
        self.condition_embedding = nn.Embedding(2, width)
        self.time_embedding = SinusoidalTimeEmbedding(width)
        self.blocks = nn.ModuleList(
            _Block(width, num_heads, mlp_ratio, dropout) for _ in range(depth)
        )
        self.output_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.output_modulation = nn.Linear(width, 2 * width)
        nn.init.zeros_(self.output_modulation.weight)
        nn.init.zeros_(self.output_modulation.bias)
        self.output_layer = nn.Linear(width, 1)
        nn.init.zeros_(self.output_layer.weight)
        nn.init.zeros_(self.output_layer.bias)

    def forward(
        self,
        values: Tensor,
        condition_mask: Tensor,
        time: Tensor,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        batch, tokens = values.shape
        if tokens != self.num_tokens:
            raise ValueError(
                f"The transformer was built for {self.num_tokens} variables but got "
                f"{tokens}."
            )
        if time.dim() == 1:
            time = time[:, None].expand(batch, tokens)
        state = self.condition_embedding(condition_mask.long())
        context = self.time_embedding(time.reshape(-1)).reshape(batch, tokens, -1)
        context = context + state
        h = self.value_embedding(values[..., None]) + self.identifier + state
        for block in self.blocks:
            h = block(h, context, attention_mask)
        shift, scale = self.output_modulation(functional.silu(context)).chunk(2, -1)
        h = (1 + scale) * self.output_norm(h) + shift
        return self.output_layer(h)[..., 0]


class ConditionalTokenTransformer(nn.Module):
    r"""The token transformer as a conditional vector-field network
    ``net(z, condition, time)``, for the posterior estimators
    (``DiffusionNPE(net="transformer")``).

    Each entry of the noisy parameters ``z`` is a latent token and each entry
    of the embedded condition is an observed token, as in the joint model with
    the posterior's condition mask (Gloeckler et al. 2024): the
    :class:`TokenTransformer` over ``input_dim + condition_dim`` tokens, every
    token at the row's time, read out at the parameter tokens. Attention lets
    every parameter depend on every data entry and every other parameter
    through learned, input-dependent weights, where the residual MLP mixes all
    inputs through one dense layer.

    The cost per row is quadratic in ``input_dim + condition_dim`` (attention)
    and linear in ``depth``; compress a large ``x`` with an ``embedding_net``.

    Args:
        input_dim: dimension of ``z`` (the flattened parameters).
        condition_dim: dimension of the embedded condition (0: unconditional).
        **options: ``width``, ``depth``, ``num_heads``, ``mlp_ratio``,
            ``dropout`` of :class:`TokenTransformer`.
    """

    def __init__(self, input_dim: int, condition_dim: int, **options: Any):
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"input_dim must be positive, got {input_dim}.")
        self.input_dim, self.condition_dim = input_dim, condition_dim
        self.transformer = TokenTransformer(input_dim + condition_dim, **options)
        observed = torch.arange(input_dim + condition_dim) >= input_dim
        self.register_buffer("observed", observed, persistent=False)

    def forward(self, z: Tensor, condition: Tensor, time: Tensor) -> Tensor:
        """Evaluate on ``z`` ``(batch, input_dim)``, ``condition``
        ``(batch, condition_dim)`` (or one row for all) and ``time``
        ``(batch,)`` (or one time for all rows); returns ``(batch, input_dim)``."""
        batch = z.shape[0]
        time = time.reshape(-1)
        time = time.expand(batch) if time.numel() == 1 else time.reshape(batch)
        condition = condition.reshape(len(condition), self.condition_dim)
        condition = condition.expand(batch, -1)  # one row: shared by every z
        values = torch.cat([z, condition.to(z.dtype)], dim=-1)
        mask = self.observed.expand(batch, -1)
        return self.transformer(values, mask, time)[:, : self.input_dim]
