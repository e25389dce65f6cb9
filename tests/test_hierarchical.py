r"""Hierarchical models: composition over groups against an exact posterior.

The model (``benchmarks/hierarchical/model.py``): ``g ~ N(0, s_g^2 I)``,
``l_j | g ~ N(g, s_l^2 I)``, ``x_jk | l_j ~ N(l_j, s_x^2 I)``, ``k = 1..T``. With
``xbar_j`` the mean of group ``j``'s ``n_j`` trials and ``v_j = s_l^2 + s_x^2 /
n_j``, per coordinate

.. math::
    p(g \mid x_{1:G}) = N\Big(\frac{\sum_j xbar_j / v_j}{P}, \frac{1}{P}\Big),
    \quad P = s_g^{-2} + \sum_j v_j^{-1},
    \qquad
    p(l_j \mid g, x_j) = N\Big(\frac{g s_l^{-2} + n_j xbar_j s_x^{-2}}{Q_j},
    \frac{1}{Q_j}\Big), \quad Q_j = s_l^{-2} + n_j s_x^{-2}.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.distributions import Independent, Normal

from sbi_diffusion import HierarchicalNPE
from sbi_diffusion.composition import SNRDamping
from sbi_diffusion.hierarchical import GroupLayout, MaskedSetEmbedding
from sbi_diffusion.hierarchical.posterior import DEFAULT_NOISE_FLOOR
from sbi_diffusion.samplers import Solver

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks" / "hierarchical"))
from model import HierarchicalGaussian, small_estimator  # noqa: E402

torch.set_num_threads(1)

MODEL = HierarchicalGaussian()
FAST = Solver("euler", steps=4)


def train_small(device: str = "cpu", num: int = 2500, steps: int = 700):
    torch.manual_seed(0)
    g, loc, x = MODEL.simulate(num)
    inference = small_estimator(MODEL, device)
    inference.append_simulations(g, loc, x)
    return inference.train(max_num_steps=steps, seed=0, training_batch_size=128)


@pytest.fixture(scope="module")
def trained() -> HierarchicalNPE:
    return train_small()


@pytest.fixture(scope="module")
def observed():
    torch.manual_seed(3)
    return MODEL.observe(10, g=torch.tensor([0.8, -0.5]))


# ------------------------------------------------------------ accuracy


def test_global_posterior_of_ten_groups_matches_exact(trained, observed):
    _, _, x = observed
    mean, var = MODEL.global_posterior(x)
    posterior = trained.build_posterior()
    torch.manual_seed(0)
    samples = posterior.sample((400,), x=x)
    assert samples.shape == (400, 2)
    std = var**0.5
    assert ((samples.mean(0) - mean).abs() < 1.5 * std).all()
    ratio = samples.std(0) / std
    assert ((ratio > 0.6) & (ratio < 1.5)).all(), ratio


def test_local_posterior_mean_given_global(trained, observed):
    _, _, x = observed
    posterior = trained.build_posterior()
    g = torch.tensor([[0.8, -0.5], [0.0, 0.5]]).repeat_interleave(100, 0)
    torch.manual_seed(0)
    local = posterior.sample_local(g, x)
    assert local.shape == (200, 10, 2)
    mean, var = MODEL.local_posterior(g, x)
    for rows in (slice(0, 100), slice(100, 200)):
        err = (local[rows].mean(0) - mean[rows].mean(0)) / var[:, None] ** 0.5
        assert err.abs().mean() < 0.5, err


# -------------------------------------------------------------- shapes


def test_shapes_of_sample_and_sample_joint(trained, observed):
    _, _, x = observed
    posterior = trained.build_posterior(sampler=FAST)
    g, loc = posterior.sample_joint((3, 4), x=x, steps=4)
    assert g.shape == (3, 4, 2) and loc.shape == (3, 4, 10, 2)
    one = posterior.sample((5,), x=x[:1])  # G = 1: the single-group posterior
    assert one.shape == (5, 2) and torch.isfinite(one).all()
    assert posterior.last_info["num_groups"] == 1


def test_padded_groups_are_masked(trained, observed):
    _, _, x = observed
    layout = GroupLayout((5, 2))
    padded = x.clone()
    padded[0, 3:] = float("nan")  # group 0 holds 3 trials
    net = MaskedSetEmbedding(2, torch.zeros(2), torch.ones(2), hidden=8)
    encoded = layout.encode(padded)
    assert torch.isfinite(encoded).all() and encoded.shape == (10, 5, 3)
    # the embedding ignores padding rows and the trials' order
    moved = padded[:1, [3, 0, 4, 1, 2]]
    with torch.no_grad():
        assert torch.allclose(net(encoded[:1]), net(layout.encode(moved)), atol=1e-6)
    posterior = trained.build_posterior(sampler=FAST)
    assert torch.isfinite(posterior.sample((5,), x=padded)).all()
    mean, _ = MODEL.global_posterior(padded)  # the reference counts 3 trials
    assert torch.isfinite(mean).all()


def test_training_with_padded_groups_keeps_them():
    torch.manual_seed(0)
    g, loc, x = MODEL.simulate(200)
    x[:50, 4] = float("nan")
    inference = HierarchicalNPE(MODEL.global_prior, MODEL.local_prior)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inference.append_simulations(g, loc, x)
    assert inference._simulations()[0].shape[0] == 200


# ---------------------------------------------- chunks and mini-batches


def test_chunks_of_groups_give_the_same_samples(trained):
    torch.manual_seed(5)
    _, _, x = MODEL.observe(2000)
    results = []
    for max_rows in (20_000, 1_000):
        posterior = trained.build_posterior(
            sampler=FAST,
            max_rows=max_rows,
            # GAUSS with given covariances: no per-group sampling to set it up
            composition_options={"trial_covariances": 0.5 * torch.eye(2)},
        )
        results.append(
            posterior.sample((10,), x=x, generator=torch.Generator().manual_seed(0))
        )
    assert torch.isfinite(results[0]).all()
    assert torch.allclose(results[0], results[1], rtol=1e-4, atol=1e-4)


def test_group_mini_batches_are_unbiased_and_reproducible(trained):
    torch.manual_seed(6)
    _, _, x = MODEL.observe(20)
    gp = trained.build_posterior().global_posterior
    encoded = GroupLayout((5, 2)).encode(x)
    full = gp.iid_denoiser(encoded, "factorized")
    batched = gp.iid_denoiser(encoded, "factorized", trial_batch_size=5)
    assert batched.evaluations_per_call == 5
    z, t = torch.randn(4, 2), torch.full((4,), 0.5)
    with torch.no_grad():
        mean = torch.stack([batched(z, t) for _ in range(400)]).mean(0)
        exact = full(z, t)
        assert (mean - exact).abs().max() < 0.1 * exact.abs().max()
        batched.reseed_trial_batches(1)
        a = batched(z, t)
        batched.reseed_trial_batches(1)
        assert torch.equal(a, batched(z, t))
    posterior = trained.build_posterior(sampler=FAST, group_batch_size=5)
    draws = [
        posterior.sample((6,), x=x, generator=torch.Generator().manual_seed(2))
        for _ in range(2)
    ]
    assert torch.equal(draws[0], draws[1])


def test_damping_schedule(trained, observed):
    _, _, x = observed
    posterior = trained.build_posterior(damping=1.0)
    schedule = posterior.global_posterior.estimator.schedule
    damping = SNRDamping(schedule, 1.0)
    t = torch.tensor([float(schedule.t_min), float(schedule.t_max)])
    d = damping(t)
    assert d[0] > 0.99 and d[1] < 0.01
    assert torch.equal(SNRDamping(schedule, 0.0)(t), torch.ones(2))
    with pytest.raises(ValueError, match="snr0"):
        SNRDamping(schedule, -1.0)
    samples = posterior.sample((5,), x=x, sampler=FAST)
    assert torch.isfinite(samples).all()


def test_noise_floor_default_and_record(trained, observed):
    _, _, x = observed
    gauss = trained.build_posterior(sampler=FAST)
    assert gauss.noise_floor == DEFAULT_NOISE_FLOOR
    assert trained.build_posterior(composition="factorized").noise_floor is None
    gauss.sample((3,), x=x)
    assert gauss.last_info["noise_floor"] == DEFAULT_NOISE_FLOOR
    composed = gauss.global_posterior.iid_denoiser(
        gauss.layout.check_groups(x), "gauss", **gauss._composition_options()
    )
    assert composed._floor is not None


# ---------------------------------------------------------------- errors


def test_errors(trained, observed):
    _, _, x = observed
    posterior = trained.build_posterior(sampler=FAST)
    with pytest.raises(ValueError, match="groups of shape"):
        posterior.sample((2,), x=x[:, :3])
    with pytest.raises(ValueError, match="G = 0"):
        posterior.sample((2,), x=x[:0])
    bad = x.clone()
    bad[2, 1, 0] = float("nan")  # a NaN inside a trial, not a padding row
    with pytest.raises(ValueError, match="NaN or inf"):
        posterior.sample((2,), x=bad)
    with pytest.raises(ValueError, match="Unknown composition"):
        trained.build_posterior(composition="nope")
    with pytest.raises(ValueError, match="noise_floor"):
        trained.build_posterior(composition="factorized", noise_floor=0.5)
    with pytest.raises(ValueError, match="torch Distribution"):
        HierarchicalNPE(MODEL.global_prior, lambda g: g + 1)
    with pytest.raises(ValueError, match="function"):
        HierarchicalNPE(MODEL.global_prior, Independent(Normal(0.0, 1.0), 0))


def test_append_simulations_errors_and_invalid_rows():
    torch.manual_seed(0)
    g, loc, x = MODEL.simulate(30)
    inference = HierarchicalNPE(MODEL.global_prior, MODEL.local_prior)
    with pytest.raises(ValueError, match="rows"):
        inference.append_simulations(g, loc[:20], x)
    with pytest.raises(ValueError, match="local_theta has shape"):
        inference.append_simulations(g, loc[:, :1], x)
    with pytest.raises(ValueError, match="num_simulations"):
        inference.append_simulations(g, loc, x[:, :, :, None])
    x[3, 0, 1] = float("inf")
    x[4, :, :] = float("nan")  # no trial at all
    with pytest.warns(UserWarning, match="2 groups"):
        inference.append_simulations(g, loc, x)
    assert inference._simulations()[0].shape[0] == 28
    with pytest.raises(ValueError, match="exclude_invalid_x"):
        inference.append_simulations(g, loc, x, exclude_invalid_x=False)
    with pytest.raises(ValueError, match="earlier simulations"):
        inference.append_simulations(g, loc, x[:, :3])
    with pytest.raises(ValueError, match="train"):
        inference.build_posterior()


# ------------------------------------------------------------ save/load


def test_save_and_load_reproduce_samples(trained, observed):
    _, _, x = observed
    posterior = trained.build_posterior(sampler=FAST)
    torch.manual_seed(11)
    g, loc = posterior.sample_joint((7,), x=x)
    buffer = io.BytesIO()
    torch.save(posterior, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.manual_seed(11)
    g2, loc2 = loaded.sample_joint((7,), x=x)
    assert torch.equal(g, g2) and torch.equal(loc, loc2)


# ------------------------------------------------------------------ GPU


@pytest.mark.gpu
def test_hierarchical_on_cuda():
    inference = train_small(device="cuda", num=500, steps=50)
    posterior = inference.build_posterior(sampler=FAST, group_batch_size=4)
    torch.manual_seed(3)
    _, _, x = MODEL.observe(10)
    g, loc = posterior.sample_joint((5,), x=x.cuda())
    assert g.device.type == "cuda" and loc.device.type == "cuda"
    assert torch.isfinite(g).all() and torch.isfinite(loc).all()


def test_global_ensemble_composes_the_mean_of_its_members(observed):
    from sbi_diffusion.model import DenoiserEnsemble

    _, _, x = observed
    torch.manual_seed(0)
    g, loc, x_sim = MODEL.simulate(600)
    inference = small_estimator(MODEL).append_simulations(g, loc, x_sim)
    with pytest.raises(ValueError, match="global_ensemble_size must be at least 1"):
        inference.train(global_ensemble_size=0)
    inference.train(max_num_steps=30, seed=4, global_ensemble_size=2)
    first, second = inference.global_members
    assert first.resolved_training["seed"] == 4
    assert second.resolved_training["seed"] == 5
    posterior = inference.build_posterior(sampler=FAST)
    ensemble = posterior.global_posterior.estimator
    assert isinstance(ensemble, DenoiserEnsemble) and len(ensemble.members) == 2
    # each member has its own group embedding, trained apart
    nets = [m.embedding_net for m in ensemble.members]
    assert nets[0] is not nets[1]
    assert not torch.equal(next(nets[0].parameters()), next(nets[1].parameters()))
    samples = posterior.sample((20,), x=x)
    assert samples.shape == (20, 2) and torch.isfinite(samples).all()
