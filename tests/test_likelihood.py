"""Neural likelihood estimation (DiffusionNLE): the emulator and its density
against a linear-Gaussian simulator's exact likelihood, shapes, errors,
save/load, the posterior through sbi's samplers, and ``log_prob_batched``."""

from __future__ import annotations

import io

import pytest
import torch
from torch.distributions import MultivariateNormal

from sbi_diffusion import (
    DiffusionLikelihood,
    DiffusionNLE,
    DiffusionNPE,
    FlowMatchingNLE,
)
from sbi_diffusion.inference.likelihood_potential import LikelihoodPotential

EXACT = {"solver": "heun", "steps": 16, "divergence": "exact"}


def exact_likelihood(problem, theta: torch.Tensor) -> MultivariateNormal:
    """``p(x | theta) = N(A theta + b, L)`` of the linear-Gaussian problem."""
    mean = theta @ problem.matrix.T + problem.shift
    return MultivariateNormal(mean, problem.noise_cov)


@pytest.fixture(scope="module")
def trained_nle():
    """DiffusionNLE trained on 3,000 simulations of a 2-d linear-Gaussian model."""
    from conftest import LinearGaussian

    torch.manual_seed(0)
    problem = LinearGaussian(theta_dim=2, x_dim=2)
    theta = problem.prior.sample((3000,))
    x = problem.simulate(theta)
    inference = DiffusionNLE(problem.prior, show_progress_bars=False)
    inference.append_simulations(theta, x).train(max_num_epochs=60, seed=0)
    return problem, inference


def test_emulator_matches_the_exact_likelihood(trained_nle):
    problem, inference = trained_nle
    likelihood = inference.build_likelihood()
    assert isinstance(likelihood, DiffusionLikelihood)
    assert likelihood.theta_shape == (2,) and likelihood.x_shape == (2,)
    theta_o = torch.tensor([0.3, -0.4])
    exact = exact_likelihood(problem, theta_o)
    generator = torch.Generator().manual_seed(1)
    x = likelihood.sample((4000,), theta=theta_o, generator=generator)
    assert x.shape == (4000, 2)
    assert torch.allclose(x.mean(0), exact.mean, atol=0.1)
    variance_ratio = torch.cov(x.T).diagonal() / exact.covariance_matrix.diagonal()
    assert ((variance_ratio - 1).abs() < 0.25).all(), variance_ratio

    theta = problem.prior.sample((50,))
    x = problem.simulate(theta)
    log_q = likelihood.log_prob(x, theta=theta, **EXACT)
    log_p = exact_likelihood(problem, theta).log_prob(x)
    assert log_q.shape == (50,)
    assert (log_q - log_p).abs().median() < 0.3, (log_q - log_p).abs()


def test_emulator_shapes_for_one_and_many_parameter_sets(trained_nle):
    problem, inference = trained_nle
    likelihood = inference.build_likelihood()
    theta = problem.prior.sample((3,))
    assert likelihood.sample((5,), theta=theta).shape == (5, 3, 2)
    assert likelihood.sample((2, 5), theta=theta[0]).shape == (2, 5, 2)
    x = problem.simulate(theta)
    one_theta = likelihood.log_prob(x, theta=theta[0], **EXACT)
    assert one_theta.shape == (3,)
    rows = likelihood.log_prob(x, theta=theta[0].expand(3, 2), **EXACT)
    assert torch.allclose(one_theta, rows, atol=1e-5)
    assert likelihood.log_prob(x[0], theta=theta[0], **EXACT).shape == (1,)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda lik: lik.sample((2,)), "Pass theta"),
        (lambda lik: lik.sample((2,), theta=torch.zeros(3)), "theta has shape"),
        (lambda lik: lik.log_prob(torch.zeros(4, 3), torch.zeros(2)), "x has shape"),
        (
            lambda lik: lik.log_prob(torch.zeros(4, 2), torch.zeros(3, 2)),
            "x has 4 rows but theta has 3",
        ),
    ],
)
def test_emulator_rejects_bad_shapes(trained_nle, call, match):
    _, inference = trained_nle
    with pytest.raises(ValueError, match=match):
        call(inference.build_likelihood())


def test_posterior_by_importance_sampling_is_close_to_the_exact_one(trained_nle):
    problem, inference = trained_nle
    torch.manual_seed(2)
    theta_o = torch.tensor([[0.5, 0.2]])
    x_o = problem.simulate(theta_o)
    posterior = inference.build_posterior(sample_with="importance")
    samples = posterior.sample((400,), x=x_o, show_progress_bars=False)
    mean, cov = problem.posterior(x_o[0])
    assert samples.shape == (400, 2)
    sd = cov.diagonal().sqrt().float()
    assert ((samples.mean(0) - mean.float()).abs() < 0.5 * sd).all()


def test_posterior_by_mcmc_runs_sbi_slice_sampler(trained_nle):
    problem, inference = trained_nle
    posterior = inference.build_posterior(
        mcmc_parameters={
            "num_chains": 2,
            "warmup_steps": 2,
            "thin": 1,
            "init_strategy": "proposal",
        },
        log_prob_options={"solver": "heun", "steps": 2},
    )
    assert isinstance(posterior.potential_fn, LikelihoodPotential)
    x_o = problem.simulate(torch.tensor([[0.5, 0.2]]))
    samples = posterior.sample((4,), x=x_o, show_progress_bars=False)
    assert samples.shape == (4, 2) and torch.isfinite(samples).all()


def test_potential_sums_the_log_likelihood_of_iid_observations(trained_nle):
    problem, inference = trained_nle
    likelihood = inference.build_likelihood()
    potential = LikelihoodPotential(likelihood, problem.prior, log_prob_options=EXACT)
    theta = problem.prior.sample((3,))
    x_o = problem.simulate(torch.tensor([[0.5, 0.2]]).expand(4, 2))
    potential.set_x(x_o)
    expected = torch.stack(
        [likelihood.log_prob(x_o, theta=t, **EXACT).sum() for t in theta]
    ) + problem.prior.log_prob(theta)
    assert torch.allclose(potential(theta), expected, atol=1e-4)


def test_likelihood_save_and_load(trained_nle):
    problem, inference = trained_nle
    likelihood = inference.build_likelihood()
    buffer = io.BytesIO()
    torch.save(likelihood, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    theta = problem.prior.sample((4,))
    x = problem.simulate(theta)
    assert torch.allclose(
        loaded.log_prob(x, theta, **EXACT), likelihood.log_prob(x, theta, **EXACT)
    )


def test_invalid_simulations_are_excluded_with_a_warning():
    torch.manual_seed(0)
    theta = torch.randn(50, 2)
    x = theta + 0.1 * torch.randn(50, 2)
    x[:5, 1] = float("nan")
    inference = DiffusionNLE(show_progress_bars=False)
    with pytest.warns(UserWarning, match="5 simulations with NaN or inf") as record:
        inference.append_simulations(theta, x)
    assert record[0].filename == __file__
    with pytest.raises(ValueError, match="NaN or inf"):
        DiffusionNLE().append_simulations(theta, x, exclude_invalid_x=False)
    with pytest.raises(ValueError, match="earlier ones"):
        inference.append_simulations(theta, torch.randn(50, 3))


def test_nle_errors():
    with pytest.raises(ValueError, match="theta_transform='support'"):
        DiffusionNLE(theta_transform="support")
    inference = DiffusionNLE(show_progress_bars=False)
    with pytest.raises(ValueError, match="append_simulations"):
        inference.train()
    theta = torch.randn(40, 2)
    inference.append_simulations(theta, theta + torch.randn(40, 2))
    # any proposal is valid for a likelihood (e.g. a posterior, as in SNLE)
    inference.append_simulations(theta, theta, proposal=object())
    inference.train(max_num_epochs=1)
    with pytest.raises(ValueError, match="needs a prior"):
        inference.build_posterior()
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="Unknown sample_with"):
        inference.build_posterior(prior=prior, sample_with="rejection")
    with pytest.raises(ValueError, match="prior draws parameters of shape"):
        DiffusionNLE(prior).append_simulations(torch.randn(5, 3), torch.randn(5, 2))


@pytest.mark.parametrize("cls", [DiffusionNLE, FlowMatchingNLE])
def test_field_emulator_with_a_unet(cls):
    """x is an image (n, 1, 8, 8) emulated by a U-Net conditioned on theta."""
    torch.manual_seed(0)
    theta = torch.rand(64, 2)
    x = theta[:, :1, None, None] + 0.1 * torch.randn(64, 1, 8, 8)
    inference = cls(
        net="unet",
        net_kwargs={"shape": (1, 8, 8), "channels": (8,), "attention": False},
        show_progress_bars=False,
    )
    inference.append_simulations(theta, x).train(max_num_steps=3)
    likelihood = inference.build_likelihood()
    assert likelihood.x_shape == (1, 8, 8)
    assert likelihood.sample((3,), theta=theta[0]).shape == (3, 1, 8, 8)
    assert likelihood.sample((3,), theta=theta[:2]).shape == (3, 2, 1, 8, 8)
    # 64 dimensions: Hutchinson's divergence, reproducible with a generator
    log_q = [
        likelihood.log_prob(
            x[:2], theta[:2], generator=torch.Generator().manual_seed(0)
        )
        for _ in range(2)
    ]
    assert log_q[0].shape == (2,) and torch.isfinite(log_q[0]).all()
    assert torch.equal(log_q[0], log_q[1])


def test_log_prob_batched_equals_log_prob_of_each_observation():
    from conftest import LinearGaussian

    torch.manual_seed(0)
    problem = LinearGaussian(theta_dim=2, x_dim=2)
    theta = problem.prior.sample((300,))
    inference = DiffusionNPE(problem.prior, show_progress_bars=False)
    inference.append_simulations(theta, problem.simulate(theta)).train(max_num_epochs=2)
    posterior = inference.build_posterior()
    x = problem.simulate(problem.prior.sample((3,)))
    theta = problem.prior.sample((4, 3))
    batched = posterior.log_prob_batched(theta, x, **EXACT)
    assert batched.shape == (4, 3)
    for b in range(3):
        one = posterior.log_prob(theta[:, b], x=x[b], **EXACT)
        assert torch.allclose(batched[:, b], one, atol=1e-4)
    with pytest.raises(ValueError, match="log_prob_batched expects"):
        posterior.log_prob_batched(theta[:, :2], x)
