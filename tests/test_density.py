"""log_prob through the probability-flow ODE against closed forms."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from sbi_diffusion.density import ode_log_prob
from sbi_diffusion.path.gaussian import GaussianDenoiser
from sbi_diffusion.path.schedules import get_schedule

MEAN = torch.tensor([0.4, -0.3])
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]])


@pytest.mark.parametrize("schedule", ["vp", "edm_vp", "rectified_flow", "cosine"])
def test_exact_divergence_matches_gaussian_log_density(schedule):
    denoise = GaussianDenoiser(get_schedule(schedule), MEAN, COV)
    target = MultivariateNormal(MEAN, COV)
    theta = target.sample((50,))
    log_p = ode_log_prob(denoise, theta, rtol=1e-6, atol=1e-6)
    # z_{t_max} is taken as N(0, prior_std^2 I): exact up to alpha(t_max) terms
    assert torch.allclose(log_p, target.log_prob(theta), atol=0.05)


def test_hutchinson_estimate_is_unbiased_on_average():
    denoise = GaussianDenoiser(get_schedule("edm_vp"), MEAN, COV)
    target = MultivariateNormal(MEAN, COV)
    theta = target.sample((20,))
    estimate = ode_log_prob(
        denoise,
        theta,
        divergence="hutchinson",
        num_probes=64,
        generator=torch.Generator().manual_seed(0),
        rtol=1e-5,
        atol=1e-5,
    )
    assert torch.allclose(estimate, target.log_prob(theta), atol=0.15)


def test_unknown_divergence_raises():
    denoise = GaussianDenoiser(get_schedule("vp"), MEAN, COV)
    with pytest.raises(ValueError, match="divergence"):
        ode_log_prob(denoise, MEAN[None], divergence="trace")


@pytest.mark.parametrize("schedule", ["vp", "edm_vp", "rectified_flow"])
def test_fixed_step_heun_converges_to_the_gaussian_log_density(schedule):
    denoise = GaussianDenoiser(get_schedule(schedule), MEAN, COV)
    target = MultivariateNormal(MEAN, COV)
    theta = target.sample((50,))
    errors = []
    for steps in (4, 16, 64):
        log_p = ode_log_prob(denoise, theta, solver="heun", steps=steps)
        errors.append(float((log_p - target.log_prob(theta)).abs().max()))
    assert errors[-1] < 0.05
    # second order: more steps, smaller error
    assert errors[2] < errors[1] < errors[0]


@pytest.mark.parametrize(
    "options, match",
    [
        ({"solver": "rk4"}, "solver"),
        ({"solver": "heun", "steps": 0}, "steps"),
        ({"solver": "heun", "steps": 2.5}, "steps"),
    ],
)
def test_bad_solver_options_raise(options, match):
    denoise = GaussianDenoiser(get_schedule("vp"), MEAN, COV)
    with pytest.raises(ValueError, match=match):
        ode_log_prob(denoise, MEAN[None], **options)


@pytest.mark.parametrize(
    "schedule, steps",
    [("vp", 40), ("edm_vp", 40), ("cosine", 40), ("rectified_flow", 80)],
)
def test_sample_log_prob_matches_the_gaussian_density_of_its_samples(schedule, steps):
    from sbi_diffusion.density import ode_sample_log_prob
    from sbi_diffusion.samplers.noise import initial_noise

    schedule = get_schedule(schedule)
    denoise = GaussianDenoiser(schedule, MEAN, COV)
    target = MultivariateNormal(MEAN, COV)
    torch.manual_seed(0)
    noise = initial_noise(schedule, (400, 2))
    samples, log_p = ode_sample_log_prob(denoise, noise, steps=steps)
    assert samples.shape == (400, 2) and log_p.shape == (400,)
    # the samples follow the target, and their densities are the target's
    assert torch.allclose(samples.mean(0), MEAN, atol=0.1)
    error = (log_p - target.log_prob(samples)).abs()
    assert error.median() < 0.01 and error.max() < 0.15
    # the same noise gives the same samples as the sampler it follows
    from sbi_diffusion.samplers import get_sampler

    drawn = get_sampler("dpm++2m")(denoise, noise, steps=steps).samples
    # (where sigma(t_min) = 0 the density pass stops at t = 1e-4, and its last
    # step is second order where the sampler's, to t = 0, is first order)
    stops_early = float(schedule.sigma(torch.tensor([schedule.t_min]))) <= 0
    assert torch.allclose(drawn, samples, atol=0.05 if stops_early else 1e-4)


def test_probes_in_the_eigenbasis_are_exact_for_a_gaussian():
    """Hutchinson's estimate with probes in the eigenbasis of the data
    covariance has no variance where the denoiser's Jacobian is diagonal in it."""
    from sbi_diffusion.density import ode_sample_log_prob
    from sbi_diffusion.samplers.noise import initial_noise

    schedule = get_schedule("edm_vp")
    denoise = GaussianDenoiser(schedule, MEAN, COV)
    _, basis = torch.linalg.eigh(COV)
    noise = initial_noise(
        schedule, (200, 2), generator=torch.Generator().manual_seed(0)
    )
    _, exact = ode_sample_log_prob(denoise, noise, steps=24, divergence="exact")
    generator = torch.Generator().manual_seed(1)
    _, rotated = ode_sample_log_prob(
        denoise,
        noise,
        steps=24,
        divergence="hutchinson",
        generator=generator,
        probe_basis=basis,
    )
    _, plain = ode_sample_log_prob(
        denoise, noise, steps=24, divergence="hutchinson", generator=generator
    )
    assert (rotated - exact).abs().max() < 1e-3
    assert (plain - exact).abs().max() > 0.05
    theta = MultivariateNormal(MEAN, COV).sample((30,))
    exact_ode = ode_log_prob(denoise, theta, solver="heun", steps=16)
    rotated_ode = ode_log_prob(
        denoise,
        theta,
        solver="heun",
        steps=16,
        divergence="hutchinson",
        generator=generator,
        probe_basis=basis,
    )
    assert (rotated_ode - exact_ode).abs().max() < 1e-3


def test_sample_log_prob_rejects_bad_steps():
    from sbi_diffusion.density import ode_sample_log_prob

    denoise = GaussianDenoiser(get_schedule("vp"), MEAN, COV)
    with pytest.raises(ValueError, match="steps"):
        ode_sample_log_prob(denoise, torch.zeros(3, 2), steps=0)
