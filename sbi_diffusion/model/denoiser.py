r"""The denoiser: network + schedule + parameterisation.

:class:`Denoiser` holds the z-scoring of ``theta`` and ``x`` fitted on the
training data, the (optional) embedding net for ``x``, the vector-field network,
the schedule and the parameterisation, and gives the preconditioned denoised
estimate (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Eq. 7)

.. math::
    \hat\theta(z_t, t \mid x) = c_{skip}(t) z_t
    + c_{out}(t) F\big(c_{in}(t) z_t,\; e(x),\; c_{noise}(t)\big)

in standardised parameter space, and the weighted denoising loss it is trained
with. It implements :class:`~sbi_diffusion.model.interface.ConditionalDenoiser`;
its base :class:`~sbi_diffusion.model.sbi_estimator.SbiVectorFieldEstimator`
presents it to sbi as a ``ConditionalVectorFieldEstimator``, so sbi's own
``VectorFieldPosterior`` accepts it too.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sbi_diffusion.model.conditioned import ConditionedDenoiser
from sbi_diffusion.model.loss_draws import LossDraws
from sbi_diffusion.model.rows import (
    default_network_rows,
    denoise_rows_in_pieces,
    denoise_trials_flat,
)
from sbi_diffusion.model.sbi_estimator import SbiVectorFieldEstimator
from sbi_diffusion.path.parameterizations import Parameterization, PathPoint
from sbi_diffusion.path.schedules import Schedule
from sbi_diffusion.path.vector_field import as_time
from sbi_diffusion.path.weightings import check_weighting, loss_weight

__all__ = ["Denoiser"]


def _column(v: Tensor, ndim: int) -> Tensor:
    return v.reshape(v.shape + (1,) * (ndim - v.dim()))


def _shared_row(rows: Tensor) -> Tensor | None:
    """The one row ``(1, e)`` that every row of ``rows`` ``(batch, e)`` equals, or
    None. Rows that take gradients count as shared only where they are one row
    expanded (stride 0), so that ``rows[:1]`` passes the gradient on unchanged."""
    if rows.shape[0] == 1 or rows.stride(0) == 0:
        return rows[:1]
    if not rows.requires_grad and bool((rows == rows[:1]).all()):
        return rows[:1]
    return None


class Denoiser(SbiVectorFieldEstimator):
    """Conditional denoiser ``x_hat(z_t, t | x)`` for parameters ``theta``.

    Args:
        net: network ``net(z, condition_embedding, time) -> output`` on flat
            ``(batch, dim)`` inputs.
        schedule: the Gaussian path.
        parameterization: what the network predicts.
        input_shape: event shape of ``theta``.
        condition_shape: event shape of ``x``.
        embedding_net: network embedding (z-scored) ``x``; identity if None.
        weighting: loss weighting (see :mod:`sbi_diffusion.path.weightings`).
        theta_shift, theta_scale: z-scoring of ``theta``.
        x_shift, x_scale: z-scoring of ``x``.
        condition_dropout: probability of replacing the condition by a learned
            null embedding in training (enables unconditional/prior scores and
            classifier-free guidance).
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        parameterization: Parameterization,
        input_shape: torch.Size,
        condition_shape: torch.Size,
        embedding_net: nn.Module | None = None,
        weighting: str = "natural",
        theta_shift: Tensor | None = None,
        theta_scale: Tensor | None = None,
        x_shift: Tensor | None = None,
        x_scale: Tensor | None = None,
        condition_dropout: float = 0.0,
        condition_embedding_dim: int | None = None,
    ) -> None:
        super().__init__(
            net,
            schedule,
            input_shape,
            condition_shape,
            embedding_net=embedding_net,
            theta_shift=theta_shift,
            theta_scale=theta_scale,
        )
        self.parameterization = parameterization
        self.weighting = check_weighting(weighting)
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(
                f"condition_dropout must be in [0, 1), got {condition_dropout}."
            )
        self.condition_dropout = float(condition_dropout)
        self.register_buffer("mean_0", torch.zeros(1))
        self.register_buffer("std_0", torch.ones(1))
        self.register_buffer(
            "x_shift",
            torch.zeros(1, *condition_shape)
            if x_shift is None
            else x_shift.reshape(1, *condition_shape).clone(),
        )
        self.register_buffer(
            "x_scale",
            torch.ones(1, *condition_shape)
            if x_scale is None
            else x_scale.reshape(1, *condition_shape).clone(),
        )
        if condition_embedding_dim is None:
            with torch.no_grad():
                condition_embedding_dim = (
                    self.embedding_net(torch.zeros(2, *condition_shape))
                    .reshape(2, -1)
                    .shape[-1]
                )
        self.null_embedding = nn.Parameter(torch.zeros(condition_embedding_dim))
        # With condition dropout the network takes one more condition input: 0
        # with an observation, 1 for the null condition. Without it a null
        # embedding near zero is indistinguishable from an observation near the
        # data mean (z-scored x = 0), whose posterior then widens towards the
        # prior. The net must take ``condition_embedding_dim + 1`` inputs.
        self.null_flag = self.condition_dropout > 0
        self.theta_dim = int(torch.Size(input_shape).numel())

    # ------------------------------------------------------------------ core

    def path_point(self, t: Tensor, columns: bool = False) -> PathPoint:
        """Schedule values and derivatives at times ``t`` ``(batch,)``; as
        ``(batch, 1)`` columns (broadcasting against ``(batch, dim)``) if
        ``columns``."""
        values = self.schedule.derivatives(t)
        if columns:
            values = [_column(v, 2) for v in values]
        return PathPoint(*values)

    def embed_condition(self, x: Tensor) -> Tensor:
        """z-score ``x`` of shape ``(batch, *condition_shape)`` and embed it,
        flattened to ``(batch, e)`` (with a trailing 0, the "observed" flag, for
        models with condition dropout)."""
        embedding = self.embedding_net((x - self.x_shift) / self.x_scale)
        batch_shape = x.shape[: x.dim() - len(self.condition_shape)]
        embedding = embedding.reshape(*batch_shape, -1)
        if getattr(self, "null_flag", False):
            embedding = torch.cat(
                [embedding, embedding.new_zeros(*embedding.shape[:-1], 1)], -1
            )
        return embedding

    def _null_condition_row(self) -> Tensor:
        """The null condition ``(e,)``: the learned embedding (and the flag 1)."""
        if getattr(self, "null_flag", False):
            return torch.cat([self.null_embedding, self.null_embedding.new_ones(1)])
        return self.null_embedding

    def null_condition(self, batch: int) -> Tensor:
        """The learned null embedding, for unconditional (prior) estimates.

        Raises:
            ValueError: if the model was not trained with condition dropout.
        """
        if self.condition_dropout <= 0:
            raise ValueError(
                "This model has no unconditional (prior) score: it was trained "
                "without condition dropout. Train with `condition_dropout=0.1` "
                "(a constructor argument of the trainer) to use classifier-free "
                "guidance or an unconditional score."
            )
        return self._null_condition_row().expand(batch, -1)

    def denoise_embedded(self, z: Tensor, embedding: Tensor, t: Tensor) -> Tensor:
        r"""``x_hat`` for standardised ``z`` ``(batch, dim)``, embedded condition
        ``(batch, e)`` (or ``(1, e)``) and time ``(batch,)`` or scalar.

        With one condition and one time for all rows (every sampler step and
        density step for one observation) a network that broadcasts its inputs
        gets them as one row each, so its time and condition layers run once
        instead of ``batch`` times, and ``z`` in pieces of
        :func:`~sbi_diffusion.model.default_network_rows` rows (on a CPU)."""
        t = as_time(t, z)
        shared = _shared_row(embedding)
        if shared is not None and z.dim() == 2 and self._broadcasts_at(t):
            rows = default_network_rows(z.device) or z.shape[0]
            pieces = [(piece, shared) for piece in z.split(rows)]
            return torch.cat(self._denoise_broadcast(pieces, t))
        p_col = self.path_point(t, columns=True)
        if embedding.shape[0] != z.shape[0]:
            embedding = embedding.expand(z.shape[0], -1)
        out = self.parameterization.network_output(self.net, z, embedding, p_col)
        return self.parameterization.denoise(out, z, p_col)

    def denoise_trials(
        self,
        z: Tensor,
        embeddings: Tensor,
        t: Tensor,
        max_rows: int | None = None,
    ) -> Tensor:
        r"""``x_hat(z_b, t_b | x_i)`` for every row ``b`` of ``z`` ``(batch, dim)``
        and every embedded condition ``e(x_i)`` of ``embeddings`` ``(n, e)``:
        ``(batch, n, dim)``.

        This is what composing ``n`` i.i.d. trials needs
        (:mod:`sbi_diffusion.composition`). Where the network broadcasts its
        inputs (``net.broadcasts_inputs``, e.g. :class:`ResidualMLP
        <sbi_diffusion.nets.mlp.ResidualMLP>`) and all rows share one time, as
        on every sampler's grid, the network gets ``z`` as ``(batch, 1, dim)``
        and the conditions as ``(1, n, e)``: its time and condition layers then
        run ``n`` times instead of ``batch * n`` times. Otherwise the
        ``batch * n`` pairs are evaluated as flat rows
        (:func:`denoise_trials_flat`).

        Args:
            z: standardised parameters ``(batch, dim)``.
            embeddings: embedded conditions ``(n, e)``
                (:meth:`embed_condition`).
            t: time, ``(batch,)`` or scalar.
            max_rows: evaluate at most this many ``(z_b, x_i)`` pairs per network
                call (all at once if None). On a CPU, pieces of a few thousand
                rows stay in cache and run about twice as fast as 100,000 rows.
        """
        t = as_time(t, z)
        n = embeddings.shape[0]
        if not self._broadcasts_at(t):
            return denoise_trials_flat(
                self.denoise_embedded, z, embeddings, t, max_rows
            )
        step = z.shape[0] if max_rows is None else max(1, int(max_rows) // n)
        pieces = self._denoise_broadcast(
            [(z_piece[:, None, :], embeddings[None]) for z_piece in z.split(step)],
            t,
        )
        return torch.cat([x.expand(x.shape[0], n, z.shape[-1]) for x in pieces])

    def denoise_grouped(
        self,
        z: Tensor,
        embeddings: Tensor,
        t: Tensor,
        max_rows: int | None = None,
    ) -> Tensor:
        r"""``x_hat(z_{ij}, t | x_i)`` for ``z`` ``(n, s, dim)``, ``s`` rows for
        each embedded condition ``e(x_i)`` of ``embeddings`` ``(n, e)``:
        ``(n, s, dim)``.

        This is what sampling each single-trial posterior ``p(theta | x_i)`` at
        once needs (GAUSS's covariances, Linhart et al. 2024). As in
        :meth:`denoise_trials`, a network that broadcasts its inputs gets the
        conditions as ``(n, 1, e)`` when all rows share one time, so its time and
        condition layers run ``n`` times instead of ``n * s`` times; otherwise
        the rows are evaluated flat.

        Args:
            z: standardised parameters ``(n, s, dim)``.
            embeddings: embedded conditions ``(n, e)``.
            t: time, ``(n * s,)`` (rows in the order of ``z``) or scalar.
            max_rows: evaluate at most this many rows per network call (all at
                once if None).
        """
        n, s, d = z.shape
        flat_z = z.reshape(n * s, d)
        t = as_time(t, flat_z)
        if not self._broadcasts_at(t):
            flat_e = embeddings.repeat_interleave(s, dim=0)
            out = denoise_rows_in_pieces(
                self.denoise_embedded, flat_z, flat_e, t, max_rows
            )
            return out.reshape(n, s, d)
        step = n if max_rows is None else max(1, int(max_rows) // s)
        pairs = zip(z.split(step), embeddings[:, None, :].split(step), strict=True)
        return torch.cat(self._denoise_broadcast(list(pairs), t))

    def _broadcasts_at(self, t: Tensor) -> bool:
        """Whether the network can take broadcast inputs at times ``t``: it
        broadcasts (``net.broadcasts_inputs``) and all rows share one time."""
        shared_time = bool((t == t[0]).all()) if t.numel() else False
        return shared_time and getattr(self.net, "broadcasts_inputs", False)

    def _denoise_broadcast(
        self, pieces: list[tuple[Tensor, Tensor]], t: Tensor
    ) -> list[Tensor]:
        """``x_hat`` for each ``(z, condition)`` piece of broadcasting shapes
        (``(..., dim)``, ``(..., e)``), all at the one time ``t[0]``."""
        values = self.schedule.derivatives(t[:1])
        results = []
        for z_piece, conditions in pieces:
            p = PathPoint(*(v.reshape((1,) * z_piece.dim()) for v in values))
            out = self.parameterization.network_output(self.net, z_piece, conditions, p)
            results.append(self.parameterization.denoise(out, z_piece, p))
        return results

    def bind(self, x: Tensor | None) -> ConditionedDenoiser:
        """Fix the condition: returns a ``DenoiseFn`` ``(z, t) -> x_hat``.

        Args:
            x: one observation ``(1, *condition_shape)``, a batch whose rows match
                the batch of ``z``, or None for the unconditional (null) estimate.
        """
        if x is None:
            return ConditionedDenoiser(self, self.null_condition(1))
        return ConditionedDenoiser(self, self.embed_condition(x))

    # ------------------------------------------------------------------ loss

    def loss(
        self,
        input: Tensor,
        condition: Tensor,
        draws: LossDraws | None = None,
    ) -> Tensor:
        r"""Per-sample weighted denoising loss for raw ``theta`` and ``x``.

        .. math::
            \ell = w(t)/w_{nat}(t)\, \| F - (\theta - c_{skip} z_t)/c_{out} \|^2

        Args:
            input: parameters ``(batch, *input_shape)`` (original space).
            condition: simulations ``(batch, *condition_shape)``.
            draws: the times, noise and dropped conditions to use
                (:class:`~sbi_diffusion.model.loss_draws.LossDraws`); those it
                leaves as None are drawn (the condition dropped with probability
                ``condition_dropout``).

        Returns:
            Loss per sample, shape ``(batch,)``.
        """
        draws = LossDraws() if draws is None else draws
        times, noise, drop_condition = draws.times, draws.noise, draws.drop_condition
        batch = input.shape[0]
        theta = self.to_z(input).reshape(batch, -1)
        if times is None:
            times = self.schedule.sample_training_times(batch, device=input.device)
        if noise is None:
            noise = torch.randn_like(theta)
        noise = noise.reshape(batch, -1)
        col = self.path_point(times, columns=True)
        z = col.alpha * theta + col.sigma * noise
        embedding = self.embed_condition(condition)
        if drop_condition is None and self.condition_dropout > 0 and self.training:
            drop_condition = (
                torch.rand(batch, device=input.device) < self.condition_dropout
            )
        if drop_condition is not None:
            embedding = torch.where(
                drop_condition[:, None], self._null_condition_row()[None, :], embedding
            )
        out = self.parameterization.network_output(self.net, z, embedding, col)
        target = self.parameterization.target(theta, z, col)
        weight = loss_weight(self.weighting, self.parameterization, col).reshape(-1)
        return weight * ((out - target) ** 2).sum(dim=-1)
