r"""Log densities through the probability-flow ODE.

The probability-flow ODE ``dz/dt = v(z, t)`` transports the data distribution
into ``p_{t_max}``; by the instantaneous change of variables (Chen et al. 2018,
Neural ODEs; Song et al. 2021, Eq. 39)

.. math::
    \log p_{t_{min}}(z_{t_{min}}) = \log p_{t_{max}}(z_{t_{max}})
    + \int_{t_{min}}^{t_{max}} \nabla_z \cdot v(z_t, t)\, dt,

integrated forward from ``z_{t_min} = theta``. ``p_{t_max}`` is
``N(0, (alpha^2 + sigma^2) I)`` at ``t_max``. The divergence is exact (one
vector-Jacobian product per dimension) or Hutchinson's estimate
``E[eps^T (dv/dz) eps]`` with Rademacher probes (Hutchinson 1989; Grathwohl et
al. 2019, FFJORD), chosen by the dimension with ``divergence="auto"``
(:func:`resolve_divergence`).

The integral is solved adaptively (Dormand-Prince, the default, accurate to the
tolerances) or with ``steps`` fixed Heun steps (the trapezoidal rule of
Karras et al. 2022, Alg. 1, on the augmented state) along the schedule's
sampling grid, reversed. The fixed-step solver costs ``2 * steps`` network
evaluations whatever the model; it is meant for inner loops that evaluate many
densities, such as MCMC on a learned likelihood, where a small, smooth error in
``log p`` matters less than the cost.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbi_diffusion.model.interface import DenoiseFn
from sbi_diffusion.path.vector_field import ode_drift

__all__ = [
    "ADAPTIVE_LOG_PROB_ROWS",
    "DIVERGENCES",
    "EXACT_DIVERGENCE_MAX_DIM",
    "LARGE_BATCH_HEUN_STEPS",
    "ODE_LOG_PROB_SOLVERS",
    "ode_log_prob",
    "resolve_divergence",
    "resolve_log_prob_solver",
]

ODE_LOG_PROB_SOLVERS = ("dopri5", "heun")

ADAPTIVE_LOG_PROB_ROWS = 10_000
"""Batches up to this many rows get the adaptive solver with ``solver="auto"``."""

LARGE_BATCH_HEUN_STEPS = 16
"""Heun steps on larger batches with ``solver="auto"``."""

DEFAULT_HEUN_STEPS = 32
"""Heun steps where none are given."""

DIVERGENCES = ("auto", "exact", "hutchinson")

EXACT_DIVERGENCE_MAX_DIM = 32
"""Parameter dimensions up to this get the exact divergence with
``divergence="auto"``, larger ones Hutchinson's estimator
(:func:`resolve_divergence`)."""


def resolve_divergence(divergence: str, dim: int) -> str:
    r"""The divergence estimator of a density evaluation in dimension ``dim``.

    ``"auto"`` is ``"exact"`` up to :data:`EXACT_DIVERGENCE_MAX_DIM` dimensions
    and ``"hutchinson"`` above. The exact trace ``sum_i d v_i / d z_i`` costs one
    backward pass per dimension at every solver step, so a 64x64 field would
    take 4096 of them; Hutchinson's estimator (Hutchinson 1989; Grathwohl et al.
    2019, FFJORD)

    .. math::
        \nabla_z \cdot v = \mathbb{E}_\epsilon[\epsilon^\top (\partial v /
        \partial z)\, \epsilon], \qquad \epsilon_i \in \{-1, 1\},

    is unbiased with one vector-Jacobian product per probe, at the price of
    variance in ``log p`` (more probes reduce it). Up to 32 dimensions the exact
    trace costs at most 32 products and has no variance; the densities of the
    low-dimensional problems sbi is mostly used for stay exact.

    Raises:
        ValueError: for an unknown name.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"Unknown divergence {divergence!r}. Pass one of {list(DIVERGENCES)}."
        )
    if divergence == "auto":
        return "exact" if dim <= EXACT_DIVERGENCE_MAX_DIM else "hutchinson"
    return divergence


def _divergence_exact(v: Tensor, z: Tensor) -> Tensor:
    div = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for i in range(z.shape[1]):
        grad = torch.autograd.grad(v[:, i].sum(), z, retain_graph=True)[0]
        div = div + grad[:, i]
    return div


def _divergence_hutchinson(v: Tensor, z: Tensor, probes: Tensor) -> Tensor:
    total = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for probe in probes:
        vjp = torch.autograd.grad((v * probe).sum(), z, retain_graph=True)[0]
        total = total + (vjp * probe).sum(dim=1)
    return total / probes.shape[0]


def _increasing_grid(schedule, steps: int, t_min: float, like: Tensor) -> Tensor:
    """The schedule's sampling grid reversed, from ``t_min`` up to ``t_max``."""
    grid = schedule.sampling_grid(steps).flip(0).to(like)
    grid = grid[grid > t_min]
    return torch.cat([grid.new_tensor([t_min]), grid])


def _heun_integrate(drift, state: Tensor, grid: Tensor) -> Tensor:
    r"""Heun's method ``s_{n+1} = s_n + h/2 (f(t_n, s_n) + f(t_{n+1}, s_n + h
    f(t_n, s_n)))`` along an increasing ``grid``."""
    for t_cur, t_next in zip(grid[:-1], grid[1:], strict=True):
        h = t_next - t_cur
        slope = drift(t_cur, state)
        slope_next = drift(t_next, state + h * slope)
        state = state + 0.5 * h * (slope + slope_next)
    return state


def ode_log_prob(
    denoise: DenoiseFn,
    theta: Tensor,
    divergence: str = "auto",
    num_probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float | None = None,
    generator: torch.Generator | None = None,
    solver: str = "dopri5",
    steps: int = 32,
) -> Tensor:
    r"""``log p(theta)`` of the model defined by ``denoise`` (standardised space).

    Args:
        denoise: ``(z, t) -> x_hat`` with a ``schedule``.
        theta: points ``(batch, dim)`` in the space the denoiser models.
        divergence: ``"exact"``, ``"hutchinson"`` or ``"auto"`` (exact up to
            :data:`EXACT_DIVERGENCE_MAX_DIM` dimensions;
            :func:`resolve_divergence`).
        num_probes: Rademacher probes of the Hutchinson estimator.
        rtol, atol: tolerances of the Dormand-Prince solver.
        t_min: start of the integration; the schedule's (or ``1e-4`` where
            ``sigma(t_min) = 0``) if None.
        generator: random generator of the Hutchinson probes.
        solver: ``"dopri5"`` (adaptive) or ``"heun"`` (``steps`` fixed steps).
        steps: number of Heun steps (``solver="heun"`` only).

    Returns:
        Log densities ``(batch,)``.
    """
    divergence = resolve_divergence(divergence, theta.shape[1])
    if solver not in ODE_LOG_PROB_SOLVERS:
        raise ValueError(
            f"Unknown log_prob solver {solver!r}. Pass one of "
            f"{list(ODE_LOG_PROB_SOLVERS)}."
        )
    bad_steps = isinstance(steps, bool) or int(steps) != steps or steps < 1
    if solver == "heun" and bad_steps:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    schedule = denoise.schedule
    dim = theta.shape[1]
    if t_min is None:
        t_min = float(schedule.t_min)
        if float(schedule.sigma(torch.tensor([t_min]))) <= 0:
            t_min = 1e-4
    t_max = float(schedule.t_max)
    probes = None
    if divergence == "hutchinson":
        probes = (
            torch.randint(0, 2, (num_probes, *theta.shape), generator=generator).to(
                theta
            )
            * 2
            - 1
        )

    def augmented_drift(t: Tensor, state: Tensor) -> Tensor:
        with torch.enable_grad():
            z = state[:, :dim].detach().requires_grad_(True)
            tt = t.expand(z.shape[0])
            v = ode_drift(schedule, z, tt, denoise(z, tt))
            if probes is None:
                div = _divergence_exact(v, z)
            else:
                div = _divergence_hutchinson(v, z, probes)
        return torch.cat([v.detach(), div.detach()[:, None]], dim=1)

    state0 = torch.cat([theta, torch.zeros_like(theta[:, :1])], dim=1)
    if solver == "heun":
        grid = _increasing_grid(schedule, int(steps), t_min, theta)
        state1 = _heun_integrate(augmented_drift, state0, grid)
    else:
        from sbi_diffusion.samplers.adaptive import dopri5_integrate

        state1, _ = dopri5_integrate(
            augmented_drift,
            state0,
            torch.tensor(t_min, dtype=theta.dtype, device=theta.device),
            torch.tensor(t_max, dtype=theta.dtype, device=theta.device),
            rtol=rtol,
            atol=atol,
        )
    z1, integral = state1[:, :dim], state1[:, dim]
    std = schedule.prior_std()
    log_base = -0.5 * (z1**2).sum(dim=1) / std**2 - dim * (
        math.log(std) + 0.5 * math.log(2 * math.pi)
    )
    return log_base + integral


def resolve_log_prob_solver(
    num_rows: int, solver: str = "auto", steps: int | None = None
) -> tuple[str, int]:
    r"""The solver and Heun steps of a density evaluation on ``num_rows`` rows.

    ``solver="auto"`` takes the adaptive ``"dopri5"`` for up to
    :data:`ADAPTIVE_LOG_PROB_ROWS` rows and ``"heun"`` with
    :data:`LARGE_BATCH_HEUN_STEPS` steps above, where the cost of many densities
    matters more than the last digits of each (e.g. sbi's
    ``get_density_thresholder`` evaluates 10^6 of them). ``steps`` defaults to
    :data:`DEFAULT_HEUN_STEPS` otherwise.
    """
    if solver == "auto":
        large = num_rows > ADAPTIVE_LOG_PROB_ROWS
        solver = "heun" if large else "dopri5"
        if steps is None and large:
            steps = LARGE_BATCH_HEUN_STEPS
    return solver, DEFAULT_HEUN_STEPS if steps is None else steps
