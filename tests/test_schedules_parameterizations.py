"""Schedules and parameterisations: round trips and closed-form identities.

For every schedule ``z_t = alpha x + sigma eps`` and every parameterisation
``x_hat = c_skip z + c_out F`` these tests check that

* the regression target maps back to the data (``denoise(target(x)) = x``) and
  is what the parameterisation's name says (noise, data, velocity, score);
* the score of the exact Gaussian denoiser, ``(alpha x_hat - z) / sigma^2``,
  is the gradient of ``log N(z; alpha m, alpha^2 S + sigma^2 I)``;
* the rectified-flow velocity is ``eps - x``;
* the SDE coefficients ``(f, g)`` reproduce the marginal moments:
  ``d alpha / dt = f alpha`` and, for data variance ``s^2``,
  ``d/dt (alpha^2 s^2 + sigma^2) = 2 f (alpha^2 s^2 + sigma^2) + g^2``;
* the probability-flow drift is ``f z - g^2 score / 2`` (Song et al. 2021).
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from sbi_diffusion.path.gaussian import GaussianDenoiser
from sbi_diffusion.path.parameterizations import PathPoint, get_parameterization
from sbi_diffusion.path.schedules import get_schedule
from sbi_diffusion.path.vector_field import ode_drift, score_from_x_hat

SCHEDULES = ["vp", "cosine", "edm", "edm_vp", "rectified_flow"]
PARAMETERIZATIONS = ["eps", "x0", "velocity", "F", "score"]
F64 = torch.float64
MEAN = torch.tensor([0.5, 0.3, 0.7], dtype=F64)
STD = torch.tensor([0.3, 1.0, 1.5], dtype=F64)
CORR = torch.tensor([[1.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 1.0]], dtype=F64)
COV = STD[:, None] * CORR * STD[None, :]


def interior_times(schedule, num: int = 9) -> torch.Tensor:
    """Times strictly inside ``[t_min, t_max]`` (``alpha, sigma > 0``)."""
    lo, hi = float(schedule.t_min), float(schedule.t_max)
    span = hi - lo
    return torch.linspace(lo + 0.02 * span, hi - 0.02 * span, num, dtype=F64)


def path_point(schedule, t: torch.Tensor) -> PathPoint:
    alpha, sigma, d_alpha, d_sigma = (v[:, None] for v in schedule.derivatives(t))
    return PathPoint(alpha=alpha, sigma=sigma, d_alpha=d_alpha, d_sigma=d_sigma)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("name", PARAMETERIZATIONS)
def test_target_denoise_round_trip(schedule_name, name):
    schedule = get_schedule(schedule_name)
    parameterization = get_parameterization(name)
    generator = torch.Generator().manual_seed(0)
    t = interior_times(schedule)
    x = torch.randn(len(t), 3, generator=generator, dtype=F64) + MEAN
    eps = torch.randn(len(t), 3, generator=generator, dtype=F64)
    p = path_point(schedule, t)
    z = p.alpha * x + p.sigma * eps
    target = parameterization.target(x, z, p)
    assert torch.isfinite(target).all()
    torch.testing.assert_close(parameterization.denoise(target, z, p), x)
    # The target is what the name says.
    expected = {
        "eps": eps,
        "x0": x,
        "velocity": p.d_alpha * x + p.d_sigma * eps,
        "score": -eps / p.sigma,
    }.get(name)
    if expected is not None:
        torch.testing.assert_close(target, expected)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_gaussian_denoiser_score_is_marginal_score(schedule_name):
    schedule = get_schedule(schedule_name)
    denoiser = GaussianDenoiser(schedule, MEAN, COV)
    generator = torch.Generator().manual_seed(1)
    eye = torch.eye(3, dtype=F64)
    for t in interior_times(schedule, 7):
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        marginal = MultivariateNormal(alpha * MEAN, alpha**2 * COV + sigma**2 * eye)
        z = marginal.sample((16,)) + 0.3 * torch.randn(
            16, 3, generator=generator, dtype=F64
        )
        z.requires_grad_(True)
        (expected,) = torch.autograd.grad(marginal.log_prob(z).sum(), z)
        z = z.detach()
        times = t.expand(16)
        score = score_from_x_hat(schedule, z, times, denoiser(z, times))
        torch.testing.assert_close(score, expected, rtol=1e-7, atol=1e-9)


def test_rectified_flow_velocity_is_eps_minus_x():
    schedule = get_schedule("rectified_flow")
    velocity = get_parameterization("velocity")
    generator = torch.Generator().manual_seed(2)
    t = interior_times(schedule)
    x = torch.randn(len(t), 3, generator=generator, dtype=F64)
    eps = torch.randn(len(t), 3, generator=generator, dtype=F64)
    p = path_point(schedule, t)
    torch.testing.assert_close(p.d_alpha, -torch.ones_like(p.d_alpha))
    torch.testing.assert_close(p.d_sigma, torch.ones_like(p.d_sigma))
    z = p.alpha * x + p.sigma * eps
    torch.testing.assert_close(velocity.target(x, z, p), eps - x)
    # and x_hat = z - t u
    u = eps - x
    torch.testing.assert_close(velocity.denoise(u, z, p), z - t[:, None] * u)


def _finite_difference(fn, t: torch.Tensor, step: float = 1e-6) -> torch.Tensor:
    return (fn(t + step) - fn(t - step)) / (2 * step)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_derivatives_match_finite_differences(schedule_name):
    schedule = get_schedule(schedule_name)
    t = interior_times(schedule)
    _, _, d_alpha, d_sigma = schedule.derivatives(t)
    torch.testing.assert_close(
        d_alpha, _finite_difference(schedule.alpha, t), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        d_sigma, _finite_difference(schedule.sigma, t), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_closed_form_derivatives_match_forward_mode_ad(schedule_name):
    schedule = get_schedule(schedule_name)
    t = interior_times(schedule)
    closed_form = schedule.closed_form_derivatives(t)
    assert closed_form is not None  # every built-in schedule has one
    unit = torch.ones_like(t)
    alpha, d_alpha = torch.func.jvp(schedule.alpha, (t,), (unit,))
    sigma, d_sigma = torch.func.jvp(schedule.sigma, (t,), (unit,))
    expected_values = (alpha, sigma, d_alpha, d_sigma)
    for got, expected in zip(closed_form, expected_values, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # expanded (stride-0) times, as samplers pass them
    expanded = t[:1].expand(5)
    torch.testing.assert_close(schedule.derivatives(expanded)[3], d_sigma[:1].expand(5))


@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("data_var", [0.09, 1.0, 2.25])
def test_sde_coefficients_reproduce_marginal_moments(schedule_name, data_var):
    schedule = get_schedule(schedule_name)
    t = interior_times(schedule)
    f, g = schedule.sde_coefficients(t)

    def variance(tt):
        return schedule.alpha(tt) ** 2 * data_var + schedule.sigma(tt) ** 2

    torch.testing.assert_close(
        _finite_difference(schedule.alpha, t),
        f * schedule.alpha(t),
        rtol=1e-5,
        atol=1e-6,
    )
    torch.testing.assert_close(
        _finite_difference(variance, t),
        2 * f * variance(t) + g**2,
        rtol=1e-5,
        atol=1e-6,
    )
    assert (g > 0).all()


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_probability_flow_drift_matches_sde_form(schedule_name):
    """``alpha' x_hat + sigma' eps_hat = f z - g^2 score / 2`` (Song et al. 2021,
    Eq. 13)."""
    schedule = get_schedule(schedule_name)
    denoiser = GaussianDenoiser(schedule, MEAN, COV)
    generator = torch.Generator().manual_seed(3)
    t = interior_times(schedule)
    z = torch.randn(len(t), 3, generator=generator, dtype=F64) * 2.0
    x_hat = denoiser(z, t)
    f, g = (v[:, None] for v in schedule.sde_coefficients(t))
    score = score_from_x_hat(schedule, z, t, x_hat)
    torch.testing.assert_close(
        ode_drift(schedule, z, t, x_hat), f * z - 0.5 * g**2 * score
    )


@pytest.mark.parametrize("schedule_name", ["vp", "edm_vp", "rectified_flow"])
def test_score_composes_with_torch_func(schedule_name):
    """Jacobians of the score by ``torch.func`` (as sbi's JAC i.i.d. method takes
    them) match autograd: the schedule's derivatives need no autograd graph."""
    from sbi_diffusion import DiffusionNPE

    torch.manual_seed(0)
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    theta = prior.sample((200,))
    x = theta + 0.1 * torch.randn_like(theta)
    inference = DiffusionNPE(prior, schedule=schedule_name, show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(max_num_epochs=1)
    x_o, t = x[:1], torch.tensor([0.5])

    def score(theta_batch: torch.Tensor) -> torch.Tensor:
        return estimator.score(theta_batch, x_o, t)

    # sbi's JAC i.i.d. method: vmap(vmap(jacrev(score))) over (trials, batch, 1, d).
    inputs = torch.randn(4, 3, 1, 2)
    jacobians = torch.func.vmap(torch.func.vmap(torch.func.jacrev(score)))(inputs)
    assert jacobians.shape == (4, 3, 1, 2, 1, 2)
    reference = torch.autograd.functional.jacobian(score, inputs[1, 2])
    assert torch.allclose(jacobians[1, 2], reference, atol=1e-5)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_time_at_half_log_snr_inverts_it(schedule_name):
    schedule = get_schedule(schedule_name)
    lo = float(schedule.t_min) + 0.05 * (schedule.t_max - schedule.t_min)
    t = torch.linspace(lo, float(schedule.t_max) - 0.05, 7, dtype=torch.float64)
    found = schedule.time_at_half_log_snr(schedule.half_log_snr(t))
    torch.testing.assert_close(found, t, atol=1e-6, rtol=0)
    ends = schedule.time_at_half_log_snr(torch.tensor([1e6, -1e6]))
    torch.testing.assert_close(
        ends, torch.tensor([schedule.t_min, schedule.t_max], dtype=torch.float64)
    )
