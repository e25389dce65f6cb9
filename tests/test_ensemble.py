"""DenoiserEnsemble: the mean of denoisers trained on the same simulations."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import LinearGaussian

from sbi_diffusion import DiffusionNPE
from sbi_diffusion.model import ConditionalDenoiser, DenoiserEnsemble

torch.set_num_threads(1)


def train(problem: LinearGaussian, theta, x, seed: int, steps: int = 1500):
    inference = DiffusionNPE(
        problem.prior,
        net_kwargs={"width": 32, "depth": 2},
        condition_dropout=0.1,
        show_progress_bars=False,
    )
    inference.append_simulations(theta, x)
    inference.train(max_num_steps=steps, training_batch_size=128, seed=seed)
    return inference


@pytest.fixture(scope="module")
def members():
    problem = LinearGaussian()
    torch.manual_seed(0)
    theta = problem.prior.sample((1500,))
    x = problem.simulate(theta)
    inferences = [train(problem, theta, x, seed) for seed in (0, 1)]
    estimators = [i._estimator_or_trained(None, "train()") for i in inferences]
    return problem, inferences[0], estimators


def test_ensemble_is_the_mean_of_its_members(members):
    _, _, estimators = members
    ensemble = DenoiserEnsemble(estimators)
    assert isinstance(ensemble, ConditionalDenoiser)
    torch.manual_seed(1)
    x = torch.randn(3, 2)
    z = torch.randn(5, 2)
    t = torch.full((5,), 0.3)
    with torch.no_grad():
        embedding = ensemble.embed_condition(x[:1])
        each = [m.denoise_embedded(z, m.embed_condition(x[:1]), t) for m in estimators]
        torch.testing.assert_close(
            ensemble.denoise_embedded(z, embedding, t), (each[0] + each[1]) / 2
        )
        torch.testing.assert_close(ensemble.bind(x[:1])(z, t), (each[0] + each[1]) / 2)
        trials = ensemble.denoise_trials(z, ensemble.embed_condition(x), t)
        each = [m.denoise_trials(z, m.embed_condition(x), t) for m in estimators]
        assert trials.shape == (5, 3, 2)
        torch.testing.assert_close(trials, (each[0] + each[1]) / 2)
        rows = torch.randn(3, 4, 2)
        grouped = ensemble.denoise_grouped(rows, ensemble.embed_condition(x), 0.3)
        each = [m.denoise_grouped(rows, m.embed_condition(x), 0.3) for m in estimators]
        torch.testing.assert_close(grouped, (each[0] + each[1]) / 2)
        null = [m.denoise_embedded(z, m.null_condition(5), t) for m in estimators]
        torch.testing.assert_close(ensemble.bind(None)(z, t), (null[0] + null[1]) / 2)


def test_ensemble_posterior_matches_the_analytic_one(members):
    problem, inference, estimators = members
    posterior = inference.build_posterior(estimator=DenoiserEnsemble(estimators))
    x_o = torch.tensor([[0.4, -0.2]])
    mean, cov = (v.float() for v in problem.posterior(x_o))
    torch.manual_seed(2)
    samples = posterior.sample((2000,), x=x_o, show_progress_bars=False)
    std = cov.diagonal().sqrt()
    assert ((samples.mean(0) - mean).abs() < 0.2 * std).all()
    ratio = samples.std(0) / std
    assert ((ratio > 0.85) & (ratio < 1.2)).all(), ratio
    log_prob = posterior.log_prob(samples[:20], x=x_o)
    assert log_prob.shape == (20,) and torch.isfinite(log_prob).all()


def test_save_and_load(members):
    _, inference, estimators = members
    posterior = inference.build_posterior(estimator=DenoiserEnsemble(estimators))
    x_o = torch.tensor([[0.4, -0.2]])
    torch.manual_seed(3)
    samples = posterior.sample((50,), x=x_o, steps=8, show_progress_bars=False)
    buffer = io.BytesIO()
    torch.save(posterior, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.manual_seed(3)
    again = loaded.sample((50,), x=x_o, steps=8, show_progress_bars=False)
    assert torch.equal(samples, again)


def test_members_that_do_not_match_are_refused(members):
    problem, _, estimators = members
    torch.manual_seed(5)
    theta = problem.prior.sample((600,)) * 2.0
    other = train(problem, theta, problem.simulate(theta), seed=0, steps=5)
    with pytest.raises(ValueError, match="z-scoring of theta differs"):
        DenoiserEnsemble([estimators[0], other._estimator_or_trained(None, "")])
    with pytest.raises(ValueError, match="at least one member"):
        DenoiserEnsemble([])
    ensemble = DenoiserEnsemble(estimators)
    with pytest.raises(ValueError, match="embed_condition"):
        ensemble.denoise_embedded(torch.zeros(2, 2), torch.zeros(1, 7), 0.5)


def test_train_ensemble_trains_new_members_with_their_seeds():
    problem = LinearGaussian()
    torch.manual_seed(6)
    theta = problem.prior.sample((400,))
    x = problem.simulate(theta)
    inference = DiffusionNPE(
        problem.prior, net_kwargs={"width": 16, "depth": 1}, show_progress_bars=False
    )
    inference.append_simulations(theta, x)
    options = {"max_num_steps": 30, "training_batch_size": 64}
    ensemble = inference.train_ensemble(3, seed=4, **options)
    assert isinstance(ensemble, DenoiserEnsemble) and len(ensemble.members) == 3
    first, second = (dict(m.named_parameters()) for m in ensemble.members[:2])
    assert any(not torch.equal(first[k], second[k]) for k in first)
    resolved = inference.resolved_training
    assert resolved["ensemble_size"] == 3 and resolved["seed"] == 4
    assert resolved["steps_trained_by_member"] == [30, 30, 30]
    # build_posterior() takes the ensemble
    posterior = inference.build_posterior()
    assert isinstance(posterior.estimator, DenoiserEnsemble)
    x_o = torch.tensor([[0.4, -0.2]])
    assert posterior.sample((7,), x=x_o, show_progress_bars=False).shape == (7, 2)
    # member k is what train(seed=4 + k) on a new network gives
    single = DiffusionNPE(
        problem.prior, net_kwargs={"width": 16, "depth": 1}, show_progress_bars=False
    )
    single.append_simulations(theta, x)
    state = torch.get_rng_state()
    torch.manual_seed(11)
    inference.train_ensemble(2, seed=4, **options)
    torch.manual_seed(11)
    single.train(seed=4, **options)
    member = single.train(retrain_from_scratch=True, seed=5, **options)
    torch.set_rng_state(state)
    again = dict(inference.build_posterior().estimator.members[1].named_parameters())
    for name, value in member.named_parameters():
        torch.testing.assert_close(again[name], value)


def test_train_ensemble_refuses_bad_sizes_and_resuming():
    problem = LinearGaussian()
    theta = problem.prior.sample((100,))
    inference = DiffusionNPE(problem.prior, show_progress_bars=False)
    inference.append_simulations(theta, problem.simulate(theta))
    with pytest.raises(ValueError, match="size >= 1"):
        inference.train_ensemble(0)
    with pytest.raises(ValueError, match="resume_training"):
        inference.train_ensemble(2, resume_training=True)
    with pytest.raises(ValueError, match="retrain_from_scratch=False"):
        inference.train_ensemble(2, retrain_from_scratch=False)
