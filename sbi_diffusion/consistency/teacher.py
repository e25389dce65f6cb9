r"""Distillation teachers of a consistency model.

A teacher is a trained denoiser (:class:`DenoiserTeacher`) on any Gaussian
path: the probability-flow ODE in the scaled variable ``z / alpha`` and noise
level ``sigma / alpha`` is the same for all of them (Karras et al. 2022), so
:class:`ScaledTeacher` evaluates it on the consistency model's EDM VE path, at
the teacher's time of the same noise level (:func:`time_for_scaled_sigma`).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.path.schedules import EDMSchedule, EDMVPSchedule, Schedule
from sbi_diffusion.path.vector_field import as_time

__all__ = ["DenoiserTeacher", "ScaledTeacher", "time_for_scaled_sigma"]


def time_for_scaled_sigma(schedule: Schedule, scaled_sigma: Tensor) -> Tensor:
    r"""The time ``t`` at which ``sigma(t) / alpha(t)`` equals ``scaled_sigma``.

    Closed form for the EDM schedules (``t_from_edm_sigma``); otherwise bisection
    on ``[t_min, t_max]`` (``sigma / alpha`` increases with ``t`` on every path).
    Values outside the schedule's range are clamped to its ends.
    """
    if type(schedule) in (EDMSchedule, EDMVPSchedule):
        return schedule.t_from_edm_sigma(scaled_sigma)
    lo = torch.full_like(scaled_sigma, float(schedule.t_min))
    hi = torch.full_like(scaled_sigma, float(schedule.t_max))
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = schedule.scaled_sigma(mid) < scaled_sigma
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


class DenoiserTeacher(Protocol):
    """What :meth:`~sbi_diffusion.consistency.model.ConsistencyModel.loss` needs
    of a distillation teacher.

    A trained :class:`~sbi_diffusion.model.Denoiser` qualifies; so does any
    object with a ``schedule``, ``bind(x)`` returning a ``DenoiseFn`` whose rows
    follow the rows of ``x`` (raw simulations), and the z-scoring
    ``theta_shift`` and ``theta_scale`` of its standardised parameter space.
    """

    schedule: Schedule
    theta_shift: Tensor
    theta_scale: Tensor

    def bind(self, x: Tensor) -> DenoiseFn: ...


class ScaledTeacher:
    r"""A teacher's ``DenoiseFn`` seen on the consistency model's EDM VE path.

    For ``y`` at EDM noise level ``s = s(t)`` the teacher is evaluated at its own
    time ``tau`` with ``sigma_T(tau) / alpha_T(tau) = s`` and at
    ``z = alpha_T(tau) y``; ``x_hat = E[theta | z]`` is the same for both paths
    (Karras et al. 2022, Sec. 2), so the teacher's probability-flow ODE is solved
    on the consistency model's path.

    Args:
        teacher: the teacher's ``DenoiseFn``.
        schedule: the consistency model's (VE) schedule.
    """

    def __init__(self, teacher: DenoiseFn, schedule: Schedule):
        self.teacher = teacher
        self.schedule = schedule

    def __call__(self, y: Tensor, t: Tensor) -> Tensor:
        t = as_time(t, y)
        level = self.schedule.scaled_sigma(t)
        tau = time_for_scaled_sigma(self.teacher.schedule, level)
        alpha = self.teacher.schedule.alpha(tau)
        return self.teacher(alpha[:, None] * y, tau)
