r"""Fixed-step solvers of the probability-flow ODE ``dz/dt = v(z, t)``.

``v = alpha' x_hat + sigma' eps_hat`` (see :mod:`sbi_diffusion.vector_field`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbi_diffusion.samplers.base import (
    CountingDenoiser,
    SamplerResult,
    register_sampler,
    run_fixed_grid,
)
from sbi_diffusion.vector_field import DenoiseFn, ode_drift


def _drift(denoise: CountingDenoiser, z: Tensor, t: Tensor) -> Tensor:
    return ode_drift(denoise.schedule, z, t, denoise(z, t))


def euler_step(denoise, z, t_cur, t_next, state, generator) -> Tensor:
    r"""Explicit Euler: ``z_{i+1} = z_i + (t_{i+1} - t_i) v(z_i, t_i)``."""
    return z + (t_next - t_cur) * _drift(denoise, z, t_cur)


def heun_step(denoise, z, t_cur, t_next, state, generator) -> Tensor:
    r"""Heun's second-order step (Karras et al. 2022, Algorithm 1):

    .. math::
        \tilde z = z_i + h v(z_i, t_i), \quad
        z_{i+1} = z_i + \tfrac{h}{2}\left(v(z_i, t_i) + v(\tilde z, t_{i+1})\right),

    falling back to Euler when ``sigma(t_{i+1}) = 0`` (the drift is undefined
    there).
    """
    h = t_next - t_cur
    v_cur = _drift(denoise, z, t_cur)
    z_euler = z + h * v_cur
    if float(denoise.schedule.sigma(t_next)) <= 0:
        return z_euler
    v_next = _drift(denoise, z_euler, t_next)
    return z + 0.5 * h * (v_cur + v_next)


@register_sampler("euler")
def euler(
    denoise: DenoiseFn,
    noise: Tensor,
    steps: int = 100,
    generator: torch.Generator | None = None,
    show_progress_bars: bool = False,
    **options,
) -> SamplerResult:
    """First-order Euler solver of the probability-flow ODE."""
    return run_fixed_grid(
        euler_step, denoise, noise, steps, generator, show_progress_bars, **options
    )


@register_sampler("heun")
def heun(
    denoise: DenoiseFn,
    noise: Tensor,
    steps: int = 18,
    generator: torch.Generator | None = None,
    show_progress_bars: bool = False,
    **options,
) -> SamplerResult:
    """EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) on the
    probability-flow ODE; ``2 steps`` network evaluations (one fewer where the
    last step is Euler)."""
    return run_fixed_grid(
        heun_step, denoise, noise, steps, generator, show_progress_bars, **options
    )
