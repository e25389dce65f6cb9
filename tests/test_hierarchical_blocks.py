r"""A global model of data sets of ``k`` groups, composed over blocks of groups.

The hierarchical Gaussian of ``benchmarks/hierarchical/model.py`` (its exact
posterior in ``tests/test_hierarchical.py``); the global model is trained on
data sets of ``k = 5`` groups that share ``g`` and composed over
``ceil(G / 5)`` blocks.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch

from sbi_diffusion import HierarchicalNPE
from sbi_diffusion.hierarchical import (
    GroupBlocks,
    GroupLayout,
    GroupSetEmbedding,
    MaskedSetEmbedding,
)
from sbi_diffusion.hierarchical.blocks import random_subsets
from sbi_diffusion.samplers import Solver

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks" / "hierarchical"))
from model import HierarchicalGaussian, small_estimator  # noqa: E402

torch.set_num_threads(1)

MODEL = HierarchicalGaussian()
K = 5


@pytest.fixture(scope="module")
def trained() -> HierarchicalNPE:
    torch.manual_seed(0)
    g, loc, x = MODEL.simulate_datasets(800, K)
    inference = small_estimator(MODEL)
    inference.append_simulations(g, loc, x)
    return inference.train(max_num_steps=1500, seed=0, training_batch_size=128)


# ------------------------------------------------------ blocks of groups


def test_partition_makes_blocks_of_near_equal_size():
    blocks = GroupBlocks(GroupLayout((5, 2)), K)
    torch.manual_seed(0)
    _, _, x = MODEL.observe(13)
    encoded = blocks.layout.encode(x)
    parts = blocks.partition(encoded)
    assert parts.shape == (3, K, 5 * 3 + 1)
    assert parts[..., -1].sum(1).tolist() == [5.0, 4.0, 4.0]
    # the groups in their order, each flattened, and empty slots all zero
    rows = parts[parts[..., -1] > 0][:, :-1]
    assert torch.equal(rows, encoded.reshape(13, -1))
    assert torch.equal(parts[1, 4], torch.zeros(16))


def test_encoded_blocks_and_their_embedding_ignore_absent_groups():
    layout = GroupLayout((5, 2))
    blocks = GroupBlocks(layout, K)
    torch.manual_seed(1)
    _, _, x = MODEL.simulate_datasets(4, K)
    present = torch.ones(4, K, dtype=torch.bool)
    present[0, 3:] = False
    x[0, 3:] = float("nan")  # absent groups may hold anything
    encoded = blocks.encode(x, present)
    assert encoded.shape == (4, K, 16) and torch.isfinite(encoded).all()
    net = GroupSetEmbedding(
        MaskedSetEmbedding(2, torch.zeros(2), torch.ones(2), hidden=8),
        layout.encoded_shape,
        hidden=16,
        output_dim=4,
    )
    with torch.no_grad():
        # the same as the block of only the present groups, in another order
        alone = blocks.partition(layout.encode(x[0, [2, 0, 1]]))
        assert torch.allclose(net(encoded[:1]), net(alone), atol=1e-6)
        # and the count of groups matters
        assert not torch.allclose(net(encoded[1:2]), net(encoded[:1]), atol=1e-3)


def test_random_subsets_are_proper_subsets_of_the_present_groups():
    present = torch.ones(500, K, dtype=torch.bool)
    present[:100, 1:] = False  # one group: kept whole
    present[100:200, 3:] = False
    subsets = random_subsets(present, torch.Generator().manual_seed(0))
    assert not (subsets & ~present).any()
    sizes = subsets.sum(1)
    assert (sizes[:100] == 1).all()
    assert ((sizes[100:200] >= 1) & (sizes[100:200] <= 2)).all()
    assert set(sizes[200:].tolist()) == {1, 2, 3, 4}


# ------------------------------------------------------------- accuracy


@pytest.mark.parametrize("num_groups", [5, 12])
def test_global_posterior_of_blocks_matches_exact(trained, num_groups):
    torch.manual_seed(3 + num_groups)
    _, _, x = MODEL.observe(num_groups, g=torch.tensor([0.8, -0.5]))
    mean, var = MODEL.global_posterior(x)
    posterior = trained.build_posterior()
    samples = posterior.sample((400,), x=x)
    assert posterior.last_info["num_blocks"] == -(-num_groups // K)
    assert posterior.last_info["groups_per_block"] == K
    std = var**0.5
    assert ((samples.mean(0) - mean).abs() < 1.5 * std).all()
    ratio = samples.std(0) / std
    assert ((ratio > 0.6) & (ratio < 1.6)).all()


def test_local_model_is_trained_on_every_group(trained):
    assert trained.local_inference._theta_roundwise[0].shape[0] == 800 * K
    torch.manual_seed(4)
    _, _, x = MODEL.observe(5, g=torch.tensor([0.8, -0.5]))
    g = torch.tensor([[0.8, -0.5]]).expand(300, 2)
    local = trained.build_posterior().sample_local(g, x)
    mean, var = MODEL.local_posterior(g[:1], x)
    err = (local.mean(0) - mean[0]) / var[:, None] ** 0.5
    assert local.shape == (300, 5, 2) and (err.abs() < 0.5).all()


@pytest.fixture(scope="module")
def trained_on_proposal() -> HierarchicalNPE:
    """Data sets whose ``g`` come from the prior widened 2.5 times."""
    torch.manual_seed(1)
    g, loc, x = MODEL.simulate_datasets(800, K, proposal_scale=2.5)
    inference = small_estimator(MODEL)
    inference.global_proposal = MODEL.proposal(2.5)
    inference.append_simulations(g, loc, x)
    return inference.train(max_num_steps=1500, seed=0, training_batch_size=128)


@pytest.mark.parametrize("num_groups", [1, 6])
def test_a_global_proposal_is_divided_out(trained_on_proposal, num_groups):
    """One block (1 group: reweighted by ``p / q``) or two (6 groups: composed
    with ``-N`` proposal terms and one prior term instead of ``1 - N``
    proposal terms): either way the correction adds the precision
    ``P_p - P_q`` of the two zero-mean Gaussians, so a posterior
    ``N(m, 1 / L)`` under the proposal becomes ``N(L m / (L + P_p - P_q),
    1 / (L + P_p - P_q))``. Checked on the same network and noise with and
    without the correction, with ``g`` 2.5 prior standard deviations out."""
    torch.manual_seed(7)
    _, _, x = MODEL.observe(num_groups, g=torch.tensor([3.75, -3.75]))
    posterior = trained_on_proposal.build_posterior()
    assert posterior.target_prior is trained_on_proposal.global_prior
    samples = {}
    for target in (posterior.target_prior, None):
        posterior.target_prior = target
        torch.manual_seed(8)
        samples[target is None] = posterior.sample((1000,), x=x)
    added = 1 / MODEL.s_g**2 - 1 / (2.5 * MODEL.s_g) ** 2
    precision = 1 / samples[True].var(0)
    predicted = samples[True].mean(0) * precision / (precision + added)
    std = samples[False].std(0)
    assert ((samples[True].mean(0) - predicted).abs() > 0.25 * std).all()
    assert ((samples[False].mean(0) - predicted).abs() < 0.1 * std).all()
    ratio = std * (precision + added) ** 0.5
    assert ((ratio > 0.9) & (ratio < 1.1)).all()
    # and near the exact posterior under the prior
    mean, var = MODEL.global_posterior(x)
    assert ((samples[False].mean(0) - mean).abs() < 0.6 * var**0.5).all()


# --------------------------------------------------------------- errors


def test_data_sets_of_groups_errors_and_invalid_groups():
    torch.manual_seed(0)
    g, loc, x = MODEL.simulate_datasets(20, K)
    inference = HierarchicalNPE(MODEL.global_prior, MODEL.local_prior)
    with pytest.raises(ValueError, match="5 groups per row"):
        inference.append_simulations(g, loc, x[:, :3])
    with pytest.raises(ValueError, match="local_theta has shape"):
        inference.append_simulations(g, loc[..., :1], x)
    x[0, 1, 2, 0] = float("nan")  # one invalid group: dropped from its data set
    loc[0, 1] = float("nan")
    x[1] = float("nan")  # a data set without a valid group: dropped
    with pytest.warns(UserWarning, match="6 groups"):
        inference.append_simulations(g, loc, x)
    g_kept, _, _, present = inference._simulations()
    assert g_kept.shape[0] == 19 and int(present.sum()) == 19 * K - 1
    with pytest.raises(ValueError, match="one group per row"):
        HierarchicalNPE(MODEL.global_prior, MODEL.local_prior).append_simulations(
            *MODEL.simulate(4)
        ).append_simulations(g, loc, x)
    with pytest.raises(ValueError, match="5 groups per row"):
        inference.append_simulations(*MODEL.simulate(4))


def test_saved_inference_builds_the_same_posterior(trained):
    """The trained ``HierarchicalNPE`` itself (its blocks and both models)
    survives ``torch.save``."""
    torch.manual_seed(5)
    _, _, x = MODEL.observe(12)
    buffer = io.BytesIO()
    torch.save(trained, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.blocks == trained.blocks
    draws = []
    for inference in (trained, loaded):
        posterior = inference.build_posterior(sampler=Solver("euler", steps=4))
        generator = torch.Generator().manual_seed(11)
        draws.append(posterior.sample_joint((7,), x=x, generator=generator))
    assert torch.equal(draws[0][0], draws[1][0])
    assert torch.equal(draws[0][1], draws[1][1])
