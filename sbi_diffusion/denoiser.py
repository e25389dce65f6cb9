r"""The denoiser: network + schedule + parameterisation, as an sbi estimator.

:class:`Denoiser` is an sbi ``ConditionalVectorFieldEstimator``. It holds the
z-scoring of ``theta`` and ``x`` fitted on the training data, the (optional)
embedding net for ``x``, the vector-field network, the schedule and the
parameterisation, and gives

.. math::
    \hat\theta(z_t, t \mid x) = c_{skip}(t) z_t
    + c_{out}(t) F\big(c_{in}(t) z_t,\; e(x),\; c_{noise}(t)\big)

in standardised parameter space, from which the score, the noise, and the
probability-flow drift follow (:mod:`sbi_diffusion.vector_field`). Because it
implements sbi's interface (``ode_fn``, ``score``, ``drift_fn``,
``diffusion_fn``, ``mean_t_fn``, ``std_fn``, composed standardisation), sbi's
own ``VectorFieldPosterior`` accepts it.
"""

from __future__ import annotations

import torch
from sbi.neural_nets.estimators.base import ConditionalVectorFieldEstimator
from torch import Tensor, nn

from sbi_diffusion.parameterizations import Parameterization, PathPoint
from sbi_diffusion.schedules import Schedule
from sbi_diffusion.vector_field import as_time, ode_drift, score_from_x_hat
from sbi_diffusion.weightings import check_weighting, loss_weight

__all__ = [
    "Denoiser",
    "ConditionedDenoiser",
    "CPU_NETWORK_ROWS",
    "default_network_rows",
    "expand_trial_rows",
    "denoise_trials_flat",
]

#: rows per network call for large batches on a CPU (composition of many trials,
#: GAUSS's single-trial samples). Pieces of a few thousand rows stay in cache:
#: the default residual MLP (width 256, 4 blocks) runs about 1.9 times faster in
#: pieces of 4096 rows than on 100,000 rows at once
#: (``benchmarks/iid/time_network_rows.py``).
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


def _column(v: Tensor, ndim: int) -> Tensor:
    return v.reshape(v.shape + (1,) * (ndim - v.dim()))


class Denoiser(ConditionalVectorFieldEstimator):
    """Conditional denoiser ``x_hat(z_t, t | x)`` for parameters ``theta``.

    Args:
        net: network ``net(z, condition_embedding, time) -> output`` on flat
            ``(batch, dim)`` inputs.
        schedule: the Gaussian path.
        parameterization: what the network predicts.
        input_shape: event shape of ``theta``.
        condition_shape: event shape of ``x``.
        embedding_net: network embedding (z-scored) ``x``; identity if None.
        weighting: loss weighting (see :mod:`sbi_diffusion.weightings`).
        theta_shift, theta_scale: z-scoring of ``theta``.
        x_shift, x_scale: z-scoring of ``x``.
        condition_dropout: probability of replacing the condition by a learned
            null embedding in training (enables unconditional/prior scores and
            classifier-free guidance).
    """

    SCORE_DEFINED = True
    SDE_DEFINED = True
    MARGINALS_DEFINED = True

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
        t_min = float(schedule.t_min)
        # sbi's ODE for log_prob integrates from t_min: keep sigma(t_min) > 0.
        if float(schedule.sigma(torch.tensor([t_min]))) <= 0:
            t_min = 1e-4
        super().__init__(
            net,
            input_shape,
            condition_shape,
            t_min=t_min,
            t_max=float(schedule.t_max),
            embedding_net=embedding_net,
            mean_base=0.0,
            std_base=schedule.prior_std(),
        )
        self.schedule = schedule
        self.parameterization = parameterization
        self.weighting = check_weighting(weighting)
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(
                f"condition_dropout must be in [0, 1), got {condition_dropout}."
            )
        self.condition_dropout = float(condition_dropout)
        self.register_buffer("mean_0", torch.zeros(1))
        self.register_buffer("std_0", torch.ones(1))
        if theta_shift is not None:
            self._theta_shift.copy_(theta_shift.reshape(self._theta_shift.shape))
            self._theta_scale.copy_(theta_scale.reshape(self._theta_scale.shape))
        self._compose_standardization.fill_(True)
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
                condition_embedding_dim = self._embedding_net(
                    torch.zeros(2, *condition_shape)
                ).shape[-1]
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
        """z-score ``x`` of shape ``(batch, *condition_shape)`` and embed it (with
        a trailing 0, the "observed" flag, for models with condition dropout)."""
        embedding = self._embedding_net((x - self.x_shift) / self.x_scale)
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
        ``(batch, e)`` (or ``(1, e)``) and time ``(batch,)`` or scalar."""
        p_col = self.path_point(as_time(t, z), columns=True)
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
        p = PathPoint(*(v.reshape(1, 1, 1) for v in self.schedule.derivatives(t[:1])))
        results = []
        for z_piece, conditions in pieces:
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
        times: Tensor | None = None,
        noise: Tensor | None = None,
        drop_condition: Tensor | None = None,
        **kwargs,
    ) -> Tensor:
        r"""Per-sample weighted denoising loss for raw ``theta`` and ``x``.

        .. math::
            \ell = w(t)/w_{nat}(t)\, \| F - (\theta - c_{skip} z_t)/c_{out} \|^2

        Args:
            input: parameters ``(batch, *input_shape)`` (original space).
            condition: simulations ``(batch, *condition_shape)``.
            times: training times ``(batch,)``; drawn from the schedule if None.
            noise: ``eps`` of the shape of ``input``; standard normal if None.
            drop_condition: boolean ``(batch,)``, rows that use the null
                condition; drawn with probability ``condition_dropout`` if None.

        Returns:
            Loss per sample, shape ``(batch,)``.
        """
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

    # ------------------------------------------------- sbi vector-field interface

    def _flatten_inputs(
        self, input: Tensor, condition: Tensor, time: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, torch.Size]:
        event = len(self.input_shape)
        batch_input = input.shape[: input.dim() - event]
        batch_cond = condition.shape[: condition.dim() - len(self.condition_shape)]
        batch_shape = torch.broadcast_shapes(batch_input, batch_cond)
        embedding = self.embed_condition(
            condition.reshape(-1, *self.condition_shape)
        ).reshape(*batch_cond, -1)
        embedding = torch.broadcast_to(embedding, batch_shape + embedding.shape[-1:])
        z = torch.broadcast_to(input, batch_shape + self.input_shape)
        time = self._interface_times(
            torch.as_tensor(time, device=input.device, dtype=input.dtype)
        )
        time = torch.broadcast_to(
            time.reshape(time.shape[: len(batch_shape)] or ()), batch_shape
        )
        return (
            z.reshape(-1, self.theta_dim),
            embedding.reshape(-1, embedding.shape[-1]),
            time.reshape(-1),
            batch_shape,
        )

    def forward(self, input: Tensor, condition: Tensor, time: Tensor) -> Tensor:
        """Denoised estimate for sbi-shaped inputs ``(*batch, *input_shape)`` in
        standardised space; ``condition`` is raw ``x``."""
        z, embedding, t, batch_shape = self._flatten_inputs(input, condition, time)
        return self.denoise_embedded(z, embedding, t).reshape(
            *batch_shape, *self.input_shape
        )

    def score(self, input: Tensor, condition: Tensor, t: Tensor) -> Tensor:
        r"""Score ``grad log p_t(z | x) = (alpha x_hat - z) / sigma^2``
        (standardised space)."""
        z, embedding, time, batch_shape = self._flatten_inputs(input, condition, t)
        x_hat = self.denoise_embedded(z, embedding, time)
        return score_from_x_hat(self.schedule, z, time, x_hat).reshape(
            *batch_shape, *self.input_shape
        )

    def ode_fn(self, input: Tensor, condition: Tensor, times: Tensor) -> Tensor:
        r"""Probability-flow drift ``alpha' x_hat + sigma' eps_hat``."""
        z, embedding, time, batch_shape = self._flatten_inputs(input, condition, times)
        x_hat = self.denoise_embedded(z, embedding, time)
        return ode_drift(self.schedule, z, time, x_hat).reshape(
            *batch_shape, *self.input_shape
        )

    def _interface_times(self, times: Tensor) -> Tensor:
        """Times of sbi's calls, clamped below the end of a path where
        ``alpha(t_max) < 1e-3`` (rectified flow: ``alpha(1) = 0``) to where
        ``alpha = 0.01``, as sbi's own flow-matching estimator does: there the
        forward SDE's drift ``alpha'/alpha`` is infinite and so is the
        network's noise input. Our own samplers handle the end themselves."""
        t_end = getattr(self, "_sbi_t_end", None)
        if t_end is None:
            t_end = float(self.schedule.t_max)
            alpha_end = float(self.schedule.alpha(torch.tensor([t_end])))
            if alpha_end < 1e-3:
                grid = torch.linspace(float(self.schedule.t_min), t_end, 100_001)
                t_end = float(grid[self.schedule.alpha(grid) >= 1e-2].max())
            self._sbi_t_end = t_end
        return torch.clamp(torch.as_tensor(times), max=t_end)

    def _times_like(self, times: Tensor, input: Tensor | None = None) -> Tensor:
        times = torch.as_tensor(times)
        ndim = times.dim() + len(self.input_shape)
        if input is not None:
            ndim = max(ndim, input.dim())
        return times.reshape(times.shape + (1,) * (ndim - times.dim()))

    def mean_t_fn(self, times: Tensor) -> Tensor:
        """``alpha(t)``, broadcastable against ``(batch, *input_shape)``."""
        times = self._interface_times(torch.as_tensor(times))
        return self._times_like(self.schedule.alpha(times))

    def std_fn(self, times: Tensor) -> Tensor:
        """``sigma(t)``, broadcastable against ``(batch, *input_shape)``."""
        times = self._interface_times(torch.as_tensor(times))
        return self._times_like(self.schedule.sigma(times))

    def drift_fn(self, input: Tensor, times: Tensor) -> Tensor:
        """Forward SDE drift ``f(t) z``."""
        times = self._interface_times(torch.as_tensor(times))
        f, _ = self.schedule.sde_coefficients(times.reshape(-1))
        f = f.reshape(times.shape)
        return self._times_like(f, input) * input

    def diffusion_fn(self, input: Tensor, times: Tensor) -> Tensor:
        """Forward SDE diffusion ``g(t)``."""
        times = self._interface_times(torch.as_tensor(times))
        _, g = self.schedule.sde_coefficients(times.reshape(-1))
        g = g.reshape(times.shape)
        return self._times_like(g, input)

    def solve_schedule(self, num_steps: int, t_min=None, t_max=None) -> Tensor:
        """The schedule's default sampling grid (``num_steps`` points)."""
        return self.schedule.sampling_grid(num_steps - 1, device=self._mean_base.device)


class ConditionedDenoiser(nn.Module):
    """A :class:`Denoiser` with its condition fixed: ``(z, t) -> x_hat``.

    Implements :class:`sbi_diffusion.vector_field.DenoiseFn`; the condition is
    embedded once. ``embedding`` has one row (broadcast over ``z``) or as many
    rows as ``z``; with ``rows_per_condition = s`` it has ``n`` rows and ``z``
    has ``n * s``, ``s`` consecutive rows per condition
    (:meth:`Denoiser.denoise_grouped`). With ``max_rows`` the batch goes through
    the network in pieces of at most that many rows (see
    :data:`CPU_NETWORK_ROWS`).
    """

    def __init__(
        self,
        denoiser: Denoiser,
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
