r"""DPM-Solver++(2M): a multistep second-order solver in data prediction.

Lu et al. (2022b), "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", Algorithm 2. With the half log-SNR
``lambda(t) = log(alpha(t) / sigma(t))`` the probability-flow ODE has the
exact solution (variation of constants)

.. math::
    z_t = \frac{\sigma_t}{\sigma_s} z_s
    + \sigma_t \int_{\lambda_s}^{\lambda_t} e^{\lambda} \hat x(z_\lambda, \lambda)
    \, d\lambda ,

and DPM-Solver++(2M) approximates ``x_hat`` in the integral by a linear
extrapolation through the two most recent evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sbi_diffusion.samplers.base import (
    CountingDenoiser,
    fixed_grid_sampler,
    register_sampler,
    schedule_value,
)

__all__ = ["dpm_solver_pp_2m", "dpm_solver_pp_2m_step"]


def _scalar(fn: Callable[[Tensor], Tensor], t: Tensor) -> float:
    """A schedule function at ``t`` in double precision, as a float."""
    return float(schedule_value(fn, t, torch.float64))


def dpm_solver_pp_2m_step(
    denoise: CountingDenoiser,
    z: Tensor,
    t_cur: Tensor,
    t_next: Tensor,
    state: dict,
    generator: torch.Generator | None,
) -> Tensor:
    r"""One DPM-Solver++(2M) step from ``s = t_cur`` to ``t = t_next``.

    With ``h = lambda_t - lambda_s`` and the ratio form
    ``e^{-h} = alpha_s sigma_t / (sigma_s alpha_t)``,

    .. math::
        z_t = \frac{\sigma_t}{\sigma_s} z_s
        + \left(\alpha_t - \alpha_s \frac{\sigma_t}{\sigma_s}\right) D, \qquad
        D = \left(1 + \frac{1}{2 r}\right) \hat x_s - \frac{1}{2 r} \hat x_{prev},
        \quad r = \frac{h_{prev}}{h},

    (Lu et al. 2022b, Algorithm 2). The coefficient
    ``alpha_t - alpha_s sigma_t / sigma_s = alpha_t (1 - e^{-h})`` is finite when
    ``alpha_s = 0`` (``t_max`` of rectified flow) and when ``sigma_t = 0``
    (``t_min = 0``). The step is first order (``D = x_hat_s``, the DDIM step) on
    the first step and wherever ``h`` or ``h_prev`` is infinite, i.e. next to an
    end point with ``alpha = 0`` or ``sigma = 0``, where the extrapolation is
    undefined.

    ``state`` carries ``x_hat`` and ``h`` of the previous step.
    """
    schedule = denoise.schedule
    alpha_s, sigma_s = _scalar(schedule.alpha, t_cur), _scalar(schedule.sigma, t_cur)
    alpha_t, sigma_t = (
        _scalar(schedule.alpha, t_next),
        _scalar(schedule.sigma, t_next),
    )

    def half_log_snr(alpha: float, sigma: float) -> float:
        if alpha <= 0:
            return -math.inf
        if sigma <= 0:
            return math.inf
        return math.log(alpha) - math.log(sigma)

    h = half_log_snr(alpha_t, sigma_t) - half_log_snr(alpha_s, sigma_s)
    x_hat = denoise(z, t_cur)
    d = x_hat
    x_prev, h_prev = state.get("x_hat"), state.get("h")
    if x_prev is not None and math.isfinite(h) and math.isfinite(h_prev):
        r = h_prev / h
        d = x_hat + (x_hat - x_prev) / (2.0 * r)
    state["x_hat"], state["h"] = x_hat, h
    ratio = sigma_t / sigma_s
    return ratio * z + (alpha_t - alpha_s * ratio) * d


dpm_solver_pp_2m = register_sampler("dpm++2m", deterministic=True)(
    register_sampler("dpm_solver++", deterministic=True)(
        fixed_grid_sampler(
            dpm_solver_pp_2m_step,
            25,
            """DPM-Solver++(2M) (Lu et al. 2022b) on the probability-flow ODE.

    Deterministic; ``steps`` network evaluations plus one for the final
    denoising where ``sigma(t_min) > 0``. See :func:`dpm_solver_pp_2m_step`.

    Args:
        spacing: ``"logsnr"`` (default): a grid uniform in the log-SNR
            (:meth:`Schedule.log_snr_grid`), falling back to the schedule grid
            where the
            log-SNR is infinite at an end point; ``"schedule"``: the schedule's
            :meth:`~sbi_diffusion.path.schedules.Schedule.sampling_grid`. An explicit
            ``time_grid`` option overrides both.
        options: passed to :func:`run_fixed_grid`.

    Raises:
        ValueError: for an unknown ``spacing``.
    """,
            description="DPM-Solver++(2M)",
            spacing="logsnr",
        )
    )
)
