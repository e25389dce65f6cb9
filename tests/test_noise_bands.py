"""Stopping rules: plain patience, and noise-band experts (per-band early
stopping) with their network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sbi_diffusion import JointDiffusion
from sbi_diffusion.inference import DiffusionNPE, FlowMatchingNPE
from sbi_diffusion.inference.noise_bands import NoiseBandNet, NoiseBandSelection
from sbi_diffusion.inference.stopping import (
    NoiseBandStopping,
    PatienceStopping,
    stopping_rule_for_call,
)
from sbi_diffusion.inference.validation import ValidationSet
from sbi_diffusion.model import LossDraws

THETA = torch.tensor([[0.2, 1.0]])


class Constant(nn.Module):
    """Returns ``value`` plus the condition's first column, per row."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, z, condition, time, *rest):
        return torch.full_like(z[:, :1], self.value) + condition[:, :1]


def test_rows_go_to_the_expert_of_their_band():
    net = NoiseBandNet([Constant(0.0), Constant(10.0), Constant(20.0)], [-1.0, 1.0])
    z, condition = torch.zeros(5, 2), torch.zeros(5, 3)
    time = torch.tensor([2.0, -3.0, 0.0, -1.0, 1.0])
    # an edge belongs to the band above it
    assert net(z, condition, time)[:, 0].tolist() == [20.0, 0.0, 10.0, 10.0, 20.0]
    # a shared noise level calls one expert
    assert net(z, condition, torch.tensor([-2.0]))[:, 0].tolist() == [0.0] * 5
    # per-variable noise inputs: the row's band is that of its smallest entry
    per_variable = torch.tensor([[0.0, 5.0], [5.0, 5.0]])
    assert net(z[:2], condition[:2], per_variable)[:, 0].tolist() == [10.0, 20.0]


def test_each_expert_sees_its_own_null_condition():
    nulls = torch.tensor([[3.0, 1.0], [7.0, 1.0]])
    net = NoiseBandNet([Constant(0.0), Constant(100.0)], [0.0], nulls)
    condition = torch.tensor([[0.5, 0.0], [9.0, 1.0], [0.5, 0.0], [9.0, 1.0]])
    time = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    out = net(torch.zeros(4, 1), condition, time)[:, 0]
    assert out.tolist() == [0.5, 3.0, 100.5, 107.0]


def test_gradients_flow_through_every_band():
    experts = [nn.Linear(2, 2), nn.Linear(2, 2)]

    class Wrap(nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def forward(self, z, condition, time):
            return self.lin(z)

    net = NoiseBandNet([Wrap(e) for e in experts], [0.0])
    z = torch.randn(6, 2, requires_grad=True)
    out = net(z, torch.zeros(6, 1), torch.linspace(-1, 1, 6))
    out.sum().backward()
    assert all(e.weight.grad is not None for e in experts)
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize(
    "experts, edges, match",
    [
        (2, [0.0, 1.0], "need 1 band edges"),
        (3, [1.0, 0.0], "must increase"),
    ],
)
def test_bad_bands_raise(experts, edges, match):
    with pytest.raises(ValueError, match=match):
        NoiseBandNet([Constant(0.0)] * experts, edges)


def _trained(linear_gaussian, cls=DiffusionNPE, bands=3, **train_kwargs):
    torch.manual_seed(0)
    theta = linear_gaussian.prior.sample((300,))
    x = linear_gaussian.simulate(theta)
    inference = cls(linear_gaussian.prior, show_progress_bars=False)
    inference.append_simulations(theta, x)
    options = dict(max_num_epochs=30, seed=0, noise_bands=bands)
    options.update(train_kwargs)
    estimator = inference.train(**options)
    return inference, estimator


def _validation_set(inference, estimator) -> ValidationSet:
    """The validation rows the trainer scored (same split, times and noise)."""
    theta, x, _ = inference.get_simulations(0)
    idx = inference.val_indices
    return ValidationSet.build(theta[idx], x[idx], estimator.schedule, 4, "cpu")


@pytest.mark.parametrize("cls", [DiffusionNPE, FlowMatchingNPE])
def test_each_band_keeps_its_best_weights(linear_gaussian, cls):
    inference, estimator = _trained(linear_gaussian, cls)
    assert isinstance(estimator.net, NoiseBandNet)
    assert len(estimator.net.experts) == 3
    selection = inference._stopping_rule.selection
    validation = _validation_set(inference, estimator)
    theta, x = validation.theta, validation.x
    times, noise = validation.times, validation.noise
    with torch.no_grad():
        rows = estimator.loss(theta, x, LossDraws(times, noise))
    # the banded estimator scores on every band the best loss seen there
    torch.testing.assert_close(
        torch.tensor(selection.band_losses(rows)),
        torch.tensor(selection.best_losses),
        rtol=1e-4,
        atol=1e-5,
    )
    history = inference._summary["validation_loss"]
    assert rows.mean().item() <= min(history) + 1e-5


def test_banded_posterior_samples_and_round_trips(linear_gaussian, tmp_path):
    inference, _ = _trained(linear_gaussian)
    posterior = inference.build_posterior()
    x_o = linear_gaussian.simulate(linear_gaussian.prior.sample((1,)))
    samples = posterior.sample((200,), x=x_o, show_progress_bars=False)
    assert samples.shape == (200, 2) and torch.isfinite(samples).all()
    path = tmp_path / "posterior.pt"
    torch.save(posterior, path)
    loaded = torch.load(path, weights_only=False)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = posterior.sample((50,), x=x_o, generator=g1, show_progress_bars=False)
    b = loaded.sample((50,), x=x_o, generator=g2, show_progress_bars=False)
    torch.testing.assert_close(a, b)
    log_p = posterior.log_prob(samples[:5], x=x_o)
    assert torch.isfinite(log_p).all()


def test_one_band_is_ordinary_early_stopping(linear_gaussian):
    _, estimator = _trained(linear_gaussian, bands=1)
    assert not isinstance(estimator.net, NoiseBandNet)


def test_training_resumes_with_its_bands(linear_gaussian):
    inference, _ = _trained(linear_gaussian, max_num_epochs=10)
    selection = inference._stopping_rule.selection
    best = list(selection.best_losses)
    estimator = inference.train(
        max_num_epochs=10, noise_bands=3, resume_training=True, seed=0
    )
    assert inference._stopping_rule.selection is selection
    assert all(b <= a for a, b in zip(best, selection.best_losses, strict=True))
    assert isinstance(estimator.net, NoiseBandNet)


def test_bad_noise_bands_raise(linear_gaussian):
    theta = linear_gaussian.prior.sample((50,))
    x = linear_gaussian.simulate(theta)
    for bad in (0, 2.5):
        inference = DiffusionNPE(linear_gaussian.prior, show_progress_bars=False)
        inference.append_simulations(theta, x)
        with pytest.raises(ValueError, match="positive integer"):
            inference.train(max_num_epochs=1, noise_bands=bad)
    inference = DiffusionNPE(linear_gaussian.prior, show_progress_bars=False)
    inference.append_simulations(theta, x)
    with pytest.raises(ValueError, match="distinct times"):
        inference.train(max_num_epochs=1, noise_bands=1000, num_validation_noise=1)


def test_trainable_embedding_net_is_refused(linear_gaussian):
    theta = linear_gaussian.prior.sample((50,))
    x = linear_gaussian.simulate(theta)
    inference = DiffusionNPE(
        linear_gaussian.prior, embedding_net=nn.Linear(2, 4), show_progress_bars=False
    )
    inference.append_simulations(theta, x)
    with pytest.raises(ValueError, match="trainable embedding net"):
        inference.train(max_num_epochs=1, noise_bands=2)


def test_selection_splits_validation_rows_into_equal_bands():
    times = torch.linspace(0.01, 1.0, 100)
    model = nn.Module()
    model.net = nn.Linear(1, 1)
    selection = NoiseBandSelection(model, times[torch.randperm(100)], 4)
    assert torch.bincount(selection.bands).tolist() == [25, 25, 25, 25]


def test_joint_model_trains_with_noise_bands(linear_gaussian):
    torch.manual_seed(0)
    theta = linear_gaussian.prior.sample((300,))
    x = linear_gaussian.simulate(theta)
    x[:20, 0] = float("nan")  # missing values: per-variable noise inputs
    inference = JointDiffusion(
        linear_gaussian.prior,
        net_kwargs={"width": 16, "depth": 1},
        show_progress_bars=False,
    )
    inference.append_simulations(theta, x)
    estimator = inference.train(max_num_epochs=8, noise_bands=2, seed=0)
    assert isinstance(estimator.net, NoiseBandNet)
    selection = inference._stopping_rule.selection
    validation = _validation_set(inference, estimator)
    val_theta, val_x = validation.theta, validation.x
    times, noise = validation.times, validation.noise
    torch.manual_seed(3)
    with torch.no_grad():
        rows = estimator.loss(val_theta, val_x, LossDraws(times, noise))
    assert rows.shape == times.shape and torch.isfinite(rows).all()
    x_o = linear_gaussian.simulate(THETA)
    samples = inference.build_posterior().sample(
        (100,), x=x_o, show_progress_bars=False
    )
    assert samples.shape == (100, 2) and torch.isfinite(samples).all()
    log_lik = inference.build_likelihood().log_prob(
        x_o, theta=THETA, solver="heun", steps=4
    )
    assert torch.isfinite(log_lik).all()
    assert len(selection.best_losses) == 2


def test_patience_keeps_the_best_weights_and_counts_steps():
    model = nn.Linear(1, 1)
    rule = PatienceStopping()
    rule.begin(model, patience=10)
    assert rule.update(torch.tensor([2.0, 4.0]), model, steps=3)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not rule.update(torch.tensor([3.0, 5.0]), model, steps=4)
    assert not rule.update(torch.tensor([3.0, 3.0]), model, steps=5)
    assert rule.best_loss == 3.0 and rule.steps_since_improvement == 9
    assert not rule.should_stop()
    assert not rule.update(torch.tensor([9.0]), model, steps=1)
    assert rule.should_stop()
    returned = rule.estimator(model)
    assert returned is model
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())


def test_a_resumed_call_keeps_its_rule_and_a_new_one_its_count():
    model = nn.Module()
    model.net = nn.Linear(1, 1)
    times = torch.linspace(0.01, 1.0, 40)
    first = stopping_rule_for_call(None, 2, model, times, False, restarted=True)
    assert isinstance(first, NoiseBandStopping) and first.num_bands == 2
    first.best_loss, first.steps_since_improvement = 1.5, 7
    same = stopping_rule_for_call(first, 2, model, times, True, restarted=False)
    assert same is first and same.steps_since_improvement == 7
    other = stopping_rule_for_call(first, 1, model, times, True, restarted=False)
    assert isinstance(other, PatienceStopping) and other is not first
    assert (other.best_loss, other.steps_since_improvement) == (1.5, 7)
    fresh = stopping_rule_for_call(other, 1, model, times, False, restarted=True)
    assert (fresh.best_loss, fresh.steps_since_improvement) == (float("inf"), 0)


@pytest.mark.parametrize(
    "old, new, names",
    [
        (
            "sbi_diffusion.nets.noise_bands",
            "sbi_diffusion.inference.noise_bands",
            ["NoiseBandNet", "NoiseBandSelection"],
        ),
        (
            "sbi_diffusion.training",
            "sbi_diffusion.inference.optimization",
            ["ExponentialMovingAverage", "TrainingDivergedError", "make_optimizer"],
        ),
        (
            "sbi_diffusion.inference.consistency",
            "sbi_diffusion.consistency",
            ["ConsistencyNPE", "ConsistencyPosterior"],
        ),
    ],
)
def test_old_module_paths_warn_and_reexport(old, new, names):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        module = importlib.import_module(old)
    current = importlib.import_module(new)
    assert all(getattr(module, name) is getattr(current, name) for name in names)
