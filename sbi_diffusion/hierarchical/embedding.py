r"""Embeddings of one group's data (and of the global parameters).

Groups of trials are sets: their posterior does not depend on the trials'
order, so they are embedded by a permutation-invariant network (Zaheer et al.
2017, "Deep sets"), mean-pooled over the group's trials and told how many there
are:

.. math::
    e(x) = \rho\Big(\frac{1}{n} \sum_{k=1}^{T} m_k \phi(\tilde x_k),\;
    \frac{n}{T}\Big), \qquad n = \sum_k m_k,

with ``m_k`` the trial mask of the encoded group
(:class:`~sbi_diffusion.hierarchical.groups.GroupLayout`: 0 for an all-NaN
padding row) and ``x~_k`` the trial standardised by the mean and standard
deviation of all (non-padding) training trials. The embeddings standardise their
input themselves, so the denoisers built on them do not z-score ``x`` per entry
(which would treat trial positions differently and rescale the mask).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "MaskedSetEmbedding",
    "Standardize",
    "GlobalsAndGroup",
    "GroupSetEmbedding",
    "group_statistics",
]


def group_statistics(x: Tensor, has_trials: bool) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of the (non-padding) entries of groups ``x``,
    per feature ``d_x``; a constant feature gets standard deviation 1."""
    rows = x.reshape(-1, x.shape[-1])
    if has_trials:
        rows = rows[~torch.isnan(rows).all(-1)]
    mean, std = rows.mean(0), rows.std(0)
    return mean, torch.where(std < 1e-8, torch.ones_like(std), std)


class Standardize(nn.Module):
    """``(x - shift) / scale`` (a vector group, or the global parameters)."""

    def __init__(self, shift: Tensor, scale: Tensor):
        super().__init__()
        self.register_buffer("shift", shift.detach().clone().float())
        self.register_buffer("scale", scale.detach().clone().float())

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


def _masked_mean(features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of ``features`` ``(..., n, f)`` over the rows whose ``mask``
    ``(..., n, 1)`` is 1, and their count ``(..., 1)``."""
    count = mask.sum(-2)
    return (features * mask).sum(-2) / torch.clamp(count, min=1.0), count


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class MaskedSetEmbedding(nn.Module):
    """Permutation-invariant embedding of an encoded group of trials
    ``(batch, T, d_x + 1)`` (the module's docstring gives the equation).

    Args:
        trial_dim: ``d_x``.
        shift, scale: ``(d_x,)`` statistics of the training trials.
        hidden: width of ``phi`` and ``rho``.
        output_dim: size of the embedding.
    """

    def __init__(
        self,
        trial_dim: int,
        shift: Tensor,
        scale: Tensor,
        hidden: int = 64,
        output_dim: int = 16,
    ):
        super().__init__()
        self.standardize = Standardize(shift, scale)
        self.phi = _mlp([trial_dim, hidden, hidden, hidden])
        self.rho = _mlp([hidden + 1, hidden, output_dim])
        self.output_dim = output_dim

    def forward(self, x: Tensor) -> Tensor:
        values, mask = x[..., :-1], x[..., -1:]
        pooled, count = _masked_mean(self.phi(self.standardize(values)), mask)
        return self.rho(torch.cat([pooled, count / x.shape[-2]], -1))


class GroupSetEmbedding(nn.Module):
    r"""Permutation-invariant embedding of a block of up to ``k`` groups
    ``(batch, k, prod(encoded group shape) + 1)``
    (:class:`~sbi_diffusion.hierarchical.blocks.GroupBlocks`): the mean of the
    present groups' embeddings, told how many there are (Zaheer et al. 2017,
    with ``group_net`` as ``phi``),

    .. math::
        e(x_{1:k}) = \rho\Big(\frac{1}{m} \sum_{i=1}^{k} p_i\,
        \mathrm{group\_net}(x_i),\; \frac{m}{k}\Big),
        \qquad m = \sum_i p_i,

    with ``p_i`` the block's last column.

    Args:
        group_net: embedding of one encoded group.
        encoded_group_shape: shape of an encoded group.
        hidden: width of ``rho``.
        output_dim: size of the embedding.
    """

    def __init__(
        self,
        group_net: nn.Module,
        encoded_group_shape: tuple[int, ...],
        hidden: int = 64,
        output_dim: int = 32,
    ):
        super().__init__()
        self.group_net = group_net
        self.encoded_group_shape = tuple(encoded_group_shape)
        with torch.no_grad():
            probe = group_net(torch.zeros(1, *self.encoded_group_shape))
        group_dim = int(probe.reshape(1, -1).shape[1])
        self.standardize = Standardize(torch.zeros(group_dim), torch.ones(group_dim))
        self.rho = _mlp([group_dim + 1, hidden, output_dim])
        self.output_dim = output_dim

    def _pooled(self, x: Tensor) -> tuple[Tensor, Tensor]:
        batch, size = x.shape[0], x.shape[1]
        groups = x[..., :-1].reshape(batch * size, *self.encoded_group_shape)
        embedded = self.group_net(groups).reshape(batch, size, -1)
        return _masked_mean(embedded, x[..., -1:])

    @torch.no_grad()
    def standardize_on(self, blocks: Tensor) -> None:
        """Set the standardisation of the pooled group embeddings to their mean
        and standard deviation over ``blocks`` (training blocks, before
        training).

        At initialisation the group embeddings vary little with the data
        compared with their offsets; standardised, the data's signal reaches
        ``rho`` and the denoiser at unit scale from the first step (without it
        the training sat on a plateau that ignores ``x`` for hundreds of
        steps, on some seeds for all of them).
        """
        shift, scale = group_statistics(self._pooled(blocks)[0], has_trials=False)
        self.standardize.shift.copy_(shift)
        self.standardize.scale.copy_(scale)

    def forward(self, x: Tensor) -> Tensor:
        pooled, count = self._pooled(x)
        return self.rho(torch.cat([self.standardize(pooled), count / x.shape[1]], -1))


class GlobalsAndGroup(nn.Module):
    """Condition of the local model: the global parameters and a group, as one
    flat row ``(batch, d_global + prod(encoded_shape))``, embedded as
    ``concat(standardised g, group_net(x))``.

    Args:
        global_dim: ``d_global``.
        encoded_shape: shape of an encoded group.
        group_net: embedding of one encoded group.
        shift, scale: ``(d_global,)`` statistics of the global parameters.
    """

    def __init__(
        self,
        global_dim: int,
        encoded_shape: tuple[int, ...],
        group_net: nn.Module,
        shift: Tensor,
        scale: Tensor,
    ):
        super().__init__()
        self.global_dim = int(global_dim)
        self.encoded_shape = tuple(encoded_shape)
        self.group_net = group_net
        self.standardize = Standardize(shift, scale)

    def combine(self, global_theta: Tensor, group_embedding: Tensor) -> Tensor:
        """The embedding of rows whose group embeddings are already computed."""
        return torch.cat([self.standardize(global_theta), group_embedding], -1)

    def forward(self, condition: Tensor) -> Tensor:
        g = condition[:, : self.global_dim]
        x = condition[:, self.global_dim :].reshape(-1, *self.encoded_shape)
        return self.combine(g, self.group_net(x).reshape(x.shape[0], -1))
