r"""A U-Net denoiser for parameters that are fields on a grid (images, signals).

The parameters stay a flat vector to sbi (priors, pairplots, SBC and saving
work unchanged); the network reshapes ``z`` ``(batch, C * H * W)`` to the field
``(batch, C, H, W)`` (or ``(batch, C, L)`` for 1-D signals, ``(batch, C, D, H,
W)`` for volumes: the convolutions are chosen by the number of grid axes) and
returns the flat output of the same size.

Architecture: the U-Net of Ronneberger et al. 2015 ("U-Net: Convolutional
Networks for Biomedical Image Segmentation"), with the residual blocks, group
normalisation and time embedding of Ho et al. 2020 (DDPM, App. B). Each level
of the encoder runs ``blocks_per_level`` residual blocks and halves the grid
(a stride-2 convolution, rounding up); the decoder mirrors it, concatenating
the encoder's activations (skip connections) and upsampling (nearest
neighbour, to the exact size of the matching skip, so any grid size works
without padding). The 3-wide convolutions pad the grid's edges with zeros, or,
with ``padding_mode="circular"``, wrap around, for fields on a periodic
domain. The lowest resolution carries a residual block, an optional
multi-head self-attention over grid points (Dhariwal & Nichol 2021, "Diffusion
Models Beat GANs on Image Synthesis", use attention at low resolutions) and a
second residual block. A residual block is

.. math::
    u = \mathrm{Conv}(\mathrm{SiLU}(\mathrm{GN}(h))), \qquad
    u \leftarrow (1 + a(e)) \odot \mathrm{GN}(u) + b(e), \qquad
    h \leftarrow S h + \mathrm{Conv}(\mathrm{SiLU}(u)),

where the per-channel scale ``a`` and shift ``b`` (feature-wise linear
modulation, FiLM; Perez et al. 2018) come from the context embedding ``e``,
the sum of an embedding of the time input ``c_noise`` and, for a vector
condition, an embedding of the condition; ``S`` is a 1x1 convolution where the
width changes. The last convolution of each block and the output convolution
start at zero, so each block starts as the identity and the network's output
starts at 0, like the residual MLPs'.

The condition (the embedded ``x``) enters in one of two ways:

- **channels**: an embedded ``x`` that lies on the parameters' grid, of shape
  ``(k, *grid)`` (or ``grid``, one channel), is concatenated to the field as
  ``k`` extra input channels, so that pixel ``i`` of ``x`` meets pixel ``i`` of
  ``theta``; the null-condition flag of condition dropout (the last condition
  input, see :class:`~sbi_diffusion.model.Denoiser`) then enters through the
  context embedding;
- **vector**: any other condition (a summary vector, or an image of another
  size through an embedding net such as sbi's ``CNNEmbedding``) enters through
  the context embedding, like the time.

The network learns the embedded condition's shape as ``condition_shape``: the
trainers pass the shape of the embedding net's output (before flattening) to
networks that declare ``accepts_condition_shape``
(:func:`~sbi_diffusion.nets.build_net`); a ``condition_shape`` in
``net_kwargs`` takes precedence. ``condition_as`` picks the path: ``"auto"``
(channels when ``condition_shape`` is ``(k, *grid)`` or ``grid``, vector
otherwise; a flat embedding carries no layout, so it is a vector even if its
size is a multiple of the grid's), ``"channels"`` (any embedding whose size is
``k`` times the grid's, read as ``k`` channels in row-major order) or
``"vector"``.

On a CPU the batch goes through the network in pieces whose first-level
activation, ``rows x channels[0] x grid points``, holds at most
:data:`CPU_ACTIVATION_FLOATS` numbers, so that each piece stays in the cache
(the result is the same as one call); without gradients, 2-D grids of at
least :data:`CPU_CHANNELS_LAST_POINTS` points are evaluated in the
channels-last memory layout, which the CPU's convolution kernels run faster
(``benchmarks/fields/README.md``, "Sampling cost on a CPU").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional

from sbi_diffusion.nets.time_embedding import SinusoidalTimeEmbedding

__all__ = ["UNet", "CPU_ACTIVATION_FLOATS", "CPU_CHANNELS_LAST_POINTS"]

#: numbers in the first level's activation per network call on a CPU (4 MB)
CPU_ACTIVATION_FLOATS = 2**20
#: grid points from which a 2-D grid is evaluated channels-last on a CPU
#: (without gradients)
CPU_CHANNELS_LAST_POINTS = 32 * 32

_CONVOLUTIONS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONDITION_MODES = ("auto", "channels", "vector")
PADDING_MODES = ("zeros", "circular", "reflect", "replicate")


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """Group normalisation with the largest divisor of ``channels`` up to
    ``groups`` as the number of groups."""
    return nn.GroupNorm(math.gcd(channels, groups), channels)


def _conv3(
    grid_axes: int,
    in_channels: int,
    out_channels: int,
    padding_mode: str,
    stride: int = 1,
) -> nn.Module:
    """A 3-wide convolution over the grid that keeps its size (``stride=1``) or
    halves it, rounding up (``stride=2``), padding by one point with
    ``padding_mode``."""
    return _CONVOLUTIONS[grid_axes](
        in_channels,
        out_channels,
        3,
        stride=stride,
        padding=1,
        padding_mode=padding_mode,
    )


def _zero(module: nn.Module) -> nn.Module:
    """``module`` with its weights and bias set to zero."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def field_shape(shape: Sequence[int] | None, input_dim: int | None = None) -> tuple:
    """``shape`` checked as a field ``(C, *grid)`` with one to three grid axes
    and, if ``input_dim`` is given, ``C * prod(grid) == input_dim``.

    Raises:
        ValueError: if ``shape`` is missing, malformed or of another size.
    """
    example = "net_kwargs={'shape': (C, H, W)} (or (C, L) for 1-D signals)"
    if shape is None:
        raise ValueError(
            f"net='unet' needs the shape of the parameter field: pass {example}, "
            "with C * H * W equal to the parameter dimension."
        )
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as error:
        raise ValueError(f"shape must be a tuple of ints, got {shape!r}.") from error
    if not 2 <= len(shape) <= 4 or min(shape) < 1:
        raise ValueError(
            f"shape must be (C, L), (C, H, W) or (C, D, H, W) with positive sizes, "
            f"got {shape}; pass {example}."
        )
    if input_dim is not None and math.prod(shape) != input_dim:
        raise ValueError(
            f"net_kwargs['shape']={shape} has {math.prod(shape)} elements, but the "
            f"parameters have dimension {input_dim}: the product of the shape must "
            "equal the parameter dimension (theta is the flattened field)."
        )
    return shape


def condition_layout(
    condition_dim: int,
    condition_shape: Sequence[int] | None,
    grid: tuple[int, ...],
    condition_as: str,
) -> tuple[int, int]:
    """How the condition enters a field network: ``(channels, flags)``.

    ``channels`` is the number of condition channels on the grid (0: the whole
    condition is a vector); ``flags`` the condition inputs after the embedded
    ``x`` (the null-condition flag: 0 or 1), which join the context embedding on
    the channel path.

    Args:
        condition_dim: condition inputs of the network (embedded ``x``, plus the
            null flag with condition dropout).
        condition_shape: shape of the embedded ``x`` (flat if None).
        grid: the parameters' grid (the field shape without its channels).
        condition_as: ``"auto"``, ``"channels"`` or ``"vector"``.

    Raises:
        ValueError: for an unknown mode, a ``condition_shape`` that does not fit
            ``condition_dim``, or channels that do not fit the grid.
    """
    if condition_as not in CONDITION_MODES:
        raise ValueError(
            f"Unknown condition_as {condition_as!r}; pass one of {CONDITION_MODES}."
        )
    shape = (condition_dim,) if condition_shape is None else tuple(condition_shape)
    size = math.prod(shape)
    flags = condition_dim - size
    if flags not in (0, 1):
        raise ValueError(
            f"condition_shape {shape} has {size} elements, but the network takes "
            f"{condition_dim} condition inputs (the embedded x, plus 1 null flag "
            "with condition dropout)."
        )
    points = math.prod(grid)
    if condition_dim == 0 or condition_as == "vector":
        return 0, flags
    if condition_as == "channels":
        if size % points:
            raise ValueError(
                f"condition_as='channels' needs an embedded x of k * {points} "
                f"elements (k channels on the grid {grid}), got {size}."
            )
        return size // points, flags
    if shape == grid:
        return 1, flags
    if len(shape) == len(grid) + 1 and shape[1:] == grid:
        return shape[0], flags
    return 0, flags


class _ResidualBlock(nn.Module):
    """Residual block with group norm, SiLU and FiLM by the context."""

    def __init__(
        self,
        grid_axes: int,
        in_channels: int,
        out_channels: int,
        context_dim: int,
        groups: int,
        dropout: float,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        self.grid_axes = grid_axes
        self.norm_in = _group_norm(in_channels, groups)
        self.conv_in = _conv3(grid_axes, in_channels, out_channels, padding_mode)
        self.film = nn.Linear(context_dim, 2 * out_channels)
        self.norm_out = _group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = _zero(
            _conv3(grid_axes, out_channels, out_channels, padding_mode)
        )
        self.skip = (
            _CONVOLUTIONS[grid_axes](in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, h: Tensor, context: Tensor) -> Tensor:
        u = self.conv_in(functional.silu(self.norm_in(h)))
        film = self.film(functional.silu(context))
        scale, shift = film.reshape(*film.shape, *(1,) * self.grid_axes).chunk(2, 1)
        u = (1 + scale) * self.norm_out(u) + shift
        return self.skip(h) + self.conv_out(self.dropout(functional.silu(u)))


class _SelfAttention(nn.Module):
    """Multi-head self-attention over the grid points, residual, zero-initialised
    output projection."""

    def __init__(self, grid_axes: int, channels: int, num_heads: int, groups: int):
        super().__init__()
        conv = _CONVOLUTIONS[grid_axes]
        self.num_heads = num_heads
        self.norm = _group_norm(channels, groups)
        self.qkv = conv(channels, 3 * channels, 1)
        self.proj = _zero(conv(channels, channels, 1))

    def forward(self, h: Tensor) -> Tensor:
        points = math.prod(h.shape[2:])
        qkv = self.qkv(self.norm(h)).reshape(h.shape[0], 3, self.num_heads, -1, points)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # (batch, heads, points, dim)
        out = functional.scaled_dot_product_attention(q, k, v)
        return h + self.proj(out.transpose(-1, -2).reshape(h.shape))


class _Upsample(nn.Module):
    """Nearest-neighbour upsampling to a given size, then a 3x3 convolution."""

    def __init__(self, grid_axes: int, channels: int, padding_mode: str = "zeros"):
        super().__init__()
        self.conv = _conv3(grid_axes, channels, channels, padding_mode)

    def forward(self, h: Tensor, size: torch.Size) -> Tensor:
        return self.conv(functional.interpolate(h, size=tuple(size), mode="nearest"))


class UNet(nn.Module):
    r"""U-Net vector field ``net(z, condition, time)`` for parameter fields (the
    module docstring gives the architecture and the conditioning).

    Args:
        input_dim: dimension of ``z``, ``prod(shape)``.
        condition_dim: condition inputs (embedded ``x``, plus 1 null-condition
            flag with condition dropout; 0: unconditional).
        shape: the field, ``(C, H, W)``; ``(C, L)`` for 1-D signals,
            ``(C, D, H, W)`` for volumes.
        channels: width of each level, from the finest grid to the coarsest;
            the grid is halved between levels.
        blocks_per_level: residual blocks per level in the encoder (the decoder
            has one more per level).
        attention: self-attention at the lowest resolution.
        num_heads: attention heads (must divide ``channels[-1]``).
        norm_groups: groups of the group norms, at most (the largest divisor of
            the width up to it).
        dropout: dropout inside the residual blocks.
        condition_shape: shape of the embedded ``x`` (before flattening, without
            the null flag); flat if None. The trainers pass it.
        condition_as: ``"auto"``, ``"channels"`` or ``"vector"``: how the
            condition enters (module docstring).
        padding_mode: how the 3-wide convolutions pad the grid's edges:
            ``"zeros"``, or ``"circular"`` for periodic fields (a field on a
            torus, e.g. one generated by FFT: the network is then equivariant
            to circular shifts by ``2^(levels - 1)`` points), ``"reflect"``,
            ``"replicate"`` (:class:`torch.nn.Conv2d`).

    Raises:
        ValueError: for a missing or wrong ``shape`` (its product must equal
            ``input_dim``), non-positive sizes, ``num_heads`` not dividing the
            last width, a condition that does not fit ``condition_as``, or an
            unknown ``padding_mode``.
    """

    #: leading dimensions do not broadcast: inputs are ``(batch, ...)`` rows
    broadcasts_inputs = False
    #: :func:`~sbi_diffusion.nets.build_net` passes the embedded x's shape
    accepts_condition_shape = True

    def __init__(
        self,
        input_dim: int,
        condition_dim: int,
        shape: Sequence[int] | None = None,
        channels: Sequence[int] = (32, 64),
        blocks_per_level: int = 1,
        attention: bool = True,
        num_heads: int = 4,
        norm_groups: int = 8,
        dropout: float = 0.0,
        condition_shape: Sequence[int] | None = None,
        condition_as: str = "auto",
        padding_mode: str = "zeros",
    ):
        super().__init__()
        if padding_mode not in PADDING_MODES:
            raise ValueError(
                f"Unknown padding_mode {padding_mode!r}; pass one of {PADDING_MODES}."
            )
        self.shape = field_shape(shape, input_dim)
        grid = self.shape[1:]
        axes = len(grid)
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1 or blocks_per_level < 1:
            raise ValueError(
                "channels must be a non-empty sequence of positive widths and "
                f"blocks_per_level >= 1, got {channels} and {blocks_per_level}."
            )
        if attention and (num_heads < 1 or channels[-1] % num_heads):
            raise ValueError(
                f"num_heads ({num_heads}) must divide the last width "
                f"({channels[-1]}); e.g. channels=(32, 64), num_heads=4."
            )
        self.input_dim, self.condition_dim = input_dim, condition_dim
        self.condition_channels, flags = condition_layout(
            condition_dim, condition_shape, grid, condition_as
        )
        self.condition_size = condition_dim - flags
        context_dim = 4 * channels[0]
        self.time_embedding = SinusoidalTimeEmbedding(context_dim)
        vector_inputs = flags if self.condition_channels else condition_dim
        self.condition_embedding = (
            nn.Sequential(
                nn.Linear(vector_inputs, context_dim),
                nn.SiLU(),
                nn.Linear(context_dim, context_dim),
            )
            if vector_inputs > 0
            else None
        )

        def block(c_in: int, c_out: int) -> _ResidualBlock:
            return _ResidualBlock(
                axes, c_in, c_out, context_dim, norm_groups, dropout, padding_mode
            )

        in_channels = self.shape[0] + self.condition_channels
        self.input_conv = _conv3(axes, in_channels, channels[0], padding_mode)
        skip_channels, width = [channels[0]], channels[0]
        self.down = nn.ModuleList()
        for level, c in enumerate(channels):
            blocks = nn.ModuleList()
            for _ in range(blocks_per_level):
                blocks.append(block(width, c))
                width = c
                skip_channels.append(width)
            last = level == len(channels) - 1
            downsample = (
                None if last else _conv3(axes, width, width, padding_mode, stride=2)
            )
            if not last:
                skip_channels.append(width)
            self.down.append(nn.ModuleDict({"blocks": blocks, "sample": downsample}))
        self.middle_in = block(width, width)
        self.attention = (
            _SelfAttention(axes, width, num_heads, norm_groups) if attention else None
        )
        self.middle_out = block(width, width)
        self.up = nn.ModuleList()
        for level in reversed(range(len(channels))):
            blocks = nn.ModuleList()
            for _ in range(blocks_per_level + 1):
                blocks.append(block(width + skip_channels.pop(), channels[level]))
                width = channels[level]
            upsample = _Upsample(axes, width, padding_mode) if level > 0 else None
            self.up.append(nn.ModuleDict({"blocks": blocks, "sample": upsample}))
        self.output_norm = _group_norm(width, norm_groups)
        self.output_conv = _zero(_conv3(axes, width, self.shape[0], padding_mode))

    @classmethod
    def input_dim_of(cls, options: dict) -> int:
        """The parameter dimension that the options ``options`` describe,
        ``prod(shape)`` (to check options before the data are known).

        Raises:
            ValueError: if ``shape`` is missing or malformed.
        """
        return math.prod(field_shape(options.get("shape")))

    def _context(self, condition: Tensor, time: Tensor) -> Tensor:
        """The context embedding ``e`` ``(batch, 4 * channels[0])`` of rows of
        ``condition`` and ``time`` ``(batch,)``."""
        context = self.time_embedding(time)
        if self.condition_embedding is not None:
            vector = (
                condition[:, self.condition_size :]
                if self.condition_channels
                else condition
            )
            context = context + self.condition_embedding(vector)
        return context

    @property
    def cpu_rows(self) -> int:
        """Rows per network call on a CPU (:data:`CPU_ACTIVATION_FLOATS`)."""
        first_level = self.input_conv.out_channels * math.prod(self.shape[1:])
        return max(1, CPU_ACTIVATION_FLOATS // first_level)

    def forward(self, z: Tensor, condition: Tensor, time: Tensor) -> Tensor:
        """Evaluate on ``z`` ``(batch, input_dim)``, ``condition``
        ``(batch, condition_dim)`` (or one row for all) and ``time`` ``(batch,)``
        (or one time); returns ``(batch, input_dim)``. On a CPU in pieces of
        :attr:`cpu_rows` rows (module docstring)."""
        batch = z.shape[0]
        if condition.shape[0] != batch:
            condition = condition.expand(batch, -1)
        time = time.reshape(-1).expand(batch)
        rows = self.cpu_rows if z.device.type == "cpu" else batch
        if batch <= rows:
            return self._forward(z, condition, time)
        return torch.cat(
            [
                self._forward(
                    z[i : i + rows], condition[i : i + rows], time[i : i + rows]
                )
                for i in range(0, batch, rows)
            ]
        )

    def _forward(self, z: Tensor, condition: Tensor, time: Tensor) -> Tensor:
        """:meth:`forward` on rows of equal count in ``z``, ``condition`` and
        ``time``, in one call."""
        batch = z.shape[0]
        h = z.reshape(batch, *self.shape)
        if self.condition_channels:
            image = condition[:, : self.condition_size]
            grid = self.shape[1:]
            h = torch.cat([h, image.reshape(batch, -1, *grid)], dim=1)
        context = self._context(condition, time)
        if (
            h.device.type == "cpu"
            and h.dim() == 4
            and not torch.is_grad_enabled()
            and math.prod(self.shape[1:]) >= CPU_CHANNELS_LAST_POINTS
        ):
            h = h.contiguous(memory_format=torch.channels_last)
        h = self.input_conv(h)
        skips = [h]
        for level in self.down:
            for block in level["blocks"]:
                h = block(h, context)
                skips.append(h)
            if level["sample"] is not None:
                h = level["sample"](h)
                skips.append(h)
        h = self.middle_in(h, context)
        if self.attention is not None:
            h = self.attention(h)
        h = self.middle_out(h, context)
        for level in self.up:
            for block in level["blocks"]:
                h = block(torch.cat([h, skips.pop()], dim=1), context)
            if level["sample"] is not None:
                h = level["sample"](h, skips[-1].shape[2:])
        h = self.output_conv(functional.silu(self.output_norm(h)))
        return h.reshape(batch, self.input_dim)
