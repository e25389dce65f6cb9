r"""The data of one group, as a hierarchical model's networks take it.

A group is either one vector ``(d_x,)`` or a set of exchangeable trials
``(T, d_x)``. Groups of trials may hold different numbers of trials: they are
padded to ``T`` rows with rows that are all NaN. Those rows are padding; a NaN
or inf anywhere else makes the group invalid. Since the trainers and posteriors
of :mod:`sbi_diffusion.inference` take finite data only, a group of trials is
*encoded* as ``(T, d_x + 1)``: the padding rows set to 0 and a last column that
is 1 for a trial and 0 for padding, which
:class:`~sbi_diffusion.hierarchical.embedding.MaskedSetEmbedding` reads as the
mask of its mean pooling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GroupLayout"]


@dataclass(frozen=True)
class GroupLayout:
    """The shape of one group and its finite encoding.

    Args:
        group_shape: ``(d_x,)`` for a vector per group, ``(T, d_x)`` for up to
            ``T`` trials per group.
    """

    group_shape: tuple[int, ...]

    @classmethod
    def of(cls, x: Tensor) -> GroupLayout:
        """The layout of simulations ``x`` ``(n, *group_shape)``.

        Raises:
            ValueError: if a group is neither a vector nor a set of trials.
        """
        if x.dim() not in (2, 3):
            raise ValueError(
                f"x has shape {tuple(x.shape)}; pass one group per row, as "
                "(num_simulations, d_x) or (num_simulations, num_trials, d_x)."
            )
        return cls(tuple(int(s) for s in x.shape[1:]))

    @property
    def has_trials(self) -> bool:
        """Whether a group is a set of trials ``(T, d_x)``."""
        return len(self.group_shape) == 2

    @property
    def trial_dim(self) -> int:
        """``d_x``."""
        return self.group_shape[-1]

    @property
    def encoded_shape(self) -> tuple[int, ...]:
        """Shape of an encoded group: ``(T, d_x + 1)`` or ``(d_x,)``."""
        if self.has_trials:
            return (self.group_shape[0], self.trial_dim + 1)
        return self.group_shape

    def padding(self, x: Tensor) -> Tensor:
        """``(n, T)``: which trial rows of ``x`` ``(n, T, d_x)`` are padding."""
        return torch.isnan(x).all(-1)

    def valid(self, x: Tensor) -> Tensor:
        """``(n,)``: groups that are finite apart from padding rows and hold at
        least one trial."""
        if not self.has_trials:
            return torch.isfinite(x).all(-1)
        pad = self.padding(x)
        finite = torch.isfinite(x).all(-1) | pad
        return finite.all(-1) & ~pad.all(-1)

    def encode(self, x: Tensor) -> Tensor:
        """Finite encoding of valid groups ``x`` ``(n, *group_shape)``:
        ``(n, *encoded_shape)`` (see the module's docstring)."""
        if not self.has_trials:
            return x
        pad = self.padding(x)
        values = torch.where(pad[..., None], torch.zeros_like(x), x)
        return torch.cat([values, (~pad).to(x.dtype)[..., None]], -1)

    def check_groups(self, x_groups: Tensor) -> Tensor:
        """Observed groups ``(G, *group_shape)``, checked and encoded.

        Raises:
            ValueError: for a per-group shape other than the training one, no
                group, or a group with NaN or inf values outside padding rows
                (or no trial).
        """
        x = torch.as_tensor(x_groups, dtype=torch.float32)
        if tuple(x.shape[1:]) != self.group_shape or x.dim() < 2:
            raise ValueError(
                f"x has shape {tuple(x.shape)}, but the model was trained on "
                f"groups of shape {self.group_shape}. Pass x of shape "
                f"(num_groups, {', '.join(map(str, self.group_shape))})."
            )
        if x.shape[0] == 0:
            raise ValueError("x holds no group (G = 0); pass at least one group.")
        bad = ~self.valid(x)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} groups of x contain NaN or inf values outside "
                "padding rows (a trial row that is all NaN), or no trial: "
                f"groups {bad.nonzero().flatten()[:10].tolist()}."
            )
        return self.encode(x)
