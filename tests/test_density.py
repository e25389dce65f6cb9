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
