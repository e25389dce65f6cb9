r"""The declared interfaces: a denoising function, and a conditional denoiser.

Everything downstream of training (samplers, the probability-flow density,
i.i.d. composition, guidance, posteriors) works with the *denoised estimate*
of a Gaussian path ``z_t = alpha(t) theta + sigma(t) eps`` (Karras et al. 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models"):

.. math::
    \hat\theta(z_t, t \mid x) = E[\theta \mid z_t, x],

from which the score ``(alpha theta_hat - z) / sigma^2``, the noise and the
probability-flow drift follow (Tweedie's formula;
:mod:`sbi_diffusion.path.vector_field`).

Two protocols name what each consumer may rely on:

* :class:`DenoiseFn`: ``(z, t) -> theta_hat`` with the condition fixed, and its
  ``schedule``. Samplers and score transforms see only this.
* :class:`ConditionalDenoiser`: the trained model in its standardised
  parameter space, with the z-scoring of ``theta``, the embedding of ``x``, and
  batched evaluation for many conditions at once. Posteriors, composition and
  guidance see only this. :class:`~sbi_diffusion.model.Denoiser` implements it,
  as do the joint model's conditional views and the exact
  :class:`~sbi_diffusion.path.gaussian.GaussianDenoiser` used in tests.

Both are ``typing.Protocol`` classes, checked structurally: a new model needs
no base class, only these attributes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from sbi_diffusion.path.schedules import Schedule

__all__ = ["DenoiseFn", "ConditionalDenoiser"]


@runtime_checkable
class DenoiseFn(Protocol):
    """``theta_hat = denoise(z, t)`` for ``z`` ``(batch, dim)`` and ``t``
    ``(batch,)``, with the condition fixed, in standardised space.

    Optional attributes that samplers honour where present:
    ``evaluations_per_call`` (network evaluations one call costs, for guided or
    composed denoisers) and ``restricted_to(rows)`` (the same function on a
    subset of the batch rows, for denoisers with per-row conditions).
    """

    schedule: Schedule

    def __call__(self, z: Tensor, t: Tensor) -> Tensor: ...


@runtime_checkable
class ConditionalDenoiser(Protocol):
    r"""A conditional denoiser ``theta_hat(z_t, t | x)`` on a Gaussian path.

    Parameters live in a standardised space ``z = (T(theta) - shift) / scale``
    (``T`` the identity unless a change of variables is learned);
    conditions are embedded once (:meth:`embed_condition`) and then passed as
    embeddings.

    Attributes:
        schedule: the Gaussian path ``alpha(t)``, ``sigma(t)``.
        theta_dim: number of parameter entries (flattened).
        input_shape: event shape of ``theta``.
        condition_shape: event shape of ``x``.
        theta_shift: ``(theta_dim,)`` or broadcastable shift of the z-scoring.
        theta_scale: ``(theta_dim,)`` or broadcastable scale of the z-scoring.
    """

    schedule: Schedule
    theta_dim: int
    input_shape: torch.Size
    condition_shape: torch.Size

    @property
    def theta_shift(self) -> Tensor: ...

    @property
    def theta_scale(self) -> Tensor: ...

    def to_z(self, theta: Tensor) -> Tensor:
        """``(theta - shift) / scale`` as ``(batch, theta_dim)``."""
        ...

    def from_z(self, z: Tensor) -> Tensor:
        """``shift + scale * z``."""
        ...

    def log_abs_det(self) -> Tensor:
        """``sum log scale``: ``log p(u) = log p(z) - log_abs_det``."""
        ...

    def transform_log_abs_det(self, theta: Tensor) -> Tensor:
        """``log |det dT/dtheta|`` ``(batch,)`` of the change of variables
        ``u = T(theta)`` before the z-scoring (zeros without one):
        ``log p(theta) = log p(u) + transform_log_abs_det(theta)``."""
        ...

    def embed_condition(self, x: Tensor) -> Tensor:
        """Embeddings ``(batch, e)`` of raw conditions ``(batch, *condition_shape)``."""
        ...

    def denoise_embedded(self, z: Tensor, embedding: Tensor, t: Tensor) -> Tensor:
        """``theta_hat`` for ``z`` ``(batch, dim)``, embeddings ``(batch, e)`` or
        ``(1, e)`` and times ``(batch,)`` or scalar."""
        ...

    def denoise_trials(
        self, z: Tensor, embeddings: Tensor, t: Tensor, max_rows: int | None = None
    ) -> Tensor:
        """``theta_hat(z_b, t | x_i)`` for every row ``b`` and condition ``i``:
        ``(batch, n, dim)``."""
        ...

    def null_condition(self, batch: int) -> Tensor:
        """The unconditional ("no observation") embedding, ``(batch, e)``."""
        ...

    def bind(self, x: Tensor | None) -> DenoiseFn:
        """The :class:`DenoiseFn` with the condition ``x`` fixed (None: the
        unconditional estimate)."""
        ...
