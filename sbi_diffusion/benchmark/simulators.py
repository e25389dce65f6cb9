"""Pure-torch simulators for the sbibm tasks ``sir`` and ``lotka_volterra``.

sbibm solves both ODE models through Julia (``diffeqtorch``, solver ``Tsit5`` with
``reltol=abstol=1e-8``), which is rarely available. The simulators here follow
sbibm's task definitions exactly -- initial conditions, time span, save grid,
subsampling, observation noise and output layout -- and replace only the ODE
solver: a batched fixed-step fourth-order Runge-Kutta integrator in float64 whose
step is small enough to match the Julia solution far below the observation noise.
Trajectories on which the fixed step would be too coarse (fast dynamics, detected
per simulation) are re-solved with a halved step, repeatedly, and as a last resort
with SciPy's adaptive ``DOP853`` at sbibm's tolerances. Trajectories that cannot be
solved become NaN, as in sbibm.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Binomial, LogNormal

# Largest |rate| * step tolerated by the fixed-step integrator before a trajectory
# is handed to the adaptive solver.
_MAX_RATE_TIMES_STEP = 0.25
# Times the step is halved for unresolved trajectories before SciPy takes over.
_REFINEMENTS = 6

# sbibm's SIR definition (sbibm/tasks/sir/task.py).
SIR_POPULATION = 1_000_000.0
SIR_INITIAL_INFECTED = 1.0
SIR_INITIAL_RECOVERED = 0.0
SIR_DAYS = 160.0
SIR_SAVEAT = 1.0
SIR_SUBSAMPLE_EVERY = 17
SIR_TOTAL_COUNT = 1000

# sbibm's Lotka-Volterra definition (sbibm/tasks/lotka_volterra/task.py).
LV_INITIAL_STATE = (30.0, 1.0)
LV_DAYS = 20.0
LV_SAVEAT = 0.1
LV_SUBSAMPLE_EVERY = 21
LV_NOISE_SCALE = 0.1
LV_CLAMP = (1e-10, 10_000.0)

VectorField = Callable[[Tensor, Tensor], Tensor]


def subsample_times(days: float, saveat: float, every: int) -> list[float]:
    """Times kept by sbibm's ``::every`` subsampling of the save grid.

    Args:
        days: End of the integration interval.
        saveat: Spacing of the save grid, starting at 0.
        every: Subsampling stride applied to the save grid.

    Returns:
        The kept save times, in increasing order.
    """
    num_saved = int(round(days / saveat)) + 1
    return [i * saveat for i in range(0, num_saved, every)]


def _rk4_step(f: VectorField, u: Tensor, p: Tensor, h: float) -> Tensor:
    k1 = f(u, p)
    k2 = f(u + 0.5 * h * k1, p)
    k3 = f(u + 0.5 * h * k2, p)
    k4 = f(u + h * k3, p)
    return u + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def solve_ode(
    f: VectorField,
    rate: Callable[[Tensor, Tensor], Tensor],
    u0: Tensor,
    params: Tensor,
    times: list[float],
    max_step: float,
    refinements: int = 0,
) -> tuple[Tensor, Tensor]:
    """Integrate a batch of autonomous ODEs with fixed-step RK4.

    A trajectory is unresolved where ``max_step`` times the largest local rate
    of change it met exceeds 0.25, or where it is not finite. With
    ``refinements > 0``, the unresolved ones are integrated again with the
    step halved, up to ``refinements`` times, and those still unresolved then
    with SciPy's DOP853 at ``rtol = atol = 1e-8``.

    Args:
        f: Vector field ``f(u, p)`` for states ``(batch, dim)`` and parameters
            ``(batch, num_params)``.
        rate: Per-simulation bound on the local rate of change ``(batch,)``; used
            to flag trajectories for which the step is too coarse.
        u0: Initial state, shape ``(dim,)``.
        params: Parameters, shape ``(batch, num_params)``.
        times: Increasing output times; the first one is the initial time.
        max_step: Largest integration step.
        refinements: How many times the step may be halved.

    Returns:
        States at ``times`` with shape ``(batch, dim, len(times))`` and a boolean
        mask ``(batch,)`` of the trajectories the fixed steps did not resolve
        (with ``refinements``, those solved by DOP853).
    """
    params = params.to(torch.float64)
    batch = params.shape[0]
    states = torch.empty(batch, u0.numel(), len(times), dtype=torch.float64)
    todo = torch.arange(batch)
    step = max_step
    for _ in range(refinements + 1):
        u = u0.to(torch.float64).expand(todo.numel(), -1).clone()
        out = [u]
        worst = torch.zeros(todo.numel(), dtype=torch.float64)
        for t_start, t_end in zip(times[:-1], times[1:], strict=True):
            num_steps = max(1, math.ceil((t_end - t_start) / step - 1e-9))
            h = (t_end - t_start) / num_steps
            for _ in range(num_steps):
                rates = rate(u, params[todo]).abs().nan_to_num(math.inf)
                worst = torch.maximum(worst, rates)
                u = _rk4_step(f, u, params[todo], h)
            out.append(u)
        solved = torch.stack(out, dim=-1)
        states[todo] = solved
        unresolved = (worst * step > _MAX_RATE_TIMES_STEP) | ~torch.isfinite(
            solved
        ).all(dim=(1, 2))
        todo = todo[unresolved]
        step = step / 2
        if not todo.numel():
            break
    mask = torch.zeros(batch, dtype=torch.bool)
    mask[todo] = True
    if refinements and todo.numel():
        states[todo] = _solve_adaptive(f, u0, params[todo], times)
    return states, mask


def _solve_adaptive(
    f: VectorField, u0: Tensor, params: Tensor, times: list[float]
) -> Tensor:
    """Solve single trajectories with SciPy's DOP853 at ``rtol=atol=1e-8``."""
    from scipy.integrate import solve_ivp

    results = []
    for p in params.to(torch.float64):

        def rhs(_t: float, y: np.ndarray, p: Tensor = p) -> np.ndarray:
            state = torch.from_numpy(y).reshape(1, -1)
            return f(state, p.reshape(1, -1)).reshape(-1).numpy()

        sol = solve_ivp(
            rhs,
            (times[0], times[-1]),
            u0.to(torch.float64).numpy(),
            method="DOP853",
            t_eval=np.asarray(times),
            rtol=1e-8,
            atol=1e-8,
        )
        if sol.status != 0 or sol.y.shape[1] != len(times):
            results.append(torch.full((u0.numel(), len(times)), math.nan))
        else:
            results.append(torch.from_numpy(sol.y))
    return torch.stack(results).to(torch.float64)


def _sir_field(u: Tensor, p: Tensor) -> Tensor:
    s, i = u[:, 0], u[:, 1]
    beta, gamma = p[:, 0], p[:, 1]
    infection = beta * s * i / SIR_POPULATION
    recovery = gamma * i
    return torch.stack([-infection, infection - recovery, recovery], dim=1)


def _sir_rate(u: Tensor, p: Tensor) -> Tensor:
    return p[:, 0] * (u[:, 0] + u[:, 1]).abs() / SIR_POPULATION + p[:, 1]


def sir_trajectories(theta: Tensor, max_step: float = 0.02) -> Tensor:
    """Solve the SIR ODE at sbibm's subsampled save times.

    Args:
        theta: Parameters ``(beta, gamma)``, shape ``(batch, 2)``.
        max_step: Largest RK4 step in days.

    Returns:
        States ``(S, I, R)`` with shape ``(batch, 3, 10)`` in float64.
    """
    u0 = torch.tensor(
        [
            SIR_POPULATION - SIR_INITIAL_INFECTED - SIR_INITIAL_RECOVERED,
            SIR_INITIAL_INFECTED,
            SIR_INITIAL_RECOVERED,
        ]
    )
    times = subsample_times(SIR_DAYS, SIR_SAVEAT, SIR_SUBSAMPLE_EVERY)
    theta = _as_batch(theta, 2)
    return solve_ode(_sir_field, _sir_rate, u0, theta, times, max_step, _REFINEMENTS)[0]


def sir_simulator(theta: Tensor, max_step: float = 0.02) -> Tensor:
    """Simulate sbibm's ``sir`` task (summary ``"subsample"``).

    Each simulation returns 10 counts ``Binomial(1000, I(t) / N)`` at days
    0, 17, ..., 153, exactly as sbibm's simulator does.

    Args:
        theta: Parameters ``(beta, gamma)``, shape ``(batch, 2)`` or ``(2,)``.
        max_step: Largest RK4 step in days.

    Returns:
        Data of shape ``(batch, 10)`` in float32; NaN rows where the ODE failed.
    """
    theta = _as_batch(theta, 2)
    infected = sir_trajectories(theta, max_step)[:, 1, :].float()
    data = torch.full_like(infected, math.nan)
    ok = ~torch.isnan(infected).any(dim=1)
    if ok.any():
        probs = (infected[ok] / SIR_POPULATION).clamp(0.0, 1.0)
        data[ok] = Binomial(total_count=SIR_TOTAL_COUNT, probs=probs).sample()
    return data


def _lv_field(u: Tensor, p: Tensor) -> Tensor:
    x, y = u[:, 0], u[:, 1]
    alpha, beta, gamma, delta = p.unbind(dim=1)
    return torch.stack([alpha * x - beta * x * y, -gamma * y + delta * x * y], dim=1)


def _lv_rate(u: Tensor, p: Tensor) -> Tensor:
    x, y = u[:, 0], u[:, 1]
    alpha, beta, gamma, delta = p.unbind(dim=1)
    return (alpha - beta * y).abs() + (delta * x - gamma).abs() + beta * x + delta * y


def lotka_volterra_trajectories(theta: Tensor, max_step: float = 0.005) -> Tensor:
    """Solve the Lotka-Volterra ODE at sbibm's subsampled save times.

    Args:
        theta: Parameters ``(alpha, beta, gamma, delta)``, shape ``(batch, 4)``.
        max_step: Largest RK4 step.

    Returns:
        States ``(prey, predator)`` with shape ``(batch, 2, 10)`` in float64.
    """
    u0 = torch.tensor(LV_INITIAL_STATE)
    times = subsample_times(LV_DAYS, LV_SAVEAT, LV_SUBSAMPLE_EVERY)
    theta = _as_batch(theta, 4)
    return solve_ode(_lv_field, _lv_rate, u0, theta, times, max_step, _REFINEMENTS)[0]


def lotka_volterra_simulator(theta: Tensor, max_step: float = 0.005) -> Tensor:
    """Simulate sbibm's ``lotka_volterra`` task (summary ``"subsample"``).

    Each simulation returns the prey and predator populations at times 0, 2.1, ...,
    18.9 with log-normal noise of scale 0.1 (populations clamped to
    ``[1e-10, 1e4]`` first), laid out as 10 prey values followed by 10 predator
    values, exactly as sbibm's simulator does.

    Args:
        theta: Parameters ``(alpha, beta, gamma, delta)``, shape ``(batch, 4)``.
        max_step: Largest RK4 step.

    Returns:
        Data of shape ``(batch, 20)`` in float32; NaN rows where the ODE failed.
    """
    theta = _as_batch(theta, 4)
    states = lotka_volterra_trajectories(theta, max_step).float()
    states = states.reshape(theta.shape[0], -1)
    data = torch.full_like(states, math.nan)
    ok = ~torch.isnan(states).any(dim=1)
    if ok.any():
        loc = torch.log(states[ok].clamp(*LV_CLAMP))
        data[ok] = LogNormal(loc=loc, scale=LV_NOISE_SCALE).sample()
    return data


def _as_batch(theta: Tensor, dim: int) -> Tensor:
    if theta.ndim == 1:
        theta = theta.reshape(1, -1)
    if theta.ndim != 2 or theta.shape[1] != dim:
        raise ValueError(
            f"Expected parameters of shape (batch, {dim}), got {tuple(theta.shape)}; "
            f"pass one row of {dim} parameters per simulation."
        )
    return theta
