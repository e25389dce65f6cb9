r"""The adapter to sbi: a denoiser presented as sbi's vector-field estimator.

sbi's ``ConditionalVectorFieldEstimator`` (the estimator behind its NPSE/FMPE and
``VectorFieldPosterior``) asks for the score, the probability-flow drift, the
forward SDE's coefficients and the marginals ``mean_t = alpha(t)``,
``std_t = sigma(t)``, on sbi-shaped inputs ``(*batch, *input_shape)``. This
module derives all of them from the denoised estimate (Song et al. 2021,
"Score-Based Generative Modeling through Stochastic Differential Equations"):

.. math::
    \nabla_z \log p_t(z \mid x) = \frac{\alpha \hat\theta - z}{\sigma^2}, \qquad
    \frac{dz}{dt} = \alpha' \hat\theta + \sigma' \frac{z - \alpha \hat\theta}{\sigma},

and it is the one place that reads or writes sbi's private attributes (the
z-scoring buffers ``_theta_shift``/``_theta_scale`` and the flag that tells sbi
the estimator works in standardised space). Everything else uses the public
``theta_shift``, ``theta_scale``, ``to_z``, ``from_z`` and ``embedding_net``.

The standardised space may follow a change of variables ``u = T(theta)`` onto
an unbounded space (:mod:`sbi_diffusion.model.theta_transform`):
``z = (T(theta) - shift) / scale``.
"""

from __future__ import annotations

import torch
from sbi.neural_nets.estimators.base import ConditionalVectorFieldEstimator
from torch import Tensor, nn
from torch.distributions.transforms import Transform, identity_transform

from sbi_diffusion.model.theta_transform import is_identity, log_abs_det_jacobian
from sbi_diffusion.path.schedules import Schedule
from sbi_diffusion.path.vector_field import ode_drift, score_from_x_hat

__all__ = ["SbiVectorFieldEstimator"]


class SbiVectorFieldEstimator(ConditionalVectorFieldEstimator):
    """Base of :class:`~sbi_diffusion.model.Denoiser`: sbi's estimator interface
    on top of ``denoise_embedded``, ``embed_condition`` and ``schedule``.

    Args:
        net: the vector-field network.
        schedule: the Gaussian path.
        input_shape: event shape of ``theta``.
        condition_shape: event shape of ``x``.
        embedding_net: network embedding (z-scored) ``x``; identity if None.
        theta_shift, theta_scale: z-scoring of ``theta`` (identity if None).
    """

    SCORE_DEFINED = True
    SDE_DEFINED = True
    MARGINALS_DEFINED = True
    #: the change of variables ``u = T(theta)`` before the z-scoring; the class
    #: default keeps estimators pickled before it existed loadable
    theta_transform: Transform = identity_transform

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule,
        input_shape: torch.Size,
        condition_shape: torch.Size,
        embedding_net: nn.Module | None = None,
        theta_shift: Tensor | None = None,
        theta_scale: Tensor | None = None,
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
        if theta_shift is not None:
            self._theta_shift.copy_(theta_shift.reshape(self._theta_shift.shape))
            self._theta_scale.copy_(theta_scale.reshape(self._theta_scale.shape))
        self._compose_standardization.fill_(True)

    @property
    def theta_shift(self) -> Tensor:
        """Shift of the z-scoring ``z = (theta - shift) / scale``,
        ``(1, *input_shape)``."""
        return self._theta_shift

    @property
    def theta_scale(self) -> Tensor:
        """Scale of the z-scoring, ``(1, *input_shape)``."""
        return self._theta_scale

    def set_theta_standardization(self, shift: Tensor, scale: Tensor) -> None:
        """Copy a z-scoring (e.g. a teacher's) into this estimator."""
        with torch.no_grad():
            self._theta_shift.copy_(shift.reshape(self._theta_shift.shape))
            self._theta_scale.copy_(scale.reshape(self._theta_scale.shape))

    def set_theta_transform(self, transform: Transform) -> None:
        """Learn ``u = transform(theta)`` (set before training; the z-scoring
        must be that of ``u``)."""
        self.theta_transform = transform

    @property
    def transforms_theta(self) -> bool:
        """Whether ``theta`` goes through a change of variables before the
        z-scoring."""
        return not is_identity(self.theta_transform)

    def to_z(self, theta: Tensor) -> Tensor:
        """``z = (T(theta) - shift) / scale`` (NaN or inf where ``T`` is not
        finite: outside the prior's support or on its boundary)."""
        return super().to_z(self.theta_transform(theta))

    def from_z(self, z: Tensor) -> Tensor:
        """``theta = T^{-1}(shift + scale z)``."""
        return self.theta_transform.inv(super().from_z(z))

    def transform_log_abs_det(self, theta: Tensor) -> Tensor:
        r"""``log |det dT/dtheta|`` per row ``(batch,)`` (zeros without a
        transform): ``log p(theta) = log p_u(T(theta)) + transform_log_abs_det``."""
        return log_abs_det_jacobian(self.theta_transform, theta)

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
