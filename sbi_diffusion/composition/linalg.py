r"""Symmetric-matrix helpers for denoising precisions and covariances.

Denoising precisions ``P = Cov[theta_0 | z_t]^{-1}`` estimated from samples or
from a network's Jacobian are symmetric only up to rounding and can be
ill-conditioned or indefinite. These helpers symmetrise ``M`` as
``(M + M^T) / 2``, decompose it in float64 and bound its eigenvalues before
inverting, ``M^{-1} = V \operatorname{diag}(1 / \lambda) V^T`` with each
``lambda`` clamped to ``[low, high]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "eye_like",
    "symmetrize",
    "symmetric_eigh",
    "clamp_eigenvalues",
    "inverse_clamped",
]


def eye_like(d: int, ref: Tensor) -> Tensor:
    """The ``(d, d)`` identity with the dtype and device of ``ref``."""
    return torch.eye(d, dtype=ref.dtype, device=ref.device)


def symmetrize(m: Tensor) -> Tensor:
    """The symmetric part ``(m + m^T) / 2`` of (a batch of) square matrices."""
    return 0.5 * (m + m.transpose(-1, -2))


def symmetric_eigh(m: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of the symmetric part of ``m`` in float64.

    Non-finite entries (a network evaluated where it is unreliable) are set to
    zero, so that direction counts as uninformative downstream; where LAPACK
    fails to converge on an ill-conditioned matrix, the matrices are scaled to
    unit norm and retried with a jitter of ``1e-10``.

    Returns:
        Eigenvalues ``(..., d)`` and eigenvectors ``(..., d, d)`` (columns), float64.
    """
    m = symmetrize(m).double()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    try:
        return torch.linalg.eigh(m)
    except RuntimeError:  # torch.linalg.LinAlgError is a RuntimeError
        scale = m.abs().amax(dim=(-1, -2), keepdim=True).clamp_min(1e-300)
        eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
        vals, vecs = torch.linalg.eigh(m / scale + 1e-10 * eye)
        return vals * scale[..., 0], vecs


def _eigenvalue_bound(bound: Tensor | float, vals: Tensor) -> Tensor:
    """``bound`` in float64, a scalar or per matrix, broadcastable to ``vals``."""
    bound = torch.as_tensor(bound, dtype=torch.float64, device=vals.device)
    if bound.dim() > 0:
        bound = bound.reshape(bound.shape + (1,) * (vals.dim() - bound.dim()))
    return bound


def clamp_eigenvalues(
    m: Tensor, low: Tensor | float, high: Tensor | float | None = None
) -> tuple[Tensor, Tensor, torch.dtype]:
    """Symmetrise ``m`` and clamp its eigenvalues to ``[low, high]`` (float64).

    Args:
        m: ``(..., d, d)``.
        low: lower bound, a scalar or one per matrix ``(...)``.
        high: upper bound (None: none), a scalar or one per matrix.

    Returns:
        The clamped eigenvalues ``(..., d)`` and eigenvectors ``(..., d, d)``
        (float64), and the dtype of ``m``.
    """
    dtype = m.dtype
    vals, vecs = symmetric_eigh(m)
    vals = torch.maximum(vals, _eigenvalue_bound(low, vals))
    if high is not None:
        vals = torch.minimum(vals, _eigenvalue_bound(high, vals))
    return vals, vecs, dtype


def inverse_clamped(
    m: Tensor, low: Tensor | float, high: Tensor | float | None = None
) -> Tensor:
    """``m^{-1}`` after symmetrising and clamping the eigenvalues of ``m`` to
    ``[low, high]`` (see :func:`clamp_eigenvalues`), in the dtype of ``m``."""
    vals, vecs, dtype = clamp_eigenvalues(m, low, high)
    return ((vecs / vals[..., None, :]) @ vecs.transpose(-1, -2)).to(dtype)
