"""Learning in an unbounded space: ``theta_transform``.

The closed form: ``log theta ~ N(0, 1)`` (a log-normal prior) and
``x = log theta + N(0, s^2)``, so ``u = log theta`` has the Gaussian posterior
``N(x / (1 + s^2), s^2 / (1 + s^2))`` and ``theta`` the log-normal one.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from sbi.utils import BoxUniform
from torch.distributions import Independent, LogNormal, Normal
from torch.distributions.transforms import ExpTransform, identity_transform

from sbi_diffusion import ConsistencyNPE, DiffusionNPE, FlowMatchingNPE
from sbi_diffusion.composition import diffused_prior
from sbi_diffusion.guidance.base import GuidanceContext
from sbi_diffusion.inference.posterior import DiffusionPosterior

NOISE = 0.5
POST_VAR = NOISE**2 / (1 + NOISE**2)


def log_normal_prior() -> Independent:
    return Independent(LogNormal(torch.zeros(2), torch.ones(2)), 1)


def exact_posterior(x_o: torch.Tensor) -> Independent:
    mean = x_o / (1 + NOISE**2)
    return Independent(LogNormal(mean, math.sqrt(POST_VAR) * torch.ones(2)), 1)


@pytest.fixture(scope="module")
def log_normal_model():
    torch.manual_seed(0)
    prior = log_normal_prior()
    theta = prior.sample((3000,))
    x = theta.log() + NOISE * torch.randn_like(theta)
    inference = DiffusionNPE(prior, theta_transform="support", show_progress_bars=False)
    inference.append_simulations(theta, x).train(max_num_epochs=40, seed=0)
    return inference


X_O = torch.tensor([0.8, -0.6])


def test_samples_and_density_match_the_log_normal_posterior(log_normal_model):
    posterior = log_normal_model.build_posterior()
    exact = exact_posterior(X_O)
    samples = posterior.sample((4000,), x=X_O, show_progress_bars=False)
    assert (samples > 0).all()
    log_samples = samples.log()
    mean_error = (log_samples.mean(0) - exact.base_dist.loc).abs() / math.sqrt(POST_VAR)
    assert (mean_error < 0.2).all(), mean_error
    std_ratio = log_samples.std(0) / math.sqrt(POST_VAR)
    assert ((std_ratio > 0.8) & (std_ratio < 1.2)).all(), std_ratio
    points = exact.sample((200,))
    log_p = posterior.log_prob(points, x=X_O)
    # theta-space density: includes -sum log theta, which spans several nats
    assert (log_p - exact.log_prob(points)).abs().median() < 0.25


def test_change_of_variables_is_exact(log_normal_model):
    """``log p(theta) = log p_u(log theta) - sum log theta`` for the same network."""
    posterior = log_normal_model.build_posterior()
    in_u = copy.deepcopy(posterior.estimator)
    in_u.set_theta_transform(identity_transform)
    u_prior = Independent(Normal(torch.zeros(2), 10 * torch.ones(2)), 1)
    u_posterior = DiffusionPosterior(in_u, u_prior)
    theta = exact_posterior(X_O).sample((20,))
    log_p = posterior.log_prob(theta, x=X_O)
    log_p_u = u_posterior.log_prob(theta.log(), x=X_O)
    assert torch.allclose(log_p, log_p_u - theta.log().sum(1), atol=1e-4)


def test_map_is_no_worse_than_its_starting_points(log_normal_model):
    posterior = log_normal_model.build_posterior().set_default_x(X_O)
    starts = posterior.sample((30,), x=X_O, show_progress_bars=False)
    estimate = posterior.map(init_method=starts, num_iter=50, num_to_optimize=30)
    assert (estimate > 0).all()
    log_p = posterior.log_prob(torch.cat([starts, estimate]), x=X_O)
    assert log_p[-1] >= log_p[:-1].max() - 0.02  # adaptive steps differ by batch


def test_box_density_integrates_to_one():
    torch.manual_seed(1)
    prior = BoxUniform(torch.zeros(1), torch.ones(1))
    theta = prior.sample((1000,))
    x = theta + 0.05 * torch.randn_like(theta)
    inference = DiffusionNPE(
        prior,
        theta_transform="support",
        net_kwargs=dict(width=32, depth=1),
        show_progress_bars=False,
    )
    inference.append_simulations(theta, x).train(max_num_epochs=20, seed=0)
    posterior = inference.build_posterior()
    x_o = torch.tensor([0.02])  # at the edge: without the transform, mass leaks out
    grid = torch.linspace(1e-4, 1 - 1e-4, 801).reshape(-1, 1)
    density = posterior.log_prob(grid, x=x_o).exp()
    mass = torch.trapezoid(density, grid.reshape(-1))
    assert abs(float(mass) - 1.0) < 0.05, float(mass)
    samples = posterior.sample((500,), x=x_o, show_progress_bars=False)
    assert ((samples > 0) & (samples < 1)).all()
    assert inference.resolved_training["theta_transform"] == "support"


def test_outside_support_is_minus_inf_and_training_outside_raises(log_normal_model):
    posterior = log_normal_model.build_posterior()
    theta = torch.tensor([[-1.0, 1.0], [1.0, 1.0]])
    log_p = posterior.log_prob(theta, x=X_O)
    assert log_p[0] == -math.inf and torch.isfinite(log_p[1])
    theta = log_normal_prior().sample((50,))
    theta[3, 0] = -0.5
    inference = DiffusionNPE(
        log_normal_prior(), theta_transform="support", show_progress_bars=False
    )
    inference.append_simulations(theta, theta.clone())
    with pytest.raises(ValueError, match="outside the prior's support"):
        inference.train(max_num_epochs=1)


def test_unknown_transform_raises():
    with pytest.raises(ValueError, match="Unknown theta_transform"):
        DiffusionNPE(log_normal_prior(), theta_transform="logit")
    with pytest.raises(ValueError, match="Unknown theta_transform"):
        FlowMatchingNPE(log_normal_prior(), theta_transform=3)


def test_custom_transform_and_save_load():
    torch.manual_seed(2)
    prior = log_normal_prior()
    theta = prior.sample((300,))
    x = theta.log() + NOISE * torch.randn_like(theta)
    inference = FlowMatchingNPE(
        prior,
        theta_transform=ExpTransform().inv,
        net_kwargs=dict(width=16, depth=1),
        show_progress_bars=False,
    )
    inference.append_simulations(theta, x).train(max_num_epochs=2, seed=0)
    posterior = inference.build_posterior()
    assert inference.resolved_training["theta_transform"] == "Inverse(ExpTransform())"
    buffer = io.BytesIO()
    torch.save(posterior, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    points = exact_posterior(X_O).sample((5,))
    assert torch.allclose(
        loaded.log_prob(points, x=X_O), posterior.log_prob(points, x=X_O)
    )
    draws = [
        p.sample(
            (5,),
            x=X_O,
            generator=torch.Generator().manual_seed(0),
            show_progress_bars=False,
        )
        for p in (posterior, loaded)
    ]
    assert torch.equal(*draws) and (draws[0] > 0).all()


def test_guidance_and_composition_see_the_transform(log_normal_model):
    estimator = log_normal_model.build_posterior().estimator
    context = GuidanceContext.from_estimator(estimator, log_normal_prior())
    z = torch.randn(7, 2)
    assert torch.allclose(context.theta(z), estimator.from_z(z))
    prior = diffused_prior(estimator, log_normal_prior(), "auto")
    # the prior of u = log theta, standardised: N(-shift / scale, 1 / scale^2)
    shift = estimator.theta_shift.reshape(-1)
    scale = estimator.theta_scale.reshape(-1)
    assert torch.allclose(prior.mean, -shift / scale, atol=0.05)
    assert torch.allclose(prior.cov.diagonal(), 1 / scale**2, rtol=0.1)


def test_consistency_takes_the_teachers_transform(log_normal_model):
    theta = log_normal_prior().sample((200,))
    x = theta.log() + NOISE * torch.randn_like(theta)
    student = ConsistencyNPE(
        log_normal_prior(), net_kwargs=dict(width=16, depth=1), show_progress_bars=False
    )
    student.append_simulations(theta, x)
    student.distill(log_normal_model, max_num_epochs=1, num_scales=4, seed=0)
    model = student._trained_estimator
    teacher = log_normal_model._trained_estimator
    assert model.transforms_theta  # the student alone would learn theta as it is
    assert torch.equal(model.theta_transform(theta), teacher.theta_transform(theta))
    samples = student.build_posterior().sample((20,), x=X_O, show_progress_bars=False)
    assert (samples > 0).all()


def test_estimator_pickled_without_a_transform_still_loads():
    """An estimator saved before ``theta_transform`` existed has no such
    attribute; it samples and evaluates as with the identity."""
    prior = BoxUniform(torch.zeros(2), torch.ones(2))
    theta = prior.sample((200,))
    inference = DiffusionNPE(
        prior, net_kwargs=dict(width=16, depth=1), show_progress_bars=False
    )
    inference.append_simulations(theta, theta).train(max_num_epochs=1, seed=0)
    posterior = inference.build_posterior()
    points = theta[:3]
    expected = posterior.log_prob(points, x=theta[0])
    del posterior.estimator.__dict__["theta_transform"]
    buffer = io.BytesIO()
    torch.save(posterior, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert not loaded.estimator.transforms_theta
    assert torch.allclose(loaded.log_prob(points, x=theta[0]), expected)
    assert loaded.sample((5,), x=theta[0], show_progress_bars=False).shape == (5, 2)
