r"""Evaluating a denoiser on many rows: pairs of parameters and conditions.

Composing ``n`` i.i.d. trials needs ``x_hat(z_b, t_b | x_i)`` for every row ``b``
of a batch and every trial ``i`` (Geffner et al. 2023, "Compositional
score modeling for simulation-based inference"; Linhart et al. 2024). These
helpers lay such pairs out as flat rows, batch-major, and push them through a
network in pieces that bound the memory and stay in a CPU's cache.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_diffusion.path.vector_field import as_time

__all__ = [
    "CPU_NETWORK_ROWS",
    "default_network_rows",
    "expand_trial_rows",
    "denoise_rows_in_pieces",
    "denoise_trials_flat",
]


#: rows per network call for large batches on a CPU (composition of many trials,
#: GAUSS's single-trial samples): pieces of a few thousand rows stay in cache
#: (timed by ``benchmarks/iid/time_network_rows.py``).
CPU_NETWORK_ROWS = 4096


def default_network_rows(device: torch.device | str) -> int | None:
    """Rows per network call on ``device``: :data:`CPU_NETWORK_ROWS` on a CPU,
    None (one call) on an accelerator, which wants large batches."""
    return CPU_NETWORK_ROWS if torch.device(device).type == "cpu" else None


def expand_trial_rows(
    z: Tensor, embeddings: Tensor, t: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``(z_b, e_i, t_b)`` for every pair of a row ``b`` of ``z`` ``(batch,
    d)`` and a condition ``i`` of ``embeddings`` ``(n, e)``; ``t`` is
    ``(batch,)`` or scalar. Returns ``(batch * n, d)``, ``(batch * n, e)``, ``(batch *
    n,)``, ordered batch-major."""
    b, n, d = z.shape[0], embeddings.shape[0], z.shape[-1]
    zz = z[:, None, :].expand(b, n, d).reshape(b * n, d)
    ee = embeddings[None].expand(b, n, embeddings.shape[-1]).reshape(b * n, -1)
    tt = as_time(t, z).expand(b)[:, None].expand(b, n).reshape(b * n)
    return zz, ee, tt


def denoise_rows_in_pieces(
    denoise_embedded,
    z: Tensor,
    embedding: Tensor,
    t: Tensor,
    max_rows: int | None = None,
) -> Tensor:
    """``denoise_embedded(z, embedding, t)`` on flat rows ``z`` ``(batch, d)``,
    ``embedding`` ``(batch, e)`` or ``(1, e)`` and ``t`` ``(batch,)`` or scalar,
    in pieces of at most ``max_rows`` rows (one call if None)."""
    if max_rows is None or z.shape[0] <= max_rows:
        return denoise_embedded(z, embedding, t)
    t = as_time(t, z).expand(z.shape[0])
    embedding = embedding.expand(z.shape[0], -1)
    step = max(1, int(max_rows))
    return torch.cat(
        [
            denoise_embedded(z[i : i + step], embedding[i : i + step], t[i : i + step])
            for i in range(0, z.shape[0], step)
        ]
    )


def denoise_trials_flat(
    denoise_embedded,
    z: Tensor,
    embeddings: Tensor,
    t: Tensor,
    max_rows: int | None = None,
) -> Tensor:
    """``denoise_embedded(z, e_i, t)`` for every row of ``z`` ``(batch, d)`` and
    every condition ``e_i`` of ``embeddings`` ``(n, e)``: ``(batch, n, d)``.

    Works with any ``denoise_embedded(z, embedding, t)`` on flat rows. The
    ``batch * n`` rows are evaluated in pieces of at most ``max_rows`` (all at
    once if None).
    """
    b, n = z.shape[0], embeddings.shape[0]
    zz, ee, tt = expand_trial_rows(z, embeddings, t)
    out = denoise_rows_in_pieces(denoise_embedded, zz, ee, tt, max_rows)
    return out.reshape(b, n, z.shape[-1])
