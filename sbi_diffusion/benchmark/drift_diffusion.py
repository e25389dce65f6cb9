r"""The hierarchical drift-diffusion model of choices and response times.

Each subject ``j`` makes ``T`` two-choice decisions. A decision is a Wiener
process with drift ``nu_j`` and unit scale that starts at ``beta * alpha_j``
between the boundaries ``0`` and ``alpha_j``; the response time is the
first-passage time plus the non-decision time ``t0_j`` (Ratcliff 1978). The
subjects share seven global parameters, all real-valued,

.. math::
    g = (\mu_\nu, \mu_{\log\alpha}, \mu_{\log t_0}, \log\sigma_\nu,
    \log\sigma_{\log\alpha}, \log\sigma_{\log t_0}, \beta_{raw})
    \sim N(m, \mathrm{diag}(s^2)),

with ``m = (0.5, 0, -1, -1, -3, -1, 0)`` and ``s = (0.3, 0.05, 0.3, 1, 1, 0.3,
1)``, and the local parameters of subject ``j``

.. math::
    l_j = (\nu_j, \log\alpha_j, \log t_{0,j}) \mid g \sim
    N\big((\mu_\nu, \mu_{\log\alpha}, \mu_{\log t_0}),
    \mathrm{diag}(\sigma_\nu^2, \sigma_{\log\alpha}^2, \sigma_{\log t_0}^2)\big).

These are the priors of the hierarchical drift-diffusion case study of Arruda
et al. (2025, "Compositional amortized inference for large-scale hierarchical
Bayesian models") with one change: the starting point is
``beta = sigmoid(beta_raw / 5)`` (mean 0.5, standard deviation about 0.05),
a differentiable stand-in for their ``Beta(50, 50)`` quantile of
``Phi(beta_raw)``, so that the reference sampler needs no inverse incomplete
beta function.

A trial is recorded as ``(rt, c)`` with ``c = 1`` at the upper boundary. The
simulator steps the process by Euler-Maruyama (``dt = 1e-3``) and checks, at
each step, whether the Brownian bridge between the two grid points crossed a
boundary, which happens with probability ``exp(-2 d_0 d_1 / dt)`` for
distances ``d_0, d_1`` to the boundary (Gobet 2000, "Weak approximation of
killed diffusion using Euler schemes"); without it the grid misses crossings
and the boundary sits about ``0.58 sqrt(dt)`` too far out. The first-passage
time is then exact up to the grid, and it is recorded at the step's midpoint.
The reference posterior comes from NUTS (pyro) on the exact likelihood
(:func:`wiener_log_density`).
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

__all__ = [
    "GLOBAL_NAMES",
    "LOCAL_NAMES",
    "global_prior",
    "local_prior",
    "simulate_subjects",
    "simulate",
    "wiener_log_density",
    "log_likelihood",
    "nuts_reference",
]

GLOBAL_NAMES = (
    "mu_nu",
    "mu_log_alpha",
    "mu_log_t0",
    "log_sigma_nu",
    "log_sigma_log_alpha",
    "log_sigma_log_t0",
    "beta_raw",
)
LOCAL_NAMES = ("nu", "log_alpha", "log_t0")
_PRIOR_MEAN = (0.5, 0.0, -1.0, -1.0, -3.0, -1.0, 0.0)
_PRIOR_STD = (0.3, 0.05, 0.3, 1.0, 1.0, 0.3, 1.0)
_SERIES_TERMS = 7


def global_prior() -> Distribution:
    """The prior of the seven global parameters (:data:`GLOBAL_NAMES`)."""
    return Independent(Normal(torch.tensor(_PRIOR_MEAN), torch.tensor(_PRIOR_STD)), 1)


def local_prior(global_theta: Tensor) -> Distribution:
    """``p(l | g)`` for the rows of ``global_theta`` ``(n, 7)``: independent
    normals over ``(nu, log alpha, log t0)`` with the rows' means and
    ``exp(log sigma)`` standard deviations."""
    return Independent(Normal(global_theta[..., 0:3], global_theta[..., 3:6].exp()), 1)


def starting_point(beta_raw: Tensor) -> Tensor:
    """The relative starting point ``beta = sigmoid(beta_raw / 5)``."""
    return torch.sigmoid(beta_raw / 5)


def simulate_subjects(
    global_theta: Tensor,
    local_theta: Tensor,
    trials: int = 30,
    dt: float = 1e-3,
    max_time: float = 10.0,
) -> Tensor:
    """Trials ``(n, trials, 2)`` of ``(rt, c)`` for one subject per row.

    Args:
        global_theta: ``(n, 7)``; only ``beta_raw`` is used.
        local_theta: ``(n, 3)``, ``(nu, log alpha, log t0)``.
        trials: decisions per subject.
        dt: Euler-Maruyama step.
        max_time: decision time at which a process is stopped; it is then
            recorded with ``c = 0`` (with these priors a vanishing fraction).
    """
    n = global_theta.shape[0]
    nu = local_theta[:, 0].repeat_interleave(trials)
    alpha = local_theta[:, 1].exp().repeat_interleave(trials)
    beta = starting_point(global_theta[:, 6]).repeat_interleave(trials)
    y = beta * alpha
    rt = torch.full_like(y, max_time)
    choice = torch.zeros_like(y)
    active = torch.arange(y.shape[0])
    sqrt_dt = math.sqrt(dt)
    for step in range(1, int(round(max_time / dt)) + 1):
        if active.numel() == 0:
            break
        a, v, y0 = alpha[active], nu[active], y[active]
        y1 = y0 + v * dt + sqrt_dt * torch.randn_like(y0)
        inside = (y1 > 0) & (y1 < a)
        u = torch.rand_like(y0)
        upper_bridge = torch.exp(-2 * (a - y0) * (a - y1).clamp(min=0) / dt)
        lower_bridge = torch.exp(-2 * y0 * y1.clamp(min=0) / dt)
        up = (y1 >= a) | (inside & (u < upper_bridge))
        down = ~up & ((y1 <= 0) | (inside & (u < upper_bridge + lower_bridge)))
        done = up | down
        finished = active[done]
        rt[finished] = (step - 0.5) * dt
        choice[finished] = up[done].to(y.dtype)
        y[active] = y1
        active = active[~done]
    t0 = local_theta[:, 2].exp().repeat_interleave(trials)
    return torch.stack([rt + t0, choice], -1).reshape(n, trials, 2)


def simulate(
    num_subjects: int, trials: int = 30, global_theta: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(g, l, x)``: one global draw per subject, or ``global_theta`` ``(7,)``
    shared by all ``num_subjects`` (a data set), with their locals and trials."""
    if global_theta is None:
        g = global_prior().sample((num_subjects,))
    else:
        g = global_theta.expand(num_subjects, len(GLOBAL_NAMES))
    loc = local_prior(g).sample()
    return g, loc, simulate_subjects(g, loc, trials)


def _log_small_time(u: Tensor, w: Tensor) -> Tensor:
    r"""``log f(u | w)`` of the standardised lower-boundary density by the
    small-time series, ``f = (2\pi u^3)^{-1/2} \sum_k (w + 2k)
    e^{-(w + 2k)^2 / (2u)}``, the ``k = 0`` exponent factored out."""
    k = torch.arange(-_SERIES_TERMS, _SERIES_TERMS + 1, dtype=u.dtype)
    shift = w[..., None] + 2 * k
    terms = shift * torch.exp(-(shift**2 - w[..., None] ** 2) / (2 * u[..., None]))
    return (
        -0.5 * torch.log(2 * math.pi * u**3) - w**2 / (2 * u) + torch.log(terms.sum(-1))
    )


def _log_large_time(u: Tensor, w: Tensor) -> Tensor:
    r"""The same by the large-time series, ``f = \pi \sum_{k \ge 1} k
    e^{-k^2 \pi^2 u / 2} \sin(k \pi w)``, the ``k = 1`` exponent factored
    out."""
    k = torch.arange(1, _SERIES_TERMS + 1, dtype=u.dtype)
    terms = (
        k
        * torch.exp(-(k**2 - 1) * math.pi**2 * u[..., None] / 2)
        * torch.sin(k * math.pi * w[..., None])
    )
    return math.log(math.pi) - math.pi**2 * u / 2 + torch.log(terms.sum(-1))


def wiener_log_density(
    decision_time: Tensor, nu: Tensor, alpha: Tensor, beta: Tensor, upper: Tensor
) -> Tensor:
    r"""Log density of a first passage at ``decision_time`` through the upper
    (``upper`` true) or lower boundary.

    For the lower boundary (Navarro & Fuss 2009, "Fast and accurate
    calculations for first-passage times in Wiener diffusion models"),

    .. math::
        p(\tau \mid \nu, \alpha, \beta) = \frac{1}{\alpha^2}
        e^{-\nu\alpha\beta - \nu^2\tau/2} f(\tau / \alpha^2 \mid \beta),

    with ``f`` the unit-boundary, zero-drift density: its small-time series
    for ``u = tau / alpha^2 < 1``, its large-time series otherwise, seven
    terms each (both truncations below ``e^{-50}`` relative there). The upper
    boundary is the lower one of ``(-nu, 1 - beta)``. Times ``<= 0`` give
    ``-inf``. Arguments broadcast.
    """
    nu = torch.where(upper, -nu, nu)
    w = torch.where(upper, 1 - beta, beta)
    tau, nu, alpha, w = torch.broadcast_tensors(decision_time, nu, alpha, w)
    positive = tau > 0
    u = torch.where(positive, tau, torch.ones_like(tau)) / alpha**2
    log_f = torch.where(
        u < 1,
        _log_small_time(u.clamp(max=1), w),
        _log_large_time(u.clamp(min=1), w),
    )
    log_p = log_f - 2 * torch.log(alpha) - nu * alpha * w - nu**2 * u * alpha**2 / 2
    return torch.where(positive, log_p, torch.full_like(log_p, -math.inf))


def log_likelihood(global_theta: Tensor, local_theta: Tensor, x: Tensor) -> Tensor:
    """``sum_k log p(x_jk | g, l_j)`` per subject: ``global_theta`` ``(..., 7)``,
    ``local_theta`` ``(..., G, 3)``, ``x`` ``(G, T, 2)``; returns ``(..., G)``."""
    nu = local_theta[..., 0, None]
    alpha = local_theta[..., 1, None].exp()
    t0 = local_theta[..., 2, None].exp()
    beta = starting_point(global_theta[..., 6])[..., None, None]
    rt, upper = x[..., 0], x[..., 1] > 0.5
    return wiener_log_density(rt - t0, nu, alpha, beta, upper).sum(-1)


def nuts_reference(
    x: Tensor,
    num_samples: int = 1000,
    warmup_steps: int = 1000,
    seed: int = 0,
    show_progress_bars: bool = False,
) -> tuple[Tensor, Tensor, dict]:
    """Global ``(num_samples, 7)`` and local ``(num_samples, G, 3)`` posterior
    samples for one data set ``x`` ``(G, T, 2)`` by NUTS (Hoffman & Gelman
    2014) in pyro, in float64, with the locals non-centred
    (``l_j = mu + sigma * eps_j``), and a record (seconds, step size,
    divergences, and the global parameters' effective sample sizes and split
    R-hat)."""
    import pyro
    import pyro.distributions as pdist
    from pyro.infer import MCMC, NUTS
    from pyro.infer.autoguide import init_to_value

    x = x.double()
    num_groups = x.shape[0]
    mean = torch.tensor(_PRIOR_MEAN, dtype=torch.float64)
    std = torch.tensor(_PRIOR_STD, dtype=torch.float64)

    def model():
        g = pyro.sample("g", pdist.Normal(mean, std).to_event(1))
        eps = pyro.sample(
            "eps",
            pdist.Normal(torch.zeros(num_groups, 3, dtype=torch.float64), 1.0).to_event(
                2
            ),
        )
        loc = g[..., None, 0:3] + g[..., None, 3:6].exp() * eps
        pyro.factor("trials", log_likelihood(g, loc, x).sum(-1))

    # start with every t0 below every response time
    start = mean.clone()
    start[2] = math.log(0.8 * float(x[..., 0].min()))
    start[5] = -4.0
    init = {"g": start, "eps": torch.zeros(num_groups, 3, dtype=torch.float64)}
    pyro.set_rng_seed(seed)
    kernel = NUTS(model, init_strategy=init_to_value(values=init), max_tree_depth=8)
    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        disable_progbar=not show_progress_bars,
    )
    began = time.time()
    mcmc.run()
    seconds = time.time() - began
    draws = mcmc.get_samples()
    g, eps = draws["g"], draws["eps"]
    loc = g[:, None, 0:3] + g[:, None, 3:6].exp() * eps
    diagnostics = mcmc.diagnostics()
    diverging = diagnostics["divergences"]["chain 0"]
    record = {
        "seconds": seconds,
        "step_size": float(kernel.step_size),
        "divergences": len(diverging),
        "global_n_eff": diagnostics["g"]["n_eff"].tolist(),
        "global_split_r_hat": diagnostics["g"]["r_hat"].tolist(),
        "num_samples": num_samples,
        "warmup_steps": warmup_steps,
    }
    return g.float(), loc.float(), record
