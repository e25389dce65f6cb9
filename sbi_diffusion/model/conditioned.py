r"""A denoiser with its condition fixed: the function samplers integrate.

``ConditionedDenoiser(model, e(x))`` is the ``DenoiseFn``
(:mod:`sbi_diffusion.model.interface`) ``(z, t) -> theta_hat(z, t | x)`` of one
observation, of one observation per
batch row (``sample_batched``), or of ``n`` observations with ``s`` rows each
(sampling every single-trial posterior at once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from sbi_diffusion.model.rows import denoise_rows_in_pieces

if TYPE_CHECKING:
    from sbi_diffusion.model.interface import ConditionalDenoiser

__all__ = ["ConditionedDenoiser"]


class ConditionedDenoiser(nn.Module):
    """A :class:`Denoiser` with its condition fixed: ``(z, t) -> x_hat``.

    Implements :class:`sbi_diffusion.path.vector_field.DenoiseFn`; the condition is
    embedded once. ``embedding`` has one row (broadcast over ``z``) or as many
    rows as ``z``; with ``rows_per_condition = s`` it has ``n`` rows and ``z``
    has ``n * s``, ``s`` consecutive rows per condition
    (:meth:`Denoiser.denoise_grouped`). With ``max_rows`` the batch goes through
    the network in pieces of at most that many rows (see
    :data:`CPU_NETWORK_ROWS`).
    """

    def __init__(
        self,
        denoiser: ConditionalDenoiser,
        embedding: Tensor,
        max_rows: int | None = None,
        rows_per_condition: int | None = None,
    ):
        super().__init__()
        self.denoiser = denoiser
        self.embedding = embedding
        self.schedule = denoiser.schedule
        self.max_rows = None if max_rows is None else max(1, int(max_rows))
        self.rows_per_condition = rows_per_condition

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        s = self.rows_per_condition
        if s is not None and hasattr(self.denoiser, "denoise_grouped"):
            n = self.embedding.shape[0]
            if z.shape[0] != n * s:
                raise ValueError(
                    f"Expected {n} conditions x {s} rows = {n * s} rows of z, "
                    f"got {z.shape[0]}."
                )
            grouped = self.denoiser.denoise_grouped(
                z.reshape(n, s, -1), self.embedding, t, self.max_rows
            )
            return grouped.reshape(z.shape)
        return denoise_rows_in_pieces(
            self.denoiser.denoise_embedded,
            z,
            self._row_embedding(),
            t,
            self.max_rows,
        )

    def _row_embedding(self) -> Tensor:
        """The condition of each row of ``z`` (or one row, broadcast)."""
        if self.rows_per_condition is None:
            return self.embedding
        return self.embedding.repeat_interleave(self.rows_per_condition, dim=0)

    def restricted_to(self, rows: Tensor) -> ConditionedDenoiser:
        """The denoiser for the batch rows ``rows`` (per-row conditions kept)."""
        if self.embedding.shape[0] == 1:
            return self
        embedding = self._row_embedding()[rows]
        return ConditionedDenoiser(self.denoiser, embedding, self.max_rows)
