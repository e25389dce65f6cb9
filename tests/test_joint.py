"""Tests of the joint (all-conditionals) diffusion model.

The masking and conditioning code path is checked with the exact masked denoiser
of the Gaussian joint of a linear-Gaussian problem, where the posterior, the
likelihood and every conditional are known in closed form; a small trained model
is checked with looser tolerances.
"""

from __future__ import annotations

import importlib
import math
import sys

import numpy as np
import pytest
import torch
from sbi.inference.posteriors import MCMCPosterior
from torch.distributions import MultivariateNormal

from sbi_diffusion import JointDiffusion
from sbi_diffusion.guidance import ClassifierFreeGuidance
from sbi_diffusion.joint import (
    GaussianJointDenoiser,
    JointConditional,
    JointDenoiser,
    JointLikelihood,
    JointLikelihoodPotential,
    JointPosterior,
    JointPosteriorProposal,
    MaskDistribution,
    attention_mask,
    check_condition_mask,
)
from sbi_diffusion.model import LossDraws
from sbi_diffusion.nets.transformer import TokenTransformer
from sbi_diffusion.path.gaussian import linear_gaussian_posterior
from sbi_diffusion.path.parameterizations import get_parameterization
from sbi_diffusion.path.schedules import get_schedule

X_O = torch.tensor([[0.3, -0.4]])


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One torch thread: these small models are slower with more on busy CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


THETA_0 = torch.tensor([0.2, 1.0])


def joint_moments(problem) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of ``(theta, x)`` for the linear-Gaussian problem."""
    a, b = problem.matrix, problem.shift
    m0, s0 = problem.prior_mean, problem.prior_cov
    mean = torch.cat([m0, a @ m0 + b])
    cov = torch.cat(
        [
            torch.cat([s0, s0 @ a.T], 1),
            torch.cat([a @ s0, a @ s0 @ a.T + problem.noise_cov], 1),
        ]
    )
    return mean, cov


def conditional_of_posterior(problem, x_o, theta_1):
    """Closed form of ``p(theta_2 | x, theta_1)`` from the posterior."""
    mean, cov = problem.posterior(x_o)
    m = mean[1] + cov[1, 0] / cov[0, 0] * (theta_1 - mean[0])
    v = cov[1, 1] - cov[1, 0] ** 2 / cov[0, 0]
    return float(m), float(v)


@pytest.fixture(scope="module")
def exact_model(linear_gaussian) -> GaussianJointDenoiser:
    mean, cov = joint_moments(linear_gaussian)
    # a non-trivial z-scoring exercises the standardisation of every code path
    return GaussianJointDenoiser(
        get_schedule("edm_vp"),
        mean,
        cov,
        (2,),
        (2,),
        shift=mean + 0.1,
        scale=cov.diagonal().sqrt() * torch.tensor([1.0, 1.2, 0.8, 1.0]),
    )


def assert_moments(samples, mean, cov, tol_mean, tol_cov):
    samples = samples.double()
    assert torch.allclose(samples.mean(0), mean.double(), atol=tol_mean)
    assert torch.allclose(torch.cov(samples.T), cov.double(), atol=tol_cov)


# ----------------------------------------------------------- exact joint score


def test_exact_posterior(exact_model, linear_gaussian):
    torch.manual_seed(0)
    posterior = JointPosterior(
        exact_model, linear_gaussian.prior, sampler_options={"steps": 20}
    )
    samples = posterior.sample((4000,), x=X_O, show_progress_bars=False)
    mean, cov = linear_gaussian.posterior(X_O)
    assert_moments(samples, mean, cov, 0.03, 0.03)
    assert posterior.last_nfe == pytest.approx(41.0)  # 2 per Heun step + final
    theta = torch.stack([mean, mean + torch.tensor([0.2, -0.3])]).float()
    expected = MultivariateNormal(mean, cov).log_prob(theta.double())
    assert torch.allclose(
        posterior.log_prob(theta, x=X_O).double(), expected, atol=0.05
    )
    batched = posterior.sample_batched(
        (10,), x=torch.cat([X_O, X_O + 1]), show_progress_bars=False
    )
    assert batched.shape == (10, 2, 2)


def test_exact_likelihood(exact_model, linear_gaussian):
    torch.manual_seed(1)
    likelihood = JointLikelihood(
        exact_model, sampler_options={"steps": 20}, show_progress_bars=False
    )
    x = likelihood.sample((4000,), theta=THETA_0)
    mean = linear_gaussian.matrix @ THETA_0 + linear_gaussian.shift
    assert_moments(x, mean, linear_gaussian.noise_cov, 0.03, 0.03)
    points = torch.stack([mean, mean + 0.3])
    expected = MultivariateNormal(mean, linear_gaussian.noise_cov).log_prob(points)
    # the ODE density's base N(0, I) at t_max ignores alpha(t_max) * mean: ~0.05 off
    assert torch.allclose(
        likelihood.log_prob(points, theta=THETA_0), expected, atol=0.1
    )
    several = likelihood.sample((5,), theta=torch.stack([THETA_0, -THETA_0]))
    assert several.shape == (5, 2, 2)


def test_exact_mixed_conditional(exact_model, linear_gaussian):
    """p(theta_2 | x, theta_1): theta_2 latent, theta_1 and x observed."""
    torch.manual_seed(2)
    mask = torch.tensor([True, False, True, True])
    conditional = JointConditional(
        exact_model, mask, sampler_options={"steps": 20}, show_progress_bars=False
    )
    theta_1 = 0.7
    condition = torch.tensor([theta_1, *X_O[0].tolist()])
    samples = conditional.sample((4000,), condition=condition)
    m, v = conditional_of_posterior(linear_gaussian, X_O, theta_1)
    assert samples.shape == (4000, 1)
    assert abs(float(samples.mean()) - m) < 0.03
    assert abs(float(samples.var()) - v) < 0.03
    points = torch.tensor([[m], [m + 0.3]])
    expected = -0.5 * (points - m) ** 2 / v - 0.5 * math.log(2 * math.pi * v)
    assert torch.allclose(
        conditional.log_prob(points, condition=condition), expected[:, 0], atol=0.05
    )
    # full joint vectors are accepted as the condition too (latent entries ignored)
    full = torch.tensor([theta_1, float("nan"), *X_O[0].tolist()])
    assert conditional.sample((3,), condition=full).shape == (3, 1)


def test_missing_observation_is_marginalised(exact_model, linear_gaussian):
    torch.manual_seed(3)
    posterior = JointPosterior(
        exact_model, linear_gaussian.prior, sampler_options={"steps": 20}
    )
    x_missing = torch.tensor([[0.3, float("nan")]])
    samples = posterior.sample((4000,), x=x_missing, show_progress_bars=False)
    mean, cov = linear_gaussian_posterior(
        linear_gaussian.prior_mean,
        linear_gaussian.prior_cov,
        linear_gaussian.matrix[:1],
        linear_gaussian.noise_cov[:1, :1],
        X_O[:, :1],
        shift=linear_gaussian.shift[:1],
    )
    assert_moments(samples, mean, cov, 0.04, 0.05)
    posterior.set_default_x(x_missing)
    assert torch.isnan(posterior.default_x).any()


def test_missing_observation_is_sampled_not_given_as_noise_token(
    exact_model, linear_gaussian, monkeypatch
):
    """Sampling with a missing entry samples it with the latent block (the
    network never sees a noise token), and rejects on the theta columns only."""
    calls = []
    original = exact_model.denoise_masked

    def spy(z, t, condition_mask, missing=None):
        calls.append(missing is not None and bool(missing.any()))
        return original(z, t, condition_mask, missing)

    monkeypatch.setattr(exact_model, "denoise_masked", spy)
    box = torch.distributions.Independent(
        torch.distributions.Uniform(torch.full((2,), -0.5), torch.full((2,), 0.5)), 1
    )
    posterior = JointPosterior(exact_model, box, sampler_options={"steps": 10})
    samples = posterior.sample(
        (500,), x=torch.tensor([0.3, float("nan")]), show_progress_bars=False
    )
    assert samples.shape == (500, 2)
    assert calls and not any(calls)
    assert bool(((samples > -0.5) & (samples < 0.5)).all())


def test_joint_and_prior(exact_model, linear_gaussian):
    """All latent: the joint; all of x missing: the prior."""
    torch.manual_seed(4)
    joint = JointConditional(
        exact_model,
        torch.zeros(4, dtype=torch.bool),
        sampler_options={"steps": 20},
        show_progress_bars=False,
    )
    mean, cov = joint_moments(linear_gaussian)
    assert_moments(joint.sample((4000,)), mean, cov, 0.1, 0.4)  # cov entries ~7
    posterior = JointPosterior(
        exact_model, linear_gaussian.prior, sampler_options={"steps": 20}
    )
    prior = posterior.sample(
        (4000,), x=torch.full((1, 2), float("nan")), show_progress_bars=False
    )
    assert_moments(
        prior, linear_gaussian.prior_mean, linear_gaussian.prior_cov, 0.06, 0.1
    )


def test_likelihood_mcmc_posterior(exact_model, linear_gaussian):
    """The NLE-style posterior: sbi's MCMC on the learned likelihood.

    MCMC over probability-flow-ODE densities is slow, so only the potential is
    checked here against the analytic posterior (up to its normaliser).
    """
    inference = JointDiffusion(linear_gaussian.prior, show_progress_bars=False)
    posterior = inference.build_posterior(
        estimator=exact_model,
        posterior_method="likelihood_mcmc",
        mcmc_parameters={"num_chains": 4, "warmup_steps": 5},
    )
    assert isinstance(posterior, MCMCPosterior)
    potential = posterior.potential_fn
    assert isinstance(potential, JointLikelihoodPotential)
    potential.set_x(torch.cat([X_O, X_O + 0.2]), x_is_iid=True)
    x_iid = torch.cat([X_O, X_O + 0.2])
    mean, cov = linear_gaussian.posterior(x_iid)
    theta = torch.stack([mean, mean + 0.5]).float()
    expected = MultivariateNormal(mean, cov).log_prob(theta.double())
    values = potential(theta).double()
    error = (values[0] - values[1]) - (expected[0] - expected[1])
    assert abs(float(error)) < 0.2
    # the fixed-step solver (cheaper per MCMC step) through log_prob_options
    heun = inference.build_posterior(
        estimator=exact_model,
        posterior_method="likelihood_mcmc",
        log_prob_options={"solver": "heun", "steps": 32},
    ).potential_fn
    assert heun.log_prob_options["solver"] == "heun"
    heun.set_x(x_iid, x_is_iid=True)
    values = heun(theta).double()
    error = (values[0] - values[1]) - (expected[0] - expected[1])
    assert abs(float(error)) < 0.2


def test_likelihood_mcmc_starts_from_the_joint_posterior(exact_model, linear_gaussian):
    """By default the chains start at draws of the model's own posterior (no
    10,000-candidate resampling per chain); the chains still sample the
    likelihood-based posterior."""
    inference = JointDiffusion(linear_gaussian.prior, show_progress_bars=False)
    posterior = inference.build_posterior(
        estimator=exact_model,
        posterior_method="likelihood_mcmc",
        mcmc_parameters={"num_chains": 10, "warmup_steps": 20, "thin": 1},
        log_prob_options={"solver": "heun", "steps": 4},
    )
    proposal = posterior.proposal
    assert isinstance(proposal, JointPosteriorProposal)
    assert posterior.init_strategy == "proposal"
    with pytest.raises(ValueError, match="No observation set"):
        proposal.sample((2,))
    # the MCMC transform is the prior's
    assert torch.equal(proposal.mean, linear_gaussian.prior.mean)
    assert proposal.support is linear_gaussian.prior.support

    evaluated = []
    likelihood = posterior.potential_fn.likelihood
    original = likelihood.log_prob

    def counting(x, *args, **kwargs):
        evaluated.append(x.shape[0])
        return original(x, *args, **kwargs)

    likelihood.log_prob = counting
    torch.manual_seed(1)
    np.random.seed(1)  # sbi's vectorised slice sampler draws from numpy
    samples = posterior.sample((300,), x=X_O, show_progress_bars=False)
    # no evaluation batch of the size of sbi's resampling candidates (10,000)
    assert max(evaluated) <= 10
    mean, cov = linear_gaussian.posterior(X_O)
    assert torch.allclose(samples.mean(0).double(), mean.double(), atol=0.3)
    assert torch.allclose(samples.std(0).double(), cov.diagonal().sqrt(), rtol=0.5)

    # draws of the proposal follow the posterior at the potential's observation
    torch.manual_seed(2)
    drawn = proposal.sample((2000,))
    assert_moments(drawn, mean, cov, 0.05, 0.05)


def test_likelihood_mcmc_init_options(exact_model, linear_gaussian):
    inference = JointDiffusion(linear_gaussian.prior, show_progress_bars=False)
    prior_init = inference.build_posterior(
        estimator=exact_model, posterior_method="likelihood_mcmc", mcmc_init="prior"
    )
    assert prior_init.proposal is linear_gaussian.prior
    assert prior_init.init_strategy == "resample"  # sbi's default
    chosen = JointDiffusion(
        linear_gaussian.prior, mcmc_init="prior", show_progress_bars=False
    ).build_posterior(estimator=exact_model, posterior_method="likelihood_mcmc")
    assert chosen.proposal is linear_gaussian.prior
    resample = inference.build_posterior(
        estimator=exact_model,
        posterior_method="likelihood_mcmc",
        mcmc_parameters={"init_strategy": "resample"},
    )
    assert isinstance(resample.proposal, JointPosteriorProposal)
    assert resample.init_strategy == "resample"
    with pytest.raises(ValueError, match="no tractable density"):
        inference.build_posterior(
            estimator=exact_model,
            posterior_method="likelihood_mcmc",
            mcmc_parameters={"init_strategy": "sir"},
        )
    with pytest.raises(ValueError, match="Unknown mcmc_init"):
        JointDiffusion(linear_gaussian.prior, mcmc_init="map")
    with pytest.raises(ValueError, match="Unknown mcmc_init"):
        inference.build_posterior(
            estimator=exact_model, posterior_method="likelihood_mcmc", mcmc_init="x"
        )


def test_classifier_free_guidance_on_conditionals(exact_model, linear_gaussian):
    """CFG's unconditional model is the latent block's marginal: w = 1 is the
    conditional itself, w = 0 the marginal (for the posterior: the prior)."""
    mask = torch.tensor([False, False, True, True])
    conditional = JointConditional(
        exact_model, mask, sampler_options={"steps": 10}, show_progress_bars=False
    )
    plain = conditional.sample(
        (50,), condition=X_O[0], generator=torch.Generator().manual_seed(0)
    )
    guided = conditional.sample(
        (50,),
        condition=X_O[0],
        generator=torch.Generator().manual_seed(0),
        guidance=ClassifierFreeGuidance(1.0),
    )
    assert torch.allclose(plain, guided, atol=1e-4)
    assert conditional.last_nfe == pytest.approx(2 * 21.0)
    posterior = JointPosterior(
        exact_model, linear_gaussian.prior, sampler_options={"steps": 10}
    )
    torch.manual_seed(7)
    prior = posterior.sample(
        (3000,), x=X_O, guidance=ClassifierFreeGuidance(0.0), show_progress_bars=False
    )
    assert_moments(
        prior, linear_gaussian.prior_mean, linear_gaussian.prior_cov, 0.1, 0.15
    )
    with pytest.raises(ValueError, match="ScoreTransform"):
        conditional.sample((4,), condition=X_O[0], guidance="cfg")


# ---------------------------------------------------------- masks and network


def small_denoiser(theta_dim=2, x_dim=2, edges=None) -> JointDenoiser:
    torch.manual_seed(0)
    net = TokenTransformer(theta_dim + x_dim, width=16, depth=2, num_heads=2)
    for p in net.parameters():  # break the zero initialisation of the read-out
        torch.nn.init.normal_(p, std=0.3)
    return JointDenoiser(
        net,
        get_schedule("edm_vp"),
        get_parameterization("F"),
        (theta_dim,),
        (x_dim,),
        edges=edges,
    )


def test_mask_distribution():
    dist = MaskDistribution(2, 3)
    masks = dist.sample(500, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (500, 5) and masks.dtype == torch.bool
    assert not masks.all(dim=1).any()  # always something to learn
    rows = {tuple(r.tolist()) for r in masks}
    assert (False,) * 5 in rows  # joint
    assert (False, False, True, True, True) in rows  # posterior
    assert (True, True, False, False, False) in rows  # likelihood
    only_posterior = MaskDistribution(2, 3, {"posterior": 1.0}).sample(10)
    assert (only_posterior == dist.fixed_mask("posterior")).all()
    custom = torch.tensor([[True, False, False, True, True]])
    drawn = MaskDistribution(2, 3, {"custom": 1.0}, custom_masks=custom).sample(4)
    assert (drawn == custom).all()
    with pytest.raises(ValueError, match="Unknown mask kinds"):
        MaskDistribution(2, 3, {"prior": 1.0})
    with pytest.raises(ValueError, match="custom_masks"):
        MaskDistribution(2, 3, {"custom": 1.0})
    with pytest.raises(ValueError, match="at least one latent"):
        MaskDistribution(2, 3, {"custom": 1.0}, custom_masks=torch.ones(1, 5))


def test_observed_entries_fixed_and_edges_restrict_attention():
    # chain theta_0 -> x_0, theta_1 -> x_1: (theta_0, x_0) and (theta_1, x_1) are
    # disconnected, so x_hat of theta_0 must not depend on theta_1 or x_1
    edges = torch.zeros(4, 4, dtype=torch.bool)
    edges[2, 0] = edges[3, 1] = True
    model = small_denoiser(edges=edges).eval()
    z = torch.randn(3, 4)
    t = torch.full((3,), 0.5)
    mask = torch.tensor([False, False, True, False]).expand(3, 4)
    out = model.denoise_masked(z, t, mask)
    assert torch.equal(out[:, 2], z[:, 2])  # observed entries stay clean
    z2 = z.clone()
    z2[:, 1] += 1.0
    z2[:, 3] -= 2.0
    out2 = model.denoise_masked(z2, t, mask)
    assert torch.allclose(out[:, 0], out2[:, 0], atol=1e-6)
    assert not torch.allclose(out[:, 1], out2[:, 1])
    attention = attention_mask(edges, mask)
    assert attention.shape == (3, 4, 4)
    assert not attention[0, 2, 0]  # observed x_0 does not attend to latent theta_0
    assert attention[0, 0, 2]  # latent theta_0 attends to its child x_0


def test_loss_missing_values_and_determinism():
    model = small_denoiser()
    theta = torch.randn(8, 2)
    x = torch.randn(8, 2)
    x[0] = float("nan")
    x[1, 0] = float("nan")
    times = torch.full((8,), 0.4)
    loss = model.loss(theta, x, LossDraws(times=times))
    assert loss.shape == (8,) and torch.isfinite(loss).all()
    # fixed masks and noise
    assert torch.equal(loss, model.loss(theta, x, LossDraws(times=times)))
    # the loss does not depend on (or train towards) a missing value
    x_other = x.clone()
    x_other[1, 0] = 123.0
    mask = torch.zeros(4, dtype=torch.bool)
    noise = torch.randn(8, 4)
    a = model.loss(theta, x, LossDraws(times, noise), condition_mask=mask)
    b = model.loss(
        theta, x_other.nan_to_num(123.0), LossDraws(times, noise), condition_mask=mask
    )
    assert not torch.isclose(a[1], b[1])  # sanity: a present value matters
    missing_row = model.loss(
        theta[:1],
        x[:1],
        LossDraws(times[:1], noise[:1]),
        condition_mask=torch.tensor([True, True, False, False]),
    )
    assert float(missing_row.detach()) == 0.0  # only missing latents: nothing to learn
    with pytest.raises(ValueError, match="columns"):
        model.loss(theta, x, LossDraws(times, torch.randn(8, 3)))


def test_append_keeps_missing_values_and_drops_inf_rows(linear_gaussian):
    """NaN entries are kept as missing values; rows with inf in x are dropped
    with a warning that names the caller's line; inf in theta raises."""
    theta = linear_gaussian.prior.sample((20,))
    x = linear_gaussian.simulate(theta)
    x[0, 0] = float("nan")
    theta[1, 1] = float("nan")
    x[2, 1] = float("inf")
    inference = JointDiffusion(linear_gaussian.prior, show_progress_bars=False)
    with pytest.warns(UserWarning, match="1 simulations with NaN or inf") as record:
        inference.append_simulations(theta, x)
    assert record[0].filename == __file__
    kept_theta, kept_x, _ = inference.get_simulations()
    assert kept_x.shape[0] == 19
    assert torch.isnan(kept_x[0, 0]) and torch.isnan(kept_theta[1, 1])
    assert torch.isfinite(kept_x[~torch.isnan(kept_x)]).all()
    theta[3, 0] = float("inf")
    with pytest.raises(ValueError, match="theta contains inf"):
        JointDiffusion(linear_gaussian.prior).append_simulations(theta, x)


def test_high_dimensional_x_tokens():
    """x of dimension 100 (slcp_distractors, bernoulli_glm_raw) works."""
    model = small_denoiser(theta_dim=5, x_dim=100)
    theta, x = torch.randn(4, 5), torch.randn(4, 100)
    loss = model.loss(theta, x)
    loss.mean().backward()
    assert torch.isfinite(loss).all()
    observed = torch.cat([torch.zeros(1, 5), x[:1]], 1)
    denoise = model.conditional(torch.arange(105) >= 5, observed)
    assert denoise(torch.randn(7, 5), torch.tensor(0.3)).shape == (7, 5)


def test_error_messages(exact_model, linear_gaussian):
    with pytest.raises(ValueError, match="shape"):
        check_condition_mask(torch.ones(3, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="0 and 1"):
        check_condition_mask(torch.tensor([0, 2, 1, 1]), 4)
    with pytest.raises(ValueError, match="no free variable"):
        JointConditional(exact_model, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no free variable"):
        exact_model.conditional(torch.ones(4, dtype=torch.bool), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="shape"):
        JointConditional(exact_model, torch.zeros(5, dtype=torch.bool))
    conditional = JointConditional(
        exact_model, torch.tensor([True, False, True, True]), show_progress_bars=False
    )
    with pytest.raises(ValueError, match="observes 3 of 4"):
        conditional.sample((2,), condition=torch.zeros(2))
    with pytest.raises(ValueError, match="No condition"):
        conditional.sample((2,))
    with pytest.raises(ValueError, match="edge mask"):
        small_denoiser(edges=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="posterior_method"):
        JointDiffusion(linear_gaussian.prior, posterior_method="rejection")
    with pytest.raises(ValueError, match="Unknown net"):
        JointDiffusion(linear_gaussian.prior, net="mlp")
    with pytest.raises(ValueError, match="divisible"):
        TokenTransformer(4, width=10, num_heads=4)
    inference = JointDiffusion(linear_gaussian.prior)
    with pytest.raises(ValueError, match="train"):
        inference.build_likelihood()
    likelihood = JointLikelihood(exact_model)
    with pytest.raises(ValueError, match="theta has shape"):
        likelihood.sample((2,), theta=torch.zeros(3))


# ------------------------------------------------------------ trained model


@pytest.fixture(scope="module")
def trained(linear_gaussian) -> JointDiffusion:
    torch.manual_seed(0)
    theta = linear_gaussian.prior.sample((2000,))
    x = linear_gaussian.simulate(theta)
    x[:100, 0] = float("nan")  # missing values are kept and marginalised
    inference = JointDiffusion(
        linear_gaussian.prior,
        net_kwargs={"width": 32, "depth": 2},
        ema_decay=0.99,
        show_progress_bars=False,
    )
    inference.append_simulations(theta, x)
    assert inference.get_simulations()[1].shape[0] == 2000
    inference.train(
        max_num_epochs=60, training_batch_size=128, learning_rate=3e-3, seed=0
    )
    return inference


def test_trained_posterior_likelihood_conditional(trained, linear_gaussian):
    torch.manual_seed(6)
    posterior = trained.build_posterior()
    samples = posterior.sample((2000,), x=X_O, show_progress_bars=False)
    mean, cov = linear_gaussian.posterior(X_O)
    assert_moments(samples, mean, cov, 0.2, 0.15)
    assert posterior.last_nfe is not None

    likelihood = trained.build_likelihood()
    x = likelihood.sample((2000,), theta=THETA_0)
    x_mean = linear_gaussian.matrix @ THETA_0 + linear_gaussian.shift
    assert_moments(x, x_mean, linear_gaussian.noise_cov, 0.25, 0.2)
    log_p = likelihood.log_prob(x_mean[None], theta=THETA_0, rtol=1e-3, atol=1e-3)
    exact = MultivariateNormal(x_mean, linear_gaussian.noise_cov).log_prob(x_mean)
    assert abs(float(log_p) - float(exact)) < 0.5

    conditional = trained.build_conditional(torch.tensor([True, False, True, True]))
    drawn = conditional.sample((2000,), condition=torch.tensor([0.7, 0.3, -0.4]))
    m, v = conditional_of_posterior(linear_gaussian, X_O, 0.7)
    assert abs(float(drawn.mean()) - m) < 0.2
    assert abs(float(drawn.var()) - v) < 0.1


def test_old_module_path_warns_and_reexports():
    """``sbi_diffusion.inference.joint`` still works for one release (old
    imports and pickles), with a DeprecationWarning."""
    sys.modules.pop("sbi_diffusion.inference.joint", None)
    with pytest.warns(DeprecationWarning, match="sbi_diffusion.joint"):
        old = importlib.import_module("sbi_diffusion.inference.joint")
    assert old.JointDiffusion is JointDiffusion
    assert old.JointPosterior is JointPosterior
    assert old.JointConditional is JointConditional
    assert old.JointLikelihoodPotential is JointLikelihoodPotential
