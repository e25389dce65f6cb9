r"""How many rows a sampling or validation call evaluates at once.

A network call on ``n`` rows holds activations that grow with ``n`` times the
size of a row: for a residual MLP on a few parameters ``n = 10^4`` rows are
cheap, for a U-Net on a 64x64 field they are gigabytes per layer. The default
bound on rows is therefore set by the number of parameter values per call,

.. math::
    n_{max} = \max\big(1, \lfloor E / d \rfloor\big), \qquad E = 2^{21},

for parameters of dimension ``d``: 512 rows of a 64x64 field, 2048 of a 32x32
one, and the usual 10,000 (:data:`DEFAULT_SAMPLING_ROWS`) for up to 209
dimensions.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_SAMPLING_ROWS",
    "VALUES_PER_CALL",
    "rows_per_call",
    "sampling_batch_size",
]

VALUES_PER_CALL = 2**21
"""Parameter values (rows times dimension) evaluated per network call, at most,
by default."""

DEFAULT_SAMPLING_ROWS = 10_000
"""Rows sampled at once, at most, by default."""


def rows_per_call(row_size: int, max_rows: int | None = None) -> int:
    """Rows of ``row_size`` values that fit :data:`VALUES_PER_CALL`, at least 1
    and at most ``max_rows`` (no bound if None)."""
    rows = max(1, VALUES_PER_CALL // max(1, int(row_size)))
    return rows if max_rows is None else min(rows, int(max_rows))


def sampling_batch_size(batch_size: int | None, theta_dim: int) -> int:
    """Rows a posterior samples at once: ``batch_size`` if given, else
    :func:`rows_per_call` of ``theta_dim`` up to :data:`DEFAULT_SAMPLING_ROWS`.

    Raises:
        ValueError: if ``batch_size`` is below 1.
    """
    if batch_size is None:
        return rows_per_call(theta_dim, DEFAULT_SAMPLING_ROWS)
    if int(batch_size) < 1:
        raise ValueError(f"max_sampling_batch_size must be >= 1, got {batch_size}.")
    return int(batch_size)
