"""Samplers of the reverse process, registered by name.

Every sampler is a function ``(denoise, noise, *, steps, generator,
show_progress_bars, **options) -> SamplerResult``; see
:mod:`sbi_diffusion.samplers.base`. Registered names: ``euler``, ``heun``
(:mod:`~sbi_diffusion.samplers.ode`), ``euler_maruyama``, ``ddim``
(:mod:`~sbi_diffusion.samplers.sde`), ``dpm++2m`` / ``dpm_solver++``
(:mod:`~sbi_diffusion.samplers.dpm_solver`), ``dopri5``, ``adaptive_sde``
(:mod:`~sbi_diffusion.samplers.adaptive`).
"""

from sbi_diffusion.samplers import (  # noqa: F401  (register samplers)
    adaptive,
    dpm_solver,
    langevin,
    ode,
    sde,
)
from sbi_diffusion.samplers.adaptive import dopri5_integrate, sampling_end_time
from sbi_diffusion.samplers.base import (
    SAMPLERS,
    CountingDenoiser,
    SamplerResult,
    get_sampler,
    initial_noise,
    network_evaluations_per_call,
    register_sampler,
    run_fixed_grid,
    runs_deterministically,
    sample_from_noise,
    sampler_takes_option,
    sampling_call_options,
)
from sbi_diffusion.samplers.langevin import langevin_correct
from sbi_diffusion.samplers.solver import Solver, solver_call

__all__ = [
    "SAMPLERS",
    "CountingDenoiser",
    "SamplerResult",
    "Solver",
    "solver_call",
    "dopri5_integrate",
    "get_sampler",
    "initial_noise",
    "langevin_correct",
    "network_evaluations_per_call",
    "register_sampler",
    "run_fixed_grid",
    "runs_deterministically",
    "sample_from_noise",
    "sampler_takes_option",
    "sampling_call_options",
    "sampling_end_time",
]
