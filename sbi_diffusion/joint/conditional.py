r"""One conditional ``p(v_L | v_O)`` of a masked joint model as a denoiser.

:class:`JointConditionalDenoiser` is the ``DenoiseFn`` of the latent block for
fixed observed values; :class:`ConditionalView` presents the conditional with
the interface of the core :class:`~sbi_diffusion.model.Denoiser`, so the
core posterior, its samplers, densities and score transforms apply to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from sbi_diffusion.joint.masks import check_conditional_mask
from sbi_diffusion.model import ConditionedDenoiser
from sbi_diffusion.path.vector_field import as_time

if TYPE_CHECKING:
    from sbi_diffusion.joint.model import MaskedJointModel

__all__ = ["JointConditionalDenoiser", "ConditionalView", "as_rows"]


def as_rows(
    values: Tensor | Sequence[float], width: int, name: str, expected: str
) -> Tensor:
    """``values`` as float32 rows ``(batch, width)``; a single row ``(width,)``
    gets a batch dimension of one.

    Args:
        values: one row ``(width,)`` or rows ``(batch, width)``.
        width: the number of values per row.
        name: what ``values`` are, for the error message (plural).
        expected: the shapes to pass instead, for the error message.

    Raises:
        ValueError: ``"{name} have shape (...); pass {expected}."`` for any other
            shape.
    """
    values = torch.as_tensor(values, dtype=torch.float32)
    if values.dim() == 1:
        values = values[None]
    if values.dim() != 2 or values.shape[1] != width:
        raise ValueError(f"{name} have shape {tuple(values.shape)}; pass {expected}.")
    return values


class JointConditionalDenoiser(nn.Module):
    r"""``DenoiseFn`` of one conditional ``p(v_L | v_O)`` over its latent block.

    Maps ``z`` ``(B, |L|)`` and ``t`` to ``x_hat_L`` by placing ``z`` at the
    latent positions of the joint vector, the observed values at the others, and
    calling :meth:`MaskedJointModel.denoise_masked`; samplers, densities and
    score transforms use it like any other denoiser.

    Args:
        model: the masked joint model.
        condition_mask: ``(D,)``, True where observed.
        observed: standardised joint values ``(1, D)`` or ``(B, D)`` matching the
            batch of ``z``; NaN at an observed position marginalises it out.

    Raises:
        ValueError: for a mask of the wrong shape, a mask with no latent variable,
            or observed values of the wrong shape.
    """

    def __init__(
        self,
        model: MaskedJointModel,
        condition_mask: Tensor | Sequence[bool],
        observed: Tensor,
    ):
        super().__init__()
        mask = check_conditional_mask(condition_mask, model.dim)
        mask = mask.to(model.shift.device)
        observed = as_rows(
            observed,
            model.dim,
            "observed values",
            f"(1, {model.dim}) or (batch, {model.dim}) standardised joint values",
        )
        self.model = model
        self.schedule = model.schedule
        self.condition_mask = mask
        self.latent_index = (~mask).nonzero()[:, 0]
        self.observed_index = mask.nonzero()[:, 0]
        order = torch.cat([self.latent_index, self.observed_index])
        self.inverse_order = torch.argsort(order)
        observed = observed.to(mask.device)
        self.missing = torch.isnan(observed) & mask
        self.observed_values = torch.nan_to_num(observed[:, self.observed_index])
        self.has_missing = bool(self.missing.any())

    @property
    def num_latent(self) -> int:
        """Number of latent (sampled) variables."""
        return int(self.latent_index.numel())

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        """``x_hat`` of the latent block for ``z`` ``(B, |L|)``."""
        batch = z.shape[0]
        t = as_time(t, z)
        observed = self.observed_values.to(z.dtype).expand(batch, -1)
        full = torch.cat([z, observed], dim=1)[:, self.inverse_order]
        mask = self.condition_mask.expand(batch, -1)
        missing = self.missing.expand(batch, -1) if self.has_missing else None
        x_hat = self.model.denoise_masked(full, t, mask, missing)
        return x_hat[:, self.latent_index]


class ConditionalView(nn.Module):
    r"""One conditional of a joint model seen as a conditional denoiser.

    Presents ``p(v_L | v_O)`` with the interface of the core
    :class:`~sbi_diffusion.model.Denoiser` (``schedule``, ``theta_dim``,
    ``input_shape``, ``condition_shape``, ``to_z``/``from_z``/``log_abs_det`` and
    the z-scoring ``theta_shift``/``theta_scale`` of the latent block,
    ``embed_condition``, ``null_condition``, ``denoise_embedded``, ``bind``), so
    the core posterior, its samplers and the score transforms of
    :mod:`sbi_diffusion.guidance` apply to any conditional. The "embedding" of
    the observed values is the standardised joint row ``(B, D)``; its
    unconditional counterpart (``null_condition``) has every observed value
    missing (NaN), i.e. the marginal ``p(v_L)`` of the latent block, which plays
    the role of the prior in classifier-free guidance.

    Args:
        model: the masked joint model.
        condition_mask: ``(D,)``, True where observed; at least one False.
        input_shape: event shape of the latent block (``(num_latent,)`` if None).
        condition_shape: event shape of the observed values (``(num_observed,)``
            if None).
    """

    def __init__(
        self,
        model: MaskedJointModel,
        condition_mask: Tensor | Sequence[bool],
        input_shape: torch.Size | Sequence[int] | None = None,
        condition_shape: torch.Size | Sequence[int] | None = None,
    ):
        super().__init__()
        mask = check_conditional_mask(condition_mask, model.dim)
        mask = mask.to(model.shift.device)
        self.model = model
        self.schedule = model.schedule
        self.register_buffer("condition_mask", mask.clone(), persistent=False)
        self.register_buffer("latent_index", (~mask).nonzero()[:, 0], persistent=False)
        self.register_buffer("observed_index", mask.nonzero()[:, 0], persistent=False)
        self.theta_dim = int(self.latent_index.numel())
        num_observed = int(self.observed_index.numel())
        self.input_shape = torch.Size(
            (self.theta_dim,) if input_shape is None else input_shape
        )
        self.condition_shape = torch.Size(
            (num_observed,) if condition_shape is None else condition_shape
        )

    @property
    def theta_shift(self) -> Tensor:
        return self.model.shift[self.latent_index].reshape(1, -1)

    @property
    def theta_scale(self) -> Tensor:
        return self.model.scale[self.latent_index].reshape(1, -1)

    def to_z(self, theta: Tensor) -> Tensor:
        """Standardise latent values ``(*batch, *input_shape)``."""
        batch = theta.shape[: theta.dim() - len(self.input_shape)]
        flat = theta.reshape(*batch, self.theta_dim)
        return ((flat - self.theta_shift[0]) / self.theta_scale[0]).reshape(theta.shape)

    def from_z(self, z: Tensor) -> Tensor:
        """Latent values ``(B, num_latent)`` from standardised ``z``."""
        return self.theta_shift + self.theta_scale * z.reshape(z.shape[0], -1)

    def log_abs_det(self) -> Tensor:
        """``sum log scale`` of the latent block."""
        return torch.log(self.theta_scale).sum()

    #: the joint model learns its values as they are (no change of variables)
    transforms_theta = False

    def transform_log_abs_det(self, theta: Tensor) -> Tensor:
        """Zeros ``(batch,)``: no change of variables before the z-scoring."""
        return torch.zeros(theta.shape[0], dtype=theta.dtype, device=theta.device)

    def embed_condition(self, values: Tensor) -> Tensor:
        """Standardised joint rows ``(B, D)`` from observed values
        ``(B, *condition_shape)`` (NaN: missing)."""
        flat = values.reshape(values.shape[0], -1).to(self.model.shift)
        full = torch.zeros(flat.shape[0], self.model.dim, device=flat.device)
        full[:, self.observed_index] = flat
        return self.model.to_z(full)

    def null_condition(self, batch: int) -> Tensor:
        """Rows with every observed value missing: the latent block's marginal."""
        return torch.full(
            (batch, self.model.dim), math.nan, device=self.model.shift.device
        )

    def denoise_embedded(self, z: Tensor, embedding: Tensor, t: Tensor) -> Tensor:
        """``x_hat`` of the latent block given standardised joint rows."""
        if embedding.shape[0] != z.shape[0]:
            embedding = embedding.expand(z.shape[0], -1)
        return JointConditionalDenoiser(self.model, self.condition_mask, embedding)(
            z, t
        )

    def bind(self, values: Tensor | None) -> ConditionedDenoiser:
        """A ``DenoiseFn`` with the observed values fixed (None: the marginal)."""
        if values is None:
            return ConditionedDenoiser(self, self.null_condition(1))
        return ConditionedDenoiser(self, self.embed_condition(values))
