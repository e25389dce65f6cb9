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
from sbi_diffusion.path.vector_field import as_time, ode_drift

__all__ = [
    "ADAPTIVE_LOG_PROB_ROWS",
    "DEFAULT_FUSED_STEPS",
    "DIVERGENCES",
    "EXACT_DIVERGENCE_MAX_DIM",
    "LARGE_BATCH_HEUN_STEPS",
    "ODE_LOG_PROB_SOLVERS",
    "ode_log_prob",
    "ode_sample_log_prob",
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

DEFAULT_FUSED_STEPS = 20
"""Solver steps of :func:`ode_sample_log_prob`: the densities' quadrature error
is then about that of :data:`LARGE_BATCH_HEUN_STEPS` Heun steps of
:func:`ode_log_prob` (measured in ``benchmarks/sequential/README.md``)."""

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
    probe_basis: Tensor | None = None,
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
        probe_basis: an orthogonal ``(dim, dim)`` basis the Hutchinson probes
            are drawn in (:func:`_probes`; e.g. the eigenvectors of the
            posterior covariance, which reduce the estimate's variance).

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
    probes = _probes(divergence, num_probes, theta, generator, probe_basis)

    def augmented_drift(t: Tensor, state: Tensor) -> Tensor:
        v, _, div = _drift_and_divergence(denoise, state[:, :dim], t, probes)
        return torch.cat([v, div[:, None]], dim=1)

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
    return _log_base_density(schedule, z1) + integral


def _log_base_density(schedule, z: Tensor) -> Tensor:
    """``log N(z; 0, prior_std^2 I)``, the density of ``z_{t_max}``."""
    std = schedule.prior_std()
    return -0.5 * (z**2).sum(dim=1) / std**2 - z.shape[1] * (
        math.log(std) + 0.5 * math.log(2 * math.pi)
    )


def _probes(
    divergence: str,
    num_probes: int,
    like: Tensor,
    generator: torch.Generator | None,
    probe_basis: Tensor | None = None,
) -> Tensor | None:
    r"""Probes ``(num_probes, *like.shape)`` for Hutchinson's estimator, None for
    the exact divergence: Rademacher vectors ``e``, or ``U e`` with an
    orthogonal ``probe_basis`` ``U`` ``(dim, dim)``.

    Any orthogonal ``U`` keeps the estimate unbiased, ``E[(U e)^T J (U e)] =
    tr(U^T J U) = tr(J)``, and its variance is ``2 sum_{i != j} (U^T J U)_{ij}^2``
    (for symmetric ``J``): zero where ``U`` diagonalises the Jacobian. The
    denoiser's Jacobian is the posterior covariance given ``z_t`` over
    ``sigma^2`` (Tweedie's formula), so the eigenvectors of the posterior
    covariance diagonalise it for a Gaussian posterior and nearly so for a
    near-Gaussian one.
    """
    if divergence != "hutchinson":
        return None
    signs = torch.randint(0, 2, (num_probes, *like.shape), generator=generator)
    probes = signs.to(like) * 2 - 1
    if probe_basis is not None:
        probes = probes @ probe_basis.to(like).T
    return probes


def _drift_and_divergence(
    denoise: DenoiseFn, z: Tensor, t: Tensor, probes: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The probability-flow drift ``v(z, t)``, ``x_hat(z, t)`` and ``div_z v``
    (exact if ``probes`` is None, else Hutchinson's estimate), detached."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        tt = as_time(t, z)
        x_hat = denoise(z, tt)
        v = ode_drift(denoise.schedule, z, tt, x_hat)
        if probes is None:
            div = _divergence_exact(v, z)
        else:
            div = _divergence_hutchinson(v, z, probes)
    return v.detach(), x_hat.detach(), div.detach()


class _DivergenceQuadrature:
    """A ``DenoiseFn`` that also takes the divergence of the probability-flow
    drift at every call and sums ``int div dt`` by the trapezoidal rule over the
    times it was called at (in the order of the calls)."""

    def __init__(self, denoise: DenoiseFn, probes: Tensor | None):
        self.denoise = denoise
        self.schedule = denoise.schedule
        self.probes = probes
        self.integral: Tensor | float = 0.0
        self._last: tuple[float, Tensor] | None = None

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        t = as_time(t, z)
        _, x_hat, div = _drift_and_divergence(self.denoise, z, t, self.probes)
        t_now = float(t[0])
        if self._last is not None:
            t_before, div_before = self._last
            self.integral = self.integral + 0.5 * (t_before - t_now) * (
                div_before + div
            )
        self._last = (t_now, div)
        return x_hat


def ode_sample_log_prob(
    denoise: DenoiseFn,
    noise: Tensor,
    steps: int = DEFAULT_FUSED_STEPS,
    divergence: str = "auto",
    num_probes: int = 1,
    generator: torch.Generator | None = None,
    probe_basis: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Samples and their log densities in one pass of the probability-flow ODE.

    Integrates the ODE from ``z_{t_max} = noise`` down to ``t_min`` with
    DPM-Solver++(2M) (Lu et al. 2022b; :func:`~sbi_diffusion.samplers.
    dpm_solver.dpm_solver_pp_2m_step`) on the log-SNR grid, and takes the
    divergence of the drift at each point of the trajectory where the solver
    evaluates the network. The instantaneous change of variables (Chen et al.
    2018; Song et al. 2021, Eq. 39) then gives

    .. math::
        \log p_{t_{min}}(z_{t_{min}}) = \log p_{t_{max}}(z_{t_{max}})
        + \int_{t_{min}}^{t_{max}} \nabla_z \cdot v(z_t, t)\, dt,

    with the integral by the trapezoidal rule over the ``steps + 1`` trajectory
    points. A sample and its density cost ``steps + 1`` network evaluations
    with the divergence; a sample followed by :func:`ode_log_prob` with ``n``
    Heun steps costs ``steps + 1`` evaluations plus ``2n`` with the divergence.
    The sample is the final denoising ``x_hat(z_{t_min}, t_min)`` that the
    sampler returns; its density is taken at ``z_{t_min}``, which differs from
    it by ``O(sigma(t_min)^2)``. Where ``sigma(t_min) = 0`` (rectified flow) the
    path stops at ``t = 1e-4``, as :func:`ode_log_prob` starts there. The
    quadrature is second order in the step; on the linear grid of rectified
    flow it needs about four times the steps of the log-SNR grid of the other
    schedules for the same error.

    Args:
        denoise: ``(z, t) -> x_hat`` with a ``schedule``.
        noise: ``z_{t_max}`` ``(batch, dim)``, drawn from ``N(0, prior_std^2 I)``
            (:func:`~sbi_diffusion.samplers.noise.initial_noise`).
        steps: solver steps.
        divergence, num_probes, generator, probe_basis: as in
            :func:`ode_log_prob`; with Hutchinson's estimate each row keeps its
            probes along its path.

    Returns:
        Samples ``(batch, dim)`` and log densities ``(batch,)``, in the space
        the denoiser models.
    """
    from sbi_diffusion.samplers.dpm_solver import dpm_solver_pp_2m_step

    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    schedule = denoise.schedule
    divergence = resolve_divergence(divergence, noise.shape[1])
    quadrature = _DivergenceQuadrature(
        denoise, _probes(divergence, num_probes, noise, generator, probe_basis)
    )
    grid = schedule.log_snr_grid(int(steps), device=noise.device)
    if grid is None:
        grid = schedule.sampling_grid(int(steps), device=noise.device)
    grid = grid.to(noise)
    if float(schedule.sigma(grid[-1:])) <= 0:
        grid = torch.cat([grid[:-1], grid.new_tensor([min(1e-4, float(grid[-2]) / 2)])])
    z, state = noise, {}
    for t_cur, t_next in zip(grid[:-1], grid[1:], strict=True):
        z = dpm_solver_pp_2m_step(quadrature, z, t_cur, t_next, state, None)
    samples = quadrature(z, grid[-1])
    return samples, _log_base_density(schedule, noise) + quadrature.integral


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
