r"""An ensemble of denoisers trained on the same simulations: their mean estimate.

For ``K`` denoisers ``theta_hat_k(z_t, t | x)`` of the same Gaussian path and
the same standardised parameter space (the same simulations, different training
seeds), the ensemble's estimate is the mean

.. math::
    \hat\theta(z_t, t \mid x) = \frac{1}{K} \sum_{k=1}^{K}
    \hat\theta_k(z_t, t \mid x),

the deep-ensemble average of Lakshminarayanan et al. 2017 ("Simple and
Scalable Predictive Uncertainty Estimation using Deep Ensembles") applied to
the regression target ``E[theta | z_t, x]``. Since the score
``(alpha theta_hat - z) / sigma^2`` and the probability-flow drift are affine in
``theta_hat`` at fixed ``(z, t)``, the ensemble's score is the mean of the
members' scores. The part of each member's error that comes from its
initialisation and its mini-batches shrinks by up to ``sqrt(K)``; the part
that comes from the finite simulations is shared by all members and stays.
This matters where errors add up: the composition over ``G`` groups or trials
(:mod:`sbi_diffusion.composition`) sums ``G`` errors of the single-group
estimate that have the same sign (``benchmarks/hierarchical/README.md``).

:class:`DenoiserEnsemble` implements
:class:`~sbi_diffusion.model.interface.ConditionalDenoiser`, so posteriors,
composition and guidance take it in place of one denoiser. Its condition
embedding is the concatenation of the members' embeddings, each member
reading its own slice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from sbi_diffusion.model.conditioned import ConditionedDenoiser
from sbi_diffusion.model.interface import ConditionalDenoiser
from sbi_diffusion.model.rows import denoise_rows_in_pieces
from sbi_diffusion.path.vector_field import as_time

__all__ = ["DenoiserEnsemble"]

#: times at which the members' schedules must agree
_SCHEDULE_CHECK_TIMES = 5


def _check_members(members: Sequence[ConditionalDenoiser]) -> None:
    """Raise if the members do not share the parameter space and the path."""
    if len(members) < 1:
        raise ValueError("A DenoiserEnsemble needs at least one member.")
    first = members[0]
    schedule = first.schedule
    times = torch.linspace(
        float(schedule.t_min), float(schedule.t_max), _SCHEDULE_CHECK_TIMES
    )
    for index, member in enumerate(members[1:], start=1):
        mismatch = None
        if member.theta_dim != first.theta_dim:
            mismatch = f"theta_dim {member.theta_dim} != {first.theta_dim}"
        elif tuple(member.condition_shape) != tuple(first.condition_shape):
            mismatch = (
                f"condition_shape {tuple(member.condition_shape)} != "
                f"{tuple(first.condition_shape)}"
            )
        elif not (
            torch.allclose(member.theta_shift, first.theta_shift)
            and torch.allclose(member.theta_scale, first.theta_scale)
        ):
            mismatch = "the z-scoring of theta differs (other simulations?)"
        elif not all(
            torch.allclose(a, b)
            for a, b in zip(
                member.schedule.derivatives(times)[:2],
                schedule.derivatives(times)[:2],
                strict=True,
            )
        ):
            mismatch = "the schedule alpha(t), sigma(t) differs"
        if mismatch is not None:
            raise ValueError(
                f"Member {index} of the ensemble does not match member 0: "
                f"{mismatch}. Train every member with the same options on the "
                "same simulations, changing only the seed."
            )


class DenoiserEnsemble(nn.Module):
    r"""The mean of ``K`` conditional denoisers of one path and parameter space.

    Args:
        members: trained denoisers
            (:class:`~sbi_diffusion.model.interface.ConditionalDenoiser`, e.g.
            :class:`~sbi_diffusion.model.Denoiser`) of the same simulations,
            schedule and z-scoring.

    Raises:
        ValueError: for no members, or members whose parameter dimension,
            condition shape, z-scoring or schedule differ.
    """

    def __init__(self, members: Sequence[ConditionalDenoiser]):
        super().__init__()
        members = list(members)
        _check_members(members)
        self.members = nn.ModuleList(members)
        first = members[0]
        self.schedule = first.schedule
        self.theta_dim = first.theta_dim
        self.input_shape = first.input_shape
        self.condition_shape = first.condition_shape
        self._slices: list[slice] | None = None

    # ------------------------------------------------- parameter space

    @property
    def theta_shift(self) -> Tensor:
        return self.members[0].theta_shift

    @property
    def theta_scale(self) -> Tensor:
        return self.members[0].theta_scale

    def to_z(self, theta: Tensor) -> Tensor:
        """``(theta - shift) / scale`` as ``(batch, theta_dim)``."""
        return self.members[0].to_z(theta)

    def from_z(self, z: Tensor) -> Tensor:
        """``shift + scale * z``."""
        return self.members[0].from_z(z)

    def log_abs_det(self) -> Tensor:
        """``sum log scale`` of the z-scoring."""
        return self.members[0].log_abs_det()

    def transform_log_abs_det(self, theta: Tensor) -> Tensor:
        """``log |det dT/dtheta|`` of the members' change of variables."""
        return self.members[0].transform_log_abs_det(theta)

    # ------------------------------------------------------ conditions

    def _split(self, embedding: Tensor) -> list[Tensor]:
        """The members' slices of concatenated embeddings ``(..., sum e_k)``."""
        if self._slices is None:
            raise ValueError(
                "Embed the condition with DenoiserEnsemble.embed_condition (or "
                "null_condition) before denoising."
            )
        return [embedding[..., part] for part in self._slices]

    def _concatenate(self, parts: list[Tensor]) -> Tensor:
        """Concatenate the members' embeddings, remembering each one's slice."""
        sizes = [part.shape[-1] for part in parts]
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        self._slices = [
            slice(start, start + size)
            for start, size in zip(starts, sizes, strict=True)
        ]
        return torch.cat(parts, -1)

    def embed_condition(self, x: Tensor) -> Tensor:
        """Each member's embedding of ``x``, concatenated: ``(batch, sum e_k)``."""
        return self._concatenate([m.embed_condition(x) for m in self.members])

    def null_condition(self, batch: int) -> Tensor:
        """Each member's null embedding, concatenated.

        Raises:
            ValueError: if a member was trained without condition dropout.
        """
        return self._concatenate([m.null_condition(batch) for m in self.members])

    # ------------------------------------------------------- denoising

    def _mean(
        self, estimate: Callable[[ConditionalDenoiser, Tensor], Tensor], e: Tensor
    ) -> Tensor:
        """The mean over members of ``estimate(member, member's slice of e)``."""
        parts = self._split(e)
        total = estimate(self.members[0], parts[0])
        for member, part in zip(self.members[1:], parts[1:], strict=True):
            total = total + estimate(member, part)
        return total / len(self.members)

    def denoise_embedded(self, z: Tensor, embedding: Tensor, t: Tensor) -> Tensor:
        """The members' mean ``theta_hat`` ``(batch, dim)``."""
        return self._mean(lambda m, e: m.denoise_embedded(z, e, t), embedding)

    def denoise_trials(
        self, z: Tensor, embeddings: Tensor, t: Tensor, max_rows: int | None = None
    ) -> Tensor:
        """The members' mean ``theta_hat(z_b, t | x_i)`` ``(batch, n, dim)``."""
        return self._mean(lambda m, e: m.denoise_trials(z, e, t, max_rows), embeddings)

    def denoise_grouped(
        self, z: Tensor, embeddings: Tensor, t: Tensor, max_rows: int | None = None
    ) -> Tensor:
        """The members' mean ``theta_hat(z_ij, t | x_i)`` ``(n, s, dim)`` for
        ``z`` ``(n, s, dim)``, ``s`` rows per embedded condition."""
        n, s, d = z.shape

        def grouped(member: ConditionalDenoiser, e: Tensor) -> Tensor:
            if hasattr(member, "denoise_grouped"):
                return member.denoise_grouped(z, e, t, max_rows)
            rows = denoise_rows_in_pieces(
                member.denoise_embedded,
                z.reshape(n * s, d),
                e.repeat_interleave(s, dim=0),
                as_time(t, z.reshape(n * s, d)),
                max_rows,
            )
            return rows.reshape(n, s, d)

        return self._mean(grouped, embeddings)

    def bind(self, x: Tensor | None) -> ConditionedDenoiser:
        """The ``DenoiseFn`` of the mean estimate with the condition ``x`` fixed
        (None: the members' unconditional estimates)."""
        embedding = self.null_condition(1) if x is None else self.embed_condition(x)
        return ConditionedDenoiser(self, embedding)
