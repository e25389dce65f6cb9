"""Samplers against the exact denoiser of a Gaussian target.

For data ``N(m, S)`` the denoiser ``x_hat(z, t)`` is known in closed form
(:class:`~sbi_diffusion.path.gaussian.GaussianDenoiser`), so every sampler should
return samples of ``N(m, S)`` up to its discretisation error. Errors are measured
in whitened units ``L^{-1}(x - m)`` (``S = L L^T``): the norm of the sample mean
and the Frobenius norm of ``cov - I``. Their standard errors for ``n`` samples
in ``d`` dimensions are ``sqrt(d / n)`` and ``sqrt(d (d + 1) / n)``; the
tolerances are a few standard errors plus a discretisation allowance
``C / steps^order``.

Deterministic solvers are also checked pathwise: for a Gaussian target the
probability-flow ODE maps ``z_{t_max}`` linearly, in the eigenbasis of ``S``,
``u_t = sqrt(v_t / v_T) u_T`` with ``v_t = alpha_t^2 lambda + sigma_t^2``, so the
error of each solver and its order of convergence can be measured exactly.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from sbi_diffusion.path.gaussian import GaussianDenoiser
from sbi_diffusion.path.schedules import get_schedule, shift_times
from sbi_diffusion.samplers import (
    dopri5_integrate,
    get_sampler,
    initial_noise,
    langevin_correct,
    sampling_end_time,
)

SCHEDULES = ["vp", "cosine", "edm", "edm_vp", "rectified_flow"]
DIM = 3
MEAN = torch.tensor([0.5, 0.3, 0.7], dtype=torch.float64)
STD = torch.tensor([0.3, 1.0, 1.5], dtype=torch.float64)
CORR = torch.tensor(
    [[1.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 1.0]], dtype=torch.float64
)
COV = STD[:, None] * CORR * STD[None, :]
CHOL = torch.linalg.cholesky(COV)
N_SAMPLES = 20_000


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The per-step work is small; one thread avoids oversubscribed cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class EigenGaussianDenoiser(GaussianDenoiser):
    """:class:`GaussianDenoiser` evaluated in the eigenbasis of ``S``.

    ``x_hat = m + Q diag(alpha lambda / (alpha^2 lambda + sigma^2)) Q^T (z - alpha
    m)``: the same function without a matrix inverse per row, which makes the
    thousands of calls of these tests fast (checked against the parent class in
    :func:`test_eigen_denoiser_matches_gaussian_denoiser`).
    """

    def __init__(self, schedule, mean, cov):
        super().__init__(schedule, mean, cov)
        self.evals, self.evecs = torch.linalg.eigh(self.cov)

    def forward(self, z, t):
        t = torch.as_tensor(t, dtype=torch.float64, device=z.device)
        if t.dim() == 1 and t.numel() > 0 and bool((t == t[0]).all()):
            t = t[0]  # one time for the batch: evaluate the schedule once
        t = t.reshape(-1).double()
        alpha = self.schedule.alpha(t)[:, None]
        sigma = self.schedule.sigma(t)[:, None]
        gain = alpha * self.evals / (alpha**2 * self.evals + sigma**2)
        u = (z.double() - alpha * self.mean) @ self.evecs
        return (self.mean + (gain * u) @ self.evecs.T).to(z.dtype)


def make_denoiser(schedule_name: str) -> EigenGaussianDenoiser:
    return EigenGaussianDenoiser(get_schedule(schedule_name), MEAN, COV)


def errors(samples: torch.Tensor) -> tuple[float, float]:
    """Whitened mean norm and Frobenius norm of ``cov - I``."""
    w = torch.linalg.solve_triangular(CHOL, (samples.double() - MEAN).T, upper=False).T
    cov = torch.cov(w.T)
    return float(w.mean(0).norm()), float((cov - torch.eye(DIM)).norm())


def standard_errors(n: int) -> tuple[float, float]:
    return math.sqrt(DIM / n), math.sqrt(DIM * (DIM + 1) / n)


def draw(schedule_name: str, sampler: str, n: int, seed: int = 0, **options):
    """Run ``sampler`` from seeded initial noise; returns ``SamplerResult``."""
    denoise = make_denoiser(schedule_name)
    generator = torch.Generator().manual_seed(seed)
    noise = initial_noise(denoise.schedule, (n, DIM), generator=generator)
    return get_sampler(sampler)(denoise, noise, generator=generator, **options)


@functools.cache
def cached_errors(schedule_name: str, config: str) -> tuple[float, float, float]:
    """``(mean error, cov error, nfe)`` of a configuration in ``CONFIGS``."""
    sampler, options, n, _ = CONFIGS[config]
    result = draw(schedule_name, sampler, n, **options)
    assert result.samples.shape == (n, DIM)
    assert result.samples.dtype == torch.float32
    assert torch.isfinite(result.samples).all()
    return (*errors(result.samples), result.nfe)


# name -> (sampler, options, number of samples, (C_cov, order)); the covariance
# allowance is C_cov / steps^order (a constant for the adaptive solvers).
CONFIGS = {
    "euler": ("euler", {"steps": 200}, N_SAMPLES, (10.0, 1)),
    "heun": ("heun", {"steps": 40}, N_SAMPLES, (40.0, 2)),
    "ddim": ("ddim", {"steps": 200}, N_SAMPLES, (10.0, 1)),
    "ddim_eta_0.5": ("ddim", {"steps": 100, "eta": 0.5}, N_SAMPLES, (20.0, 1)),
    "ddpm": ("ddim", {"steps": 200, "eta": 1.0}, N_SAMPLES, (30.0, 1)),
    "euler_maruyama": ("euler_maruyama", {"steps": 500}, N_SAMPLES, (10.0, 1)),
    "dpm++2m": ("dpm++2m", {"steps": 40}, N_SAMPLES, (40.0, 2)),
    "dpm_solver++": ("dpm_solver++", {"steps": 40}, 2_000, (40.0, 2)),
    "dopri5": ("dopri5", {}, N_SAMPLES, (0.02, 0)),
    "adaptive_sde": ("adaptive_sde", {}, 5_000, (0.03, 0)),
    "heun_24": ("heun", {"steps": 24}, N_SAMPLES, (None, 2)),
}

# Euler and Heun (samplers/ode.py) step in t on v = alpha' x_hat + sigma' eps_hat.
# On the variance-exploding EDM path sigma(t) is a 7th-degree polynomial of t,
# so their error constants are far larger there than for Karras et al.'s steps
# in sigma (measured: cov error 0.32 for Euler with 200 steps, 0.11 for Heun
# with 40 steps).
SCHEDULE_OVERRIDES = {("edm", "euler"): (80.0, 1), ("edm", "heun"): (250.0, 2)}

DISTRIBUTION_CASES = [
    (schedule, config)
    for schedule in SCHEDULES
    for config in CONFIGS
    if config != "heun_24"
]


@pytest.mark.parametrize(("schedule_name", "config"), DISTRIBUTION_CASES)
def test_sampler_matches_gaussian_target(schedule_name, config):
    sampler, options, n, (c_cov, order) = CONFIGS[config]
    c_cov, order = SCHEDULE_OVERRIDES.get((schedule_name, config), (c_cov, order))
    steps = options.get("steps", 1)
    se_mean, se_cov = standard_errors(n)
    # 0.02: the initial noise N(0, prior_std^2 I) is not exactly z_{t_max}
    # (e.g. alpha(t_max) m = 0.006 on edm_vp), plus the mean discretisation error.
    mean_tol = 3.0 * se_mean + 0.02
    cov_tol = 3.5 * se_cov + c_cov / steps**order
    mean_err, cov_err, nfe = cached_errors(schedule_name, config)
    assert mean_err <= mean_tol, (mean_err, mean_tol)
    assert cov_err <= cov_tol, (cov_err, cov_tol)
    assert nfe > 0


_NOT_AS_CLOSE = pytest.mark.xfail(
    reason="Heun of samplers/ode.py steps in t: with 49 NFE its cov error is 0.08 "
    "on vp (sigma ~ sqrt(t) near t_min) and 0.3 on EDM-VE (see "
    "SCHEDULE_OVERRIDES), above Euler-Maruyama with 500 steps.",
    strict=False,
)


@pytest.mark.parametrize(
    ("schedule_name", "fast"),
    [
        pytest.param(
            s,
            f,
            marks=_NOT_AS_CLOSE if f == "heun_24" and s in ("vp", "edm") else (),
        )
        for s in SCHEDULES
        for f in ("heun_24", "dpm++2m")
    ],
)
def test_fast_solvers_as_close_as_euler_maruyama(schedule_name, fast):
    """Heun (24 steps, 47-49 NFE) and DPM-Solver++(2M) (40 steps, 40-41 NFE)
    are as close to the target as Euler-Maruyama with 500 steps; the slack is one
    standard error of the covariance error."""
    mean_fast, cov_fast, nfe_fast = cached_errors(schedule_name, fast)
    mean_em, cov_em, nfe_em = cached_errors(schedule_name, "euler_maruyama")
    se_mean, se_cov = standard_errors(N_SAMPLES)
    assert 20 <= nfe_fast <= 50 and nfe_em >= 500
    assert cov_fast <= cov_em + se_cov, (cov_fast, cov_em)
    assert mean_fast <= mean_em + 2 * se_mean, (mean_fast, mean_em)


def test_eigen_denoiser_matches_gaussian_denoiser():
    z = torch.randn(64, DIM, dtype=torch.float64)
    for name in SCHEDULES:
        schedule = get_schedule(name)
        t = schedule.t_min + (schedule.t_max - schedule.t_min) * torch.rand(64)
        t = t.double()
        fast = EigenGaussianDenoiser(schedule, MEAN, COV)(z, t)
        reference = GaussianDenoiser(schedule, MEAN, COV)(z, t)
        torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- pathwise


def exact_flow(schedule, z: torch.Tensor, t_start: float, t_end: float):
    """Exact probability-flow ODE map from ``t_start`` to ``t_end``, followed by
    the final denoising ``x_hat(z, t_end)`` where ``sigma(t_end) > 0``."""
    evals, evecs = torch.linalg.eigh(COV)
    times = torch.tensor([t_start, t_end], dtype=torch.float64)
    alpha, sigma = schedule.alpha(times), schedule.sigma(times)
    var = alpha[:, None] ** 2 * evals + sigma[:, None] ** 2
    u = (z.double() - alpha[0] * MEAN) @ evecs * torch.sqrt(var[1] / var[0])
    if sigma[1] > 0:
        return MEAN + (alpha[1] * evals / var[1] * u) @ evecs.T
    return alpha[1] * MEAN + u @ evecs.T


def pathwise_error(schedule_name: str, sampler: str, steps: int, z) -> float:
    denoise = make_denoiser(schedule_name)
    schedule = denoise.schedule
    out = get_sampler(sampler)(denoise, z, steps=steps).samples
    reference = exact_flow(schedule, z, float(schedule.t_max), float(schedule.t_min))
    return float((out - reference).abs().max())


@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize(
    ("sampler", "order"), [("euler", 1), ("ddim", 1), ("heun", 2), ("dpm++2m", 2)]
)
def test_deterministic_solvers_converge_with_their_order(schedule_name, sampler, order):
    """Doubling the steps from 80 to 160 divides the pathwise error by about
    ``2^order``."""
    schedule = get_schedule(schedule_name)
    generator = torch.Generator().manual_seed(1)
    z = initial_noise(schedule, (200, DIM), generator=generator).double()
    coarse = pathwise_error(schedule_name, sampler, 80, z)
    fine = pathwise_error(schedule_name, sampler, 160, z)
    ratio = coarse / fine
    if order == 1:
        assert 1.6 <= ratio <= 2.5, (coarse, fine)
    else:
        # 2.5: DPM-Solver++(2M) on rectified flow is still pre-asymptotic at 80
        # steps (ratio 2.7; the log-SNR steps next to alpha = 0 and sigma = 0 do
        # not shrink with the grid); elsewhere the ratio is 3.7-4.1.
        assert ratio >= 2.5, (coarse, fine)
    assert fine < (1.0 if order == 1 else 0.05)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_dopri5_pathwise_accuracy_follows_tolerance(schedule_name):
    schedule = get_schedule(schedule_name)
    denoise = make_denoiser(schedule_name)
    generator = torch.Generator().manual_seed(2)
    z = initial_noise(schedule, (100, DIM), generator=generator).double()
    reference = exact_flow(
        schedule, z, float(schedule.t_max), sampling_end_time(schedule)
    )
    loose = get_sampler("dopri5")(denoise, z)
    tight = get_sampler("dopri5")(denoise, z, rtol=1e-7, atol=1e-9)
    loose_err = float((loose.samples - reference).abs().max())
    tight_err = float((tight.samples - reference).abs().max())
    assert loose_err < 5e-3
    assert tight_err < 1e-6
    assert tight.nfe > loose.nfe > 0


# ---------------------------------------------------------- dopri5 integrator


def test_dopri5_integrate_linear_system_any_shape():
    """``dy/dt = A y`` row-wise on a ``(4, 2, 3)`` state, forwards and backwards."""
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(3, 3, generator=generator, dtype=torch.float64) * 0.5
    y0 = torch.randn(4, 2, 3, generator=generator, dtype=torch.float64)

    def f(t, y):
        assert t.dim() == 0 and t.dtype == y.dtype
        return y @ a.T

    y1, nfe = dopri5_integrate(f, y0, 0.0, 2.0, rtol=1e-8, atol=1e-10)
    expected = y0 @ torch.linalg.matrix_exp(2.0 * a).T
    torch.testing.assert_close(y1, expected, rtol=1e-6, atol=1e-7)
    assert isinstance(nfe, int) and nfe > 0 and (nfe - 2) % 6 == 0
    back, _ = dopri5_integrate(f, y1, 2.0, 0.0, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(back, y0, rtol=1e-6, atol=1e-7)
    # A time-dependent scalar problem: y' = cos(t) y, y = exp(sin t).
    scalar, _ = dopri5_integrate(
        lambda t, y: torch.cos(t) * y,
        torch.ones((), dtype=torch.float64),
        0.0,
        3.0,
        rtol=1e-9,
        atol=1e-12,
    )
    assert abs(float(scalar) - math.exp(math.sin(3.0))) < 1e-7


def test_dopri5_integrate_edge_cases():
    y0 = torch.ones(2, 2)
    same, nfe = dopri5_integrate(lambda t, y: -y, y0, 0.5, 0.5)
    assert nfe == 0 and torch.equal(same, y0)
    with pytest.raises(RuntimeError, match="max_steps"):
        dopri5_integrate(lambda t, y: -50.0 * y, y0, 0.0, 10.0, max_steps=3)
    with pytest.raises(RuntimeError, match="not finite"):
        dopri5_integrate(lambda t, y: torch.full_like(y, float("nan")), y0, 0.0, 1.0)

    def blows_up(t, y):  # finite at t0 = 0 only
        return y if float(t) == 0.0 else torch.full_like(y, float("nan"))

    with pytest.raises(RuntimeError, match="underflow"):
        dopri5_integrate(blows_up, y0, 0.0, 1.0, first_step=0.1)
    with pytest.raises(ValueError):
        dopri5_integrate(lambda t, y: -y, y0, 0.0, 1.0, rtol=0.0, atol=0.0)


# -------------------------------------------------------------------- NFE


@pytest.mark.parametrize("schedule_name", ["vp", "rectified_flow"])
def test_fixed_grid_nfe(schedule_name):
    """``steps`` evaluations (Heun: two per step, one on a last step to
    ``sigma = 0``), plus one final denoising where ``sigma(t_min) > 0``."""
    final = 1 if schedule_name == "vp" else 0
    steps = 7
    expected = {
        "euler": steps + final,
        "heun": 2 * steps + (1 if final else -1),
        "ddim": steps + final,
        "euler_maruyama": steps + final,
        "dpm++2m": steps + final,
    }
    for sampler, nfe in expected.items():
        result = draw(schedule_name, sampler, 16, steps=steps)
        assert result.nfe == nfe, sampler
    # One Langevin step after every predictor step that ends at sigma > 0.
    corrected = draw(
        schedule_name, "euler_maruyama", 16, steps=steps, corrector="langevin"
    )
    assert corrected.nfe == 2 * steps + (1 if final else -1)


@pytest.mark.parametrize("sampler", ["dopri5", "adaptive_sde"])
def test_adaptive_nfe_is_positive_float(sampler):
    result = draw("edm_vp", sampler, 64)
    assert isinstance(result.nfe, float)
    assert 0 < result.nfe < 10_000


def test_adaptive_sde_counts_rows_per_sample():
    """Rows finish at different times; the NFE is the mean over rows."""
    result = draw("vp", "adaptive_sde", 256)
    assert result.nfe > 10  # at least a few steps
    assert result.nfe < 2 * 10_000 + 1


# --------------------------------------------------- randomness and inputs


@pytest.mark.parametrize(
    ("sampler", "options"),
    [
        ("euler_maruyama", {"steps": 30}),
        ("ddim", {"steps": 30, "eta": 1.0}),
        ("ddim", {"steps": 30, "eta": 0.3}),
        ("adaptive_sde", {"eps_rel": 0.2}),
        ("euler", {"steps": 30, "corrector": "langevin"}),
    ],
)
def test_stochastic_samplers_are_reproducible(sampler, options):
    first = draw("cosine", sampler, 128, seed=5, **options).samples
    again = draw("cosine", sampler, 128, seed=5, **options).samples
    other = draw("cosine", sampler, 128, seed=6, **options).samples
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize(
    "sampler",
    ["euler", "heun", "ddim", "euler_maruyama", "dpm++2m", "dopri5", "adaptive_sde"],
)
def test_samplers_leave_the_noise_unchanged(sampler):
    denoise = make_denoiser("edm_vp")
    noise = initial_noise(denoise.schedule, (32, DIM))
    copy = noise.clone()
    get_sampler(sampler)(denoise, noise, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise, copy)


def test_unknown_sampler_lists_names():
    with pytest.raises(ValueError) as info:
        get_sampler("leapfrog")
    for name in ("euler", "heun", "euler_maruyama", "ddim", "dpm++2m", "dopri5"):
        assert repr(name) in str(info.value)


@pytest.mark.parametrize(
    "sampler", ["euler", "heun", "ddim", "euler_maruyama", "dpm++2m", "dpm_solver++"]
)
@pytest.mark.parametrize("steps", [0, -3, None])
def test_invalid_steps_raise(sampler, steps):
    denoise = make_denoiser("vp")
    noise = initial_noise(denoise.schedule, (4, DIM))
    with pytest.raises(ValueError, match="steps"):
        get_sampler(sampler)(denoise, noise, steps=steps)


def test_shift_times_fixes_the_ends_and_moves_inner_times():
    grid = torch.linspace(1.0, 0.0, 11)
    assert torch.equal(shift_times(grid, 1.0), grid)
    for shift in (0.5, 3.0):
        shifted = shift_times(grid, shift)
        assert shifted[0] == 1.0 and shifted[-1] == 0.0
        assert bool((shifted[:-1] > shifted[1:]).all())  # still decreasing
        inner = slice(1, -1)
        if shift < 1:
            assert bool((shifted[inner] < grid[inner]).all())  # towards data
        else:
            assert bool((shifted[inner] > grid[inner]).all())  # towards noise
    for bad in (0.0, -1.0, True, "half"):
        with pytest.raises(ValueError, match="positive number"):
            shift_times(grid, bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        shift_times(torch.linspace(80.0, 0.0, 5), 0.5)


@pytest.mark.parametrize("schedule_name", ["rectified_flow", "vp"])
@pytest.mark.parametrize("sampler", ["heun", "dpm++2m"])
def test_time_shift_samples_on_a_shifted_grid(schedule_name, sampler):
    """``time_shift`` reaches the fixed-grid samplers: 1 changes nothing, 0.5
    changes the path but still solves the probability-flow ODE accurately."""
    schedule = get_schedule(schedule_name)
    generator = torch.Generator().manual_seed(2)
    z = initial_noise(schedule, (200, DIM), generator=generator).double()
    denoise = make_denoiser(schedule_name)
    run = get_sampler(sampler)
    plain = run(denoise, z, steps=80).samples
    assert torch.equal(run(denoise, z, steps=80, time_shift=1.0).samples, plain)
    shifted = run(denoise, z, steps=80, time_shift=0.5).samples
    assert not torch.equal(shifted, plain)
    reference = exact_flow(schedule, z, float(schedule.t_max), float(schedule.t_min))
    assert float((shifted - reference).abs().max()) < 0.05


def test_invalid_options_raise():
    denoise = make_denoiser("vp")
    noise = initial_noise(denoise.schedule, (4, DIM))
    with pytest.raises(ValueError, match="eta"):
        get_sampler("ddim")(denoise, noise, eta=1.5)
    with pytest.raises(ValueError, match="spacing"):
        get_sampler("dpm++2m")(denoise, noise, spacing="quadratic")
    with pytest.raises(ValueError, match="corrector"):
        get_sampler("euler_maruyama")(denoise, noise, corrector="hmc")
    with pytest.raises(ValueError):
        get_sampler("adaptive_sde")(denoise, noise, eps_abs=0.0)
    with pytest.raises(RuntimeError, match="max_steps"):
        get_sampler("adaptive_sde")(denoise, noise, max_steps=3)
    with pytest.raises(RuntimeError, match="max_steps"):
        get_sampler("dopri5")(denoise, noise, max_steps=2)


def test_ddim_eta_zero_is_deterministic_and_equals_dpm_first_order():
    """DDIM with ``eta = 0`` uses no randomness; on the schedule grid it is the
    first-order DPM-Solver step, so it matches the first DPM-Solver++ step."""
    a = draw("vp", "ddim", 64, seed=0, steps=1)
    b = draw("vp", "dpm++2m", 64, seed=0, steps=1, spacing="schedule")
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------- Langevin


@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("predictor", ["euler_maruyama", "ddim"])
def test_langevin_corrector_improves_coarse_predictors(schedule_name, predictor):
    """Song et al. (2021) predictor-corrector: with 20 predictor steps one
    Langevin step per step reduces (or keeps) the covariance error."""
    n = 10_000
    _, plain = errors(draw(schedule_name, predictor, n, steps=20).samples)
    _, corrected = errors(
        draw(schedule_name, predictor, n, steps=20, corrector="langevin").samples
    )
    assert corrected <= plain + 0.25 * standard_errors(n)[1], (corrected, plain)


def test_langevin_keeps_the_marginal():
    """Started in ``p_t`` the corrector stays in ``p_t`` (up to its small
    discretisation bias, below 1% of the variances for ``snr = 0.1``)."""
    n = 20_000
    denoise = make_denoiser("vp")
    schedule = denoise.schedule
    t = torch.tensor(0.3)
    alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
    cov_t = alpha**2 * COV + sigma**2 * torch.eye(DIM, dtype=torch.float64)
    generator = torch.Generator().manual_seed(7)
    chol_t = torch.linalg.cholesky(cov_t)
    eps = torch.randn(n, DIM, generator=generator, dtype=torch.float64)
    z = (alpha * MEAN + eps @ chol_t.T).float()
    z = langevin_correct(denoise, z, t, 10, 0.1, generator)
    w = torch.linalg.solve_triangular(
        chol_t, (z.double() - alpha * MEAN).T, upper=False
    )
    se_mean, se_cov = standard_errors(n)
    cov_err = float((torch.cov(w) - torch.eye(DIM)).norm())
    assert float(w.mean(1).norm()) <= 3 * se_mean
    assert cov_err <= 3.5 * se_cov + 0.02


def test_langevin_rejects_bad_arguments():
    denoise = make_denoiser("vp")
    z = torch.zeros(4, DIM)
    with pytest.raises(ValueError):
        langevin_correct(denoise, z, 0.5, 1, snr=0.0)
    with pytest.raises(ValueError):
        langevin_correct(denoise, z, 0.5, -1)


# ----------------------------------------------------------- adaptive SDE


def test_adaptive_sde_brownian_memory_removes_rejection_bias():
    """Redrawing the noise of rejected steps (the paper's version) shrinks the
    variance in low dimension; retrying on the same Brownian path does not."""
    n = 3_000
    _, with_memory = errors(draw("vp", "adaptive_sde", n).samples)
    _, without = errors(draw("vp", "adaptive_sde", n, brownian_memory=False).samples)
    assert with_memory <= 3.5 * standard_errors(n)[1] + 0.03
    assert without > 2 * with_memory


@pytest.mark.parametrize("schedule_name", ["edm", "vp", "rectified_flow"])
def test_heun_step_takes_one_time_per_row(schedule_name: str) -> None:
    """A Heun step with a time per row equals the scalar-time steps row by row."""
    from sbi_diffusion.samplers.ode import heun_step

    schedule = get_schedule(schedule_name)
    denoise = GaussianDenoiser(schedule, torch.tensor([0.5, -1.0]), torch.eye(2) * 0.3)
    denoise.schedule = schedule
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    t_cur = torch.tensor([0.9, 0.5, 0.3, 0.2])
    t_next = torch.tensor([0.7, 0.4, 0.1, 0.0])
    rows = heun_step(denoise, z, t_cur, t_next, {}, None)
    for i in range(4):
        one = heun_step(denoise, z[i : i + 1], t_cur[i], t_next[i], {}, None)
        assert torch.allclose(rows[i : i + 1], one, atol=1e-5), i
