r"""Blocks of several groups: the condition of a global model trained on
simulated data sets of ``k`` groups each.

A global model trained on single groups learns ``p(g | x_j)``, and the
composition over ``G`` groups adds up ``G`` learned gains in precision over the
prior: an error shared by the single-group posteriors, ``b`` of their standard
deviations, becomes about ``b sqrt(G)`` standard deviations of the composed
posterior (``benchmarks/hierarchical/README.md``). A global model trained on
data sets of ``k`` groups that share ``g`` learns ``p(g | x_{1:k})`` and is
composed over ``B = ceil(G / k)`` blocks of at most ``k`` groups,

.. math::
    p(g \mid x_{1:G}) \propto p(g)^{1 - B} \prod_{b=1}^{B}
    p(g \mid x_{\mathcal{B}_b}),

exact because the blocks are independent given ``g``; the same relative error
``b`` of a block posterior then costs ``b sqrt(G / k)``.

A block is encoded as one finite array ``(k, prod(encoded group shape) + 1)``:
row ``i`` holds group ``i``'s encoding
(:class:`~sbi_diffusion.hierarchical.groups.GroupLayout`), flattened, and a
last column that is 1 for a group and 0 for an empty slot (a block of fewer
than ``k`` groups, or a group excluded from a simulated data set). The global
model embeds it with
:class:`~sbi_diffusion.hierarchical.embedding.GroupSetEmbedding`, which is
invariant to the order of the groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sbi_diffusion.hierarchical.groups import GroupLayout

__all__ = ["GroupBlocks", "random_subsets"]


@dataclass(frozen=True)
class GroupBlocks:
    """Blocks of up to ``size`` groups of ``layout``.

    Args:
        layout: the shape of one group.
        size: ``k``, the number of groups per simulated data set.
    """

    layout: GroupLayout
    size: int

    @property
    def group_size(self) -> int:
        """Entries of one encoded group."""
        return math.prod(self.layout.encoded_shape)

    @property
    def encoded_shape(self) -> tuple[int, int]:
        """Shape of an encoded block: ``(k, prod(encoded group shape) + 1)``."""
        return (self.size, self.group_size + 1)

    def encode(self, x: Tensor, present: Tensor) -> Tensor:
        """Encoded blocks ``(n, k, group_size + 1)`` of the groups ``x``
        ``(n, k, *group_shape)``, of which ``present`` ``(n, k)`` are in the
        block (the others may hold anything, NaN included)."""
        n, k = present.shape
        mask = present.reshape(n, k, *[1] * (x.dim() - 2))
        groups = torch.where(mask, x, torch.zeros_like(x))
        encoded = self.layout.encode(groups.reshape(n * k, *x.shape[2:]))
        flat = encoded.reshape(n, k, -1) * present[..., None]
        return torch.cat([flat, present[..., None].to(flat.dtype)], -1)

    def partition(self, encoded_groups: Tensor) -> Tensor:
        """The ``G`` encoded groups ``(G, *encoded group shape)`` of one data set
        as ``B = ceil(G / k)`` encoded blocks ``(B, k, group_size + 1)``: in
        their order, in blocks whose sizes differ by at most one."""
        num_groups = encoded_groups.shape[0]
        num_blocks = math.ceil(num_groups / self.size)
        flat = encoded_groups.reshape(num_groups, -1)
        blocks = flat.new_zeros(num_blocks, self.size, self.group_size + 1)
        for b, piece in enumerate(flat.tensor_split(num_blocks)):
            blocks[b, : piece.shape[0], :-1] = piece
            blocks[b, : piece.shape[0], -1] = 1.0
        return blocks


def random_subsets(present: Tensor, generator: torch.Generator) -> Tensor:
    """A random proper subset of every row's groups: ``(n, k)``, of the ``m_i``
    groups ``present[i]`` holds, ``U{1, ..., m_i - 1}`` of them, chosen at
    random (all ``m_i`` for a row of one group).

    Trained on these besides the whole blocks, the global model also knows the
    blocks of fewer than ``k`` groups that :meth:`GroupBlocks.partition` makes
    when ``k`` does not divide ``G``.
    """
    count = present.sum(1)
    size = 1 + (torch.rand(count.shape, generator=generator) * (count - 1)).long()
    size = torch.where(count > 1, size, count)
    order = torch.rand(present.shape, generator=generator)
    order = torch.where(present, order, torch.full_like(order, 2.0))
    rank = order.argsort(1).argsort(1)
    return rank < size[:, None]
