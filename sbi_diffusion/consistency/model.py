r"""The consistency function ``f(z_t, t | x)`` and its loss.

On the EDM variance-exploding path ``z_t = theta + s(t) eps`` the consistency
function (Song et al. 2023, "Consistency Models") is parameterised as

.. math::
    f(z, t) = c_{skip}(s) z + c_{out}(s) F(c_{in}(s) z, e(x), c_{noise}(s)),

with the scalings of :class:`ConsistencyParameterization`, so the boundary
condition ``f(z, t_min) = z`` holds by construction. :class:`ConsistencyModel`
is a :class:`~sbi_diffusion.model.Denoiser` with that parameterisation and
the consistency-training or distillation loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sbi_diffusion.consistency.curriculum import (
    default_huber_constant,
    improved_num_scales,
    lognormal_interval_probabilities,
    pseudo_huber,
)
from sbi_diffusion.consistency.teacher import ScaledTeacher
from sbi_diffusion.model import Denoiser, LossDraws
from sbi_diffusion.path.parameterizations import SIGMA_DATA, Parameterization, PathPoint
from sbi_diffusion.path.schedules import EDMSchedule, Schedule
from sbi_diffusion.samplers.ode import heun_step

__all__ = [
    "ConsistencyModel",
    "ConsistencyParameterization",
    "check_consistency_schedule",
]


def check_consistency_schedule(schedule: Schedule) -> EDMSchedule:
    """Check that ``schedule`` is the EDM variance-exploding path.

    The consistency grid is the Karras ``rho``-grid, which is a uniform grid in
    ``t`` only for :class:`~sbi_diffusion.path.schedules.EDMSchedule`, and the
    boundary condition ``f(z, t_min) = z`` is exact where ``alpha = 1``.

    Raises:
        ValueError: for any other schedule.
    """
    t = torch.linspace(0.0, 1.0, 5)
    if not isinstance(schedule, EDMSchedule) or not torch.equal(
        schedule.alpha(t), torch.ones_like(t)
    ):
        raise ValueError(
            f"Consistency models need the EDM variance-exploding path, got "
            f"{schedule!r}. Pass schedule='edm' (options such as sigma_max, rho, "
            "p_mean, p_std via schedule_kwargs) or an EDMSchedule instance."
        )
    return schedule


class ConsistencyParameterization(Parameterization):
    r"""The consistency parameterisation with the boundary condition built in
    (Song et al. 2023, Sec. 3 and Appendix C, with EDM's scalings):

    .. math::
        c_{skip} = \frac{\sigma_d^2}{\alpha\,((s - s_{min})^2 + \sigma_d^2)},
        \qquad
        c_{out} = \frac{\sigma_d (s - s_{min})}{\sqrt{\sigma_d^2 + s^2}},

    with ``s = sigma / alpha`` and ``s_min = s(t_min)``. ``s_min`` is recomputed
    with the same operations and dtype as ``s``, so ``c_skip = 1`` and
    ``c_out = 0`` hold exactly at ``t_min``.

    Args:
        schedule: the path (its ``t_min`` fixes ``s_min``).
        sigma_data: ``sigma_d``, the data standard deviation (1 for z-scored
            parameters).
    """

    name = "consistency"

    def __init__(self, schedule: Schedule, sigma_data: float = SIGMA_DATA):
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}.")
        self.schedule = schedule
        self.sigma_data = float(sigma_data)

    def coefficients(self, p: PathPoint) -> tuple[Tensor, Tensor]:
        s = p.scaled_sigma
        t_min = torch.full_like(s, float(self.schedule.t_min))
        s_min = self.schedule.sigma(t_min) / self.schedule.alpha(t_min)
        gap = s - s_min
        sd2 = self.sigma_data**2
        c_skip = sd2 / (p.alpha * (gap**2 + sd2))
        c_out = self.sigma_data * gap * torch.rsqrt(sd2 + s**2)
        return c_skip, c_out

    def target(self, x: Tensor, z: Tensor, p: PathPoint) -> Tensor:
        raise ValueError(
            "A consistency function has no denoising regression target; train it "
            "with ConsistencyModel.loss (consistency training or distillation)."
        )

    def __repr__(self) -> str:
        return f"ConsistencyParameterization(sigma_data={self.sigma_data})"


class ConsistencyModel(Denoiser):
    r"""Conditional consistency function ``f(z_t, t | x)`` for parameters ``theta``.

    A :class:`~sbi_diffusion.model.Denoiser` with
    :class:`ConsistencyParameterization` on the EDM VE path, so ``bind(x)``,
    ``denoise_embedded`` and the z-scoring are shared with the diffusion
    estimators; ``denoise_embedded`` returns ``f`` instead of ``E[theta | z]``.
    :meth:`loss` is the consistency-training loss, or the distillation loss when
    ``teacher`` is set.

    Args:
        net: network ``net(z, condition_embedding, time)``.
        schedule: an :class:`~sbi_diffusion.path.schedules.EDMSchedule` (VE); its
            ``p_mean``, ``p_std`` set the log-normal interval sampling.
        input_shape, condition_shape, embedding_net, theta_shift, theta_scale,
        x_shift, x_scale, condition_embedding_dim: as for ``Denoiser``.
        sigma_data: ``sigma_d`` of the parameterisation.

    Attributes:
        teacher: ``None`` (consistency training) or a
            :class:`~sbi_diffusion.consistency.teacher.DenoiserTeacher`
            (distillation). Held outside the module tree: it is neither trained
            nor saved in the state dict.
        initial_num_scales, final_num_scales: ``s_0``, ``s_1`` of the curriculum
            (distillation: the fixed ``N - 1`` is ``final_num_scales``).
        total_steps: ``K`` of the curriculum.
        training_step: optimiser steps taken so far (counts training-mode losses).
        huber_constant: ``c`` of the pseudo-Huber distance (None: the default).
    """

    SCORE_DEFINED = False
    SDE_DEFINED = False
    MARGINALS_DEFINED = True

    def __init__(
        self,
        net: torch.nn.Module,
        schedule: Schedule,
        input_shape: torch.Size,
        condition_shape: torch.Size,
        embedding_net: torch.nn.Module | None = None,
        theta_shift: Tensor | None = None,
        theta_scale: Tensor | None = None,
        x_shift: Tensor | None = None,
        x_scale: Tensor | None = None,
        condition_embedding_dim: int | None = None,
        sigma_data: float = SIGMA_DATA,
    ) -> None:
        schedule = check_consistency_schedule(schedule)
        super().__init__(
            net=net,
            schedule=schedule,
            parameterization=ConsistencyParameterization(schedule, sigma_data),
            input_shape=input_shape,
            condition_shape=condition_shape,
            embedding_net=embedding_net,
            weighting="uniform",
            theta_shift=theta_shift,
            theta_scale=theta_scale,
            x_shift=x_shift,
            x_scale=x_scale,
            condition_dropout=0.0,
            condition_embedding_dim=condition_embedding_dim,
        )
        self.__dict__["teacher"] = None
        self.initial_num_scales = 10
        self.final_num_scales = 1280
        self.total_steps = 1
        self.training_step = 0
        self.huber_constant: float | None = None

    @classmethod
    def from_denoiser(
        cls, denoiser: Denoiser, schedule: Schedule, sigma_data: float = SIGMA_DATA
    ) -> ConsistencyModel:
        """A consistency model on ``schedule`` with the network, embedding net,
        z-scoring, ``theta_transform`` and condition size of ``denoiser``."""
        model = cls(
            denoiser.net,
            schedule,
            denoiser.input_shape,
            denoiser.condition_shape,
            denoiser.embedding_net,
            denoiser.theta_shift,
            denoiser.theta_scale,
            denoiser.x_shift,
            denoiser.x_scale,
            denoiser.null_embedding.shape[0],
            sigma_data,
        )
        model.set_theta_transform(denoiser.theta_transform)
        return model

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "teacher":  # keep the teacher out of parameters and state dict
            self.__dict__["teacher"] = value
            return
        super().__setattr__(name, value)

    # ------------------------------------------------------------------ grid

    def num_scales(self) -> int:
        """Current ``N``: the curriculum in training, the final grid otherwise."""
        if self.teacher is not None or not self.training:
            return self.final_num_scales + 1
        return improved_num_scales(
            self.training_step,
            self.total_steps,
            self.initial_num_scales,
            self.final_num_scales,
        )

    def _interval_indices(
        self, num_scales: int, batch: int, times: Tensor | None, device
    ) -> Tensor:
        """Grid intervals ``i`` (``0 <= i <= N - 2``): drawn from the discrete
        log-normal, or the intervals holding the given ``times``."""
        if times is not None:
            idx = torch.floor(times.to(device) * (num_scales - 1)).long()
            return torch.clamp(idx, 0, num_scales - 2)
        grid = torch.linspace(0.0, 1.0, num_scales, device=device)
        probabilities = lognormal_interval_probabilities(
            self.schedule.edm_sigma(grid), self.schedule.p_mean, self.schedule.p_std
        )
        return torch.multinomial(probabilities, batch, replacement=True)

    # ------------------------------------------------------------------ loss

    def loss(
        self,
        input: Tensor,
        condition: Tensor,
        draws: LossDraws | None = None,
    ) -> Tensor:
        r"""Per-sample consistency loss for raw ``theta`` and ``x``.

        .. math::
            \ell = \frac{1}{s_{i+1} - s_i}\, d\big(f_\phi(z_{t_{i+1}}, t_{i+1}),
            \mathrm{sg}[f_\phi(z_{t_i}, t_i)]\big),

        with ``z_{t_i} = theta + s_i eps`` (training) or one Heun step of the
        teacher's ODE from ``z_{t_{i+1}}`` (distillation), ``d`` the pseudo-Huber
        distance and ``t_i = i / (N - 1)`` the Karras grid.

        Args:
            input: parameters ``(batch, *input_shape)`` (original space).
            condition: simulations ``(batch, *condition_shape)``.
            draws: fixed draws (:class:`~sbi_diffusion.model.loss_draws.
                LossDraws`): ``times`` ``(batch,)`` whose grid intervals are
                used (fixed validation times; drawn from the discrete
                log-normal if None), ``noise`` (standard normal if None);
                ``drop_condition`` is unsupported and must be None or all
                False.

        Returns:
            Loss per sample, shape ``(batch,)``.
        """
        draws = LossDraws() if draws is None else draws
        times, noise, drop_condition = draws.times, draws.noise, draws.drop_condition
        if drop_condition is not None and bool(drop_condition.any()):
            raise ValueError("Consistency models do not support condition dropout.")
        batch = input.shape[0]
        device = input.device
        theta = self.to_z(input).reshape(batch, -1)
        noise = torch.randn_like(theta) if noise is None else noise.reshape(batch, -1)
        num_scales = self.num_scales()
        idx = self._interval_indices(num_scales, batch, times, device)
        t_lo = idx.to(theta.dtype) / (num_scales - 1)
        t_hi = (idx + 1).to(theta.dtype) / (num_scales - 1)
        s_lo, s_hi = self.schedule.edm_sigma(t_lo), self.schedule.edm_sigma(t_hi)
        z_hi = theta + s_hi[:, None] * noise
        embedding = self.embed_condition(condition)
        student = self.denoise_embedded(z_hi, embedding, t_hi)
        with torch.no_grad():
            if self.teacher is None:
                z_lo = theta + s_lo[:, None] * noise
            else:
                z_lo = self._teacher_step(z_hi, condition, idx, num_scales)
            target = self.denoise_embedded(z_lo, embedding.detach(), t_lo)
        c = self.huber_constant
        c = default_huber_constant(theta.shape[-1]) if c is None else c
        loss = pseudo_huber(student, target, c) / (s_hi - s_lo)
        if self.training and torch.is_grad_enabled():
            self.training_step += 1
        return loss

    def _teacher_step(
        self, z_hi: Tensor, condition: Tensor, idx: Tensor, num_scales: int
    ) -> Tensor:
        """One Heun step (the core sampler's step) of the teacher's ODE from
        ``t_{i+1}`` to ``t_i``, every row from its own interval ``i``."""
        teacher_fn = ScaledTeacher(self.teacher.bind(condition), self.schedule)
        t_cur = (idx + 1).to(z_hi.dtype) / (num_scales - 1)
        t_next = idx.to(z_hi.dtype) / (num_scales - 1)
        return heun_step(teacher_fn, z_hi, t_cur, t_next, {}, None)

    # ------------------------------------------- sbi interface: no score or SDE

    def score(self, input: Tensor, condition: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError(
            "A consistency model has no score: f(z, t) maps to the end of the ODE "
            "trajectory, not to E[theta | z]. Use DiffusionNPE for a score."
        )

    def ode_fn(self, input: Tensor, condition: Tensor, times: Tensor) -> Tensor:
        raise NotImplementedError(
            "A consistency model has no probability-flow ODE drift; sample it with "
            "the 'consistency' sampler, or use DiffusionNPE / FlowMatchingNPE."
        )
