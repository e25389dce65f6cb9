r"""Fixed-step solvers of the probability-flow ODE ``dz/dt = v(z, t)``.

``v = alpha' x_hat + sigma' eps_hat`` (see :mod:`sbi_diffusion.path.vector_field`).
The solvers step in the schedule's ODE variable ``u(t)``
(:meth:`~sbi_diffusion.path.schedules.Schedule.ode_variable`: ``t`` for most paths,
EDM's ``sigma`` on the variance-exploding EDM path), with the drift
``dz/du = v / u'(t)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_diffusion.path.vector_field import ode_drift
from sbi_diffusion.samplers.base import (
    CountingDenoiser,
    fixed_grid_sampler,
    register_sampler,
)


def _ode_variable_and_rate(schedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """``u(t)`` and ``du/dt`` (automatic differentiation)."""
    with torch.enable_grad():
        t_ = t.detach().clone().requires_grad_(True)
        u = schedule.ode_variable(t_)
        if not u.requires_grad:
            return u.detach(), torch.ones_like(t)
        (rate,) = torch.autograd.grad(u.sum(), t_)
    return u.detach(), rate


def _per_row(value: Tensor, z: Tensor) -> Tensor:
    """A scalar, or one value per row of ``z`` shaped to broadcast against it."""
    return value if value.dim() == 0 else value.reshape(-1, *[1] * (z.dim() - 1))


def _drift_in_u(denoise: CountingDenoiser, z: Tensor, t: Tensor) -> Tensor:
    _, rate = _ode_variable_and_rate(denoise.schedule, t)
    return ode_drift(denoise.schedule, z, t, denoise(z, t)) / _per_row(rate, z)


def euler_step(denoise: CountingDenoiser, z, t_cur, t_next, state, generator):
    r"""Explicit Euler: ``z_{i+1} = z_i + (u_{i+1} - u_i) dz/du(z_i, t_i)``."""
    u_cur, _ = _ode_variable_and_rate(denoise.schedule, t_cur)
    u_next, _ = _ode_variable_and_rate(denoise.schedule, t_next)
    return z + (u_next - u_cur) * _drift_in_u(denoise, z, t_cur)


def heun_step(denoise: CountingDenoiser, z, t_cur, t_next, state, generator):
    r"""Heun's second-order step (Karras et al. 2022, Algorithm 1):

    .. math::
        \tilde z = z_i + h\, d(z_i, t_i), \quad
        z_{i+1} = z_i + \tfrac{h}{2}\left(d(z_i, t_i) + d(\tilde z, t_{i+1})\right),

    with ``h = u_{i+1} - u_i`` and ``d = dz/du``; Euler when
    ``sigma(t_{i+1}) = 0`` (the drift is undefined there). ``t_cur`` and
    ``t_next`` are scalars, or one time per row of ``z`` (each row takes its
    own step, as in consistency distillation).
    """
    schedule = denoise.schedule
    u_cur, _ = _ode_variable_and_rate(schedule, t_cur)
    u_next, _ = _ode_variable_and_rate(schedule, t_next)
    h = _per_row(u_next - u_cur, z)
    d_cur = _drift_in_u(denoise, z, t_cur)
    z_euler = z + h * d_cur
    ends_at_zero = schedule.sigma(t_next) <= 0
    if bool(ends_at_zero.all()):
        return z_euler
    d_next = _drift_in_u(denoise, z_euler, t_next)
    z_heun = z + 0.5 * h * (d_cur + d_next)
    if bool(ends_at_zero.any()):
        return torch.where(_per_row(ends_at_zero, z), z_euler, z_heun)
    return z_heun


euler = register_sampler("euler", deterministic=True)(
    fixed_grid_sampler(
        euler_step,
        100,
        """First-order Euler solver of the probability-flow ODE; ``steps``
    network evaluations (+1 for the final denoising where ``sigma(t_min) >
    0``).""",
    )
)

heun = register_sampler("heun", deterministic=True)(
    fixed_grid_sampler(
        heun_step,
        18,
        """EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) on
    the probability-flow ODE; ``2 steps`` network evaluations (one fewer where
    the last step ends at ``sigma = 0``, one more for the final denoising where
    it does not). ``spacing="logsnr"`` steps uniformly in log-SNR (better on the
    linear VP path) instead of on the schedule's grid.""",
    )
)
