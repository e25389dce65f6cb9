"""Training, sampling and sbi compatibility of DiffusionNPE and FlowMatchingNPE."""

from __future__ import annotations

import io
import warnings

import matplotlib
import pytest
import torch
from sbi.utils.metrics import c2st
from torch.distributions import MultivariateNormal

from sbi_diffusion import DiffusionNPE, DiffusionPosterior, FlowMatchingNPE
from sbi_diffusion.inference.budget import (
    auto_max_num_steps,
    patience_steps,
    resolve_max_num_steps,
)
from sbi_diffusion.inference.optimization import TrainingDivergedError
from sbi_diffusion.nets.sizing import mlp_size

matplotlib.use("Agg")

NUM_SIMULATIONS = 2000
TRAIN_KWARGS = dict(max_num_epochs=40, training_batch_size=128, seed=0)
NET_KWARGS = dict(width=64, depth=2)
C2ST_THRESHOLD = 0.62


def _train(cls, problem, **kwargs):
    torch.manual_seed(0)
    theta = problem.prior.sample((NUM_SIMULATIONS,))
    x = problem.simulate(theta)
    inference = cls(
        problem.prior, net_kwargs=NET_KWARGS, show_progress_bars=False, **kwargs
    )
    inference.append_simulations(theta, x).train(**TRAIN_KWARGS)
    return inference


@pytest.fixture(scope="module")
def diffusion(linear_gaussian):
    return _train(DiffusionNPE, linear_gaussian)


@pytest.fixture(scope="module")
def flow_matching(linear_gaussian):
    return _train(FlowMatchingNPE, linear_gaussian)


@pytest.fixture(scope="module")
def x_o(linear_gaussian):
    torch.manual_seed(1)
    return linear_gaussian.simulate(linear_gaussian.prior.sample((1,)))


def _reference(problem, x_o, num=2000):
    mean, cov = problem.posterior(x_o)
    return MultivariateNormal(mean.float(), cov.float()).sample((num,))


@pytest.mark.parametrize("sampler,steps", [(None, None), ("heun", 10)])
def test_diffusion_posterior_c2st(diffusion, linear_gaussian, x_o, sampler, steps):
    posterior = diffusion.build_posterior()
    samples = posterior.sample(
        (2000,), x=x_o, sampler=sampler, steps=steps, show_progress_bars=False
    )
    assert samples.shape == (2000, 2)
    score = float(c2st(samples, _reference(linear_gaussian, x_o)))
    assert score < C2ST_THRESHOLD, score
    assert posterior.last_nfe > 0


def test_flow_matching_posterior_c2st(flow_matching, linear_gaussian, x_o):
    posterior = flow_matching.build_posterior()
    samples = posterior.sample((2000,), x=x_o, show_progress_bars=False)
    score = float(c2st(samples, _reference(linear_gaussian, x_o)))
    assert score < C2ST_THRESHOLD, score


def test_log_prob_matches_analytic_posterior(diffusion, linear_gaussian, x_o):
    posterior = diffusion.build_posterior()
    mean, cov = linear_gaussian.posterior(x_o)
    true = MultivariateNormal(mean.float(), cov.float())
    theta = true.sample((20,))
    log_p = posterior.log_prob(theta, x=x_o)
    assert log_p.shape == (20,)
    # a small trained model: log densities track the truth (exact agreement of
    # the ODE density with a closed form is tested in test_density.py)
    error = log_p - true.log_prob(theta)
    assert error.abs().mean() < 0.6, error
    assert torch.corrcoef(torch.stack([log_p, true.log_prob(theta)]))[0, 1] > 0.9
    hutchinson = posterior.log_prob(
        theta,
        x=x_o,
        divergence="hutchinson",
        num_probes=16,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(hutchinson, log_p, atol=0.5)


def test_sample_shapes_default_x_and_batched(diffusion, x_o):
    posterior = diffusion.build_posterior()
    posterior.set_default_x(x_o)
    assert posterior.sample((3, 4), show_progress_bars=False).shape == (3, 4, 2)
    xs = torch.cat([x_o, x_o + 1.0])
    batched = posterior.sample_batched((7,), x=xs, show_progress_bars=False)
    assert batched.shape == (7, 2, 2)
    assert posterior.map(num_iter=20, num_init_samples=50).shape == (1, 2)


def test_sampling_is_deterministic_with_generator(diffusion, x_o):
    posterior = diffusion.build_posterior()
    a, b = (
        posterior.sample(
            (50,),
            x=x_o,
            generator=torch.Generator().manual_seed(3),
            show_progress_bars=False,
            sampler="euler_maruyama",
            steps=20,
        )
        for _ in range(2)
    )
    assert torch.equal(a, b)


def test_training_is_deterministic_with_seed(linear_gaussian):
    theta = linear_gaussian.prior.sample((300,))
    x = linear_gaussian.simulate(theta)
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        inference = DiffusionNPE(
            linear_gaussian.prior, net_kwargs=NET_KWARGS, show_progress_bars=False
        )
        inference.append_simulations(theta, x).train(max_num_epochs=2, seed=5)
        losses.append(inference.summary["validation_loss"])
    assert losses[0] == losses[1]


def test_auto_step_bound_scales_with_the_training_set():
    # 130 sqrt(n_train): 3,900 steps at 10^3 simulations (900 for training),
    # 12,333 at 10^4 and 39,000 at 10^5, never below 1,000.
    assert resolve_max_num_steps("auto", 900) == auto_max_num_steps(900) == 3_900
    assert resolve_max_num_steps("auto", 9_000) == 12_333
    assert resolve_max_num_steps("auto", 90_000) == 39_000
    assert resolve_max_num_steps("auto", 10) == 1_000
    assert resolve_max_num_steps(None, 90_000) is None
    assert resolve_max_num_steps(123, 90_000) == 123


def test_net_size_grows_with_the_budget():
    assert mlp_size(1_000, 2) == {"width": 128, "depth": 2}
    assert mlp_size(10_000, 5) == {"width": 128, "depth": 3}
    assert mlp_size(100_000, 10) == {"width": 256, "depth": 4}
    assert mlp_size(10**7, 10) == {"width": 256, "depth": 4}
    # the width is at least four times the parameter dimension (capped at 512)
    assert mlp_size(1_000, 40) == {"width": 256, "depth": 2}
    assert mlp_size(100, 2) == {"width": 128, "depth": 2}
    assert mlp_size(1_000, 1_000) == {"width": 512, "depth": 2}
    with pytest.raises(ValueError, match="positive"):
        mlp_size(0, 2)


def test_trainer_sizes_the_net_unless_told(linear_gaussian):
    theta = linear_gaussian.prior.sample((300,))
    x = linear_gaussian.simulate(theta)
    sized = DiffusionNPE(linear_gaussian.prior, show_progress_bars=False)
    sized.append_simulations(theta, x).train(max_num_epochs=1)
    assert sized._neural_net.net.output_layer.in_features == 128
    assert len(sized._neural_net.net.blocks) == 2
    given = DiffusionNPE(
        linear_gaussian.prior,
        net_kwargs={"width": 32, "depth": 1},
        show_progress_bars=False,
    )
    given.append_simulations(theta, x).train(max_num_epochs=1)
    assert given._neural_net.net.output_layer.in_features == 32
    assert len(given._neural_net.net.blocks) == 1


def test_theta_of_another_dimension_than_the_prior_raises(linear_gaussian):
    theta = linear_gaussian.prior.sample((50,))
    inference = DiffusionNPE(linear_gaussian.prior, show_progress_bars=False)
    with pytest.raises(ValueError, match="the prior draws parameters of shape"):
        inference.append_simulations(theta[:, :1], linear_gaussian.simulate(theta))


@pytest.mark.parametrize("bad", [0, -5, 2.5, "many", True])
def test_bad_step_bound_raises(linear_gaussian, bad):
    theta = linear_gaussian.prior.sample((100,))
    inference = DiffusionNPE(
        linear_gaussian.prior, net_kwargs=NET_KWARGS, show_progress_bars=False
    )
    inference.append_simulations(theta, linear_gaussian.simulate(theta))
    with pytest.raises(ValueError, match="max_num_steps"):
        inference.train(max_num_steps=bad)


def test_step_bound_stops_training(linear_gaussian):
    theta = linear_gaussian.prior.sample((300,))
    inference = DiffusionNPE(
        linear_gaussian.prior, net_kwargs=NET_KWARGS, show_progress_bars=False
    )
    inference.append_simulations(theta, linear_gaussian.simulate(theta))
    # 270 training simulations in batches of 32: 8 steps per epoch, so a bound of
    # 20 steps ends training in the third epoch.
    inference.train(
        training_batch_size=32, max_num_steps=20, stop_after_epochs=100, seed=0
    )
    assert inference.summary["epochs_trained"][-1] == 3


def test_patience_counts_at_least_stop_after_steps():
    # 10^3 simulations (900 for training, batch 256): 3 steps per epoch, so 30
    # epochs are 90 steps and a stop_after_steps of 1000 dominates; at 10^4
    # (35 steps per epoch) 30 epochs are 1050 steps.
    assert patience_steps(30, 1000, 3) == 1000
    assert patience_steps(30, 1000, 35) == 1050
    assert patience_steps(30, 0, 3) == 90


@pytest.mark.parametrize("stop_after_steps, patience", [(0, 8), (24, 24)])
def test_early_stopping_waits_stop_after_steps(
    linear_gaussian, stop_after_steps, patience
):
    theta = linear_gaussian.prior.sample((300,))
    inference = DiffusionNPE(
        linear_gaussian.prior, net_kwargs=NET_KWARGS, show_progress_bars=False
    )
    inference.append_simulations(theta, linear_gaussian.simulate(theta))
    # 8 steps per epoch, a validation after every epoch: a patience of 1 epoch
    # (8 steps) or of 24 steps (3 epochs).
    inference.train(
        training_batch_size=32,
        max_num_steps=4000,
        stop_after_epochs=1,
        stop_after_steps=stop_after_steps,
        warmup_steps=0,
        learning_rate=3e-2,
        validation_interval=1,
        seed=0,
    )
    losses = inference.summary["validation_loss"]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert len(losses) < 500, "training did not stop early"
    assert (len(losses) - 1 - best) * 8 == patience


def test_validation_runs_every_validation_interval_steps(linear_gaussian):
    theta = linear_gaussian.prior.sample((300,))
    inference = DiffusionNPE(
        linear_gaussian.prior, net_kwargs=NET_KWARGS, show_progress_bars=False
    )
    inference.append_simulations(theta, linear_gaussian.simulate(theta))
    # 8 steps per epoch and an interval of 20 steps: validation after epochs
    # 3, 6 and 9, and after the last epoch (10).
    inference.train(
        training_batch_size=32, max_num_epochs=10, validation_interval=20, seed=0
    )
    assert inference.summary["epochs_trained"][-1] == 10
    assert len(inference.summary["validation_loss"]) == 4


def test_early_stop_is_reported(linear_gaussian, capsys):
    theta = linear_gaussian.prior.sample((300,))
    inference = DiffusionNPE(linear_gaussian.prior, net_kwargs=NET_KWARGS)
    inference.append_simulations(theta, linear_gaussian.simulate(theta))
    inference.train(
        training_batch_size=32,
        stop_after_epochs=1,
        stop_after_steps=0,
        learning_rate=3e-2,
        warmup_steps=0,
        validation_interval=1,
        seed=0,
    )
    err = capsys.readouterr()
    assert "stopped early: no improvement in the last 8 steps" in err.out + err.err


def test_bad_patience_raises(linear_gaussian):
    theta = linear_gaussian.prior.sample((100,))
    inference = DiffusionNPE(
        linear_gaussian.prior, net_kwargs=NET_KWARGS, show_progress_bars=False
    )
    inference.append_simulations(theta, linear_gaussian.simulate(theta))
    with pytest.raises(ValueError, match="stop_after_steps"):
        inference.train(stop_after_steps=-1)


def test_save_and_load_posterior(diffusion, x_o, tmp_path):
    posterior = diffusion.build_posterior()
    buffer = io.BytesIO()
    torch.save(posterior, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert isinstance(loaded, DiffusionPosterior)
    g = torch.Generator().manual_seed(0)
    a = posterior.sample((20,), x=x_o, generator=g, show_progress_bars=False)
    g = torch.Generator().manual_seed(0)
    b = loaded.sample((20,), x=x_o, generator=g, show_progress_bars=False)
    assert torch.allclose(a, b)


@pytest.mark.parametrize("trainer", ["diffusion", "flow_matching"])
def test_sbi_vector_field_posterior_accepts_estimator(
    trainer, request, linear_gaussian, x_o
):
    """sbi's own ODE and SDE samplers on our estimators. On the rectified-flow
    path of FlowMatchingNPE (``alpha(1) = 0``) sbi's calls are clamped to
    ``alpha >= 0.01``, as sbi does for its own flow matching; before, its SDE
    sampler returned only NaN."""
    from sbi.inference.posteriors.vector_field_posterior import VectorFieldPosterior

    estimator = request.getfixturevalue(trainer).build_posterior().estimator
    posterior = VectorFieldPosterior(estimator, linear_gaussian.prior, device="cpu")
    for sample_with in ("ode", "sde"):
        samples = (
            posterior.sample(
                (1000,), x=x_o, sample_with=sample_with, show_progress_bars=False
            )
            if sample_with == "ode"
            else posterior.sample((1000,), x=x_o, steps=200, show_progress_bars=False)
        )
        assert samples.shape == (1000, 2)
        score = float(c2st(samples, _reference(linear_gaussian, x_o, 1000)))
        assert score < 0.65, (sample_with, score)
    log_p = posterior.log_prob(samples[:5], x=x_o)
    assert log_p.shape == (5,) and torch.isfinite(log_p).all()


def test_pairplot_and_sbc(diffusion, linear_gaussian, x_o):
    from sbi.analysis import pairplot
    from sbi.diagnostics import check_sbc, run_sbc

    posterior = diffusion.build_posterior()
    samples = posterior.sample((200,), x=x_o, show_progress_bars=False)
    fig, _ = pairplot(samples)
    assert fig is not None
    torch.manual_seed(2)
    thetas = linear_gaussian.prior.sample((30,))
    xs = linear_gaussian.simulate(thetas)
    ranks, dap = run_sbc(
        thetas, xs, posterior, num_posterior_samples=100, show_progress_bar=False
    )
    assert ranks.shape == (30, 2)
    stats = check_sbc(ranks, thetas, dap, num_posterior_samples=100)
    assert stats["ks_pvals"].min() > 1e-3


def test_embedding_net_on_high_dimensional_x():
    from sbi.neural_nets.embedding_nets import FCEmbedding

    torch.manual_seed(0)
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    theta = prior.sample((500,))
    x = torch.cat([theta, theta.sum(1, keepdim=True)], 1).repeat(1, 17)[:, :50]
    x = x + 0.1 * torch.randn_like(x)
    inference = DiffusionNPE(
        prior,
        embedding_net=FCEmbedding(input_dim=50, output_dim=8),
        net_kwargs=NET_KWARGS,
        show_progress_bars=False,
    )
    inference.append_simulations(theta, x).train(max_num_epochs=3)
    posterior = inference.build_posterior()
    samples = posterior.sample((10,), x=x[0], show_progress_bars=False)
    assert samples.shape == (10, 2)
    with pytest.raises(ValueError, match="shape"):
        posterior.sample((10,), x=torch.zeros(49), show_progress_bars=False)


def test_learned_embedding_trains_on_higher_noise_levels():
    from sbi.neural_nets.embedding_nets import FCEmbedding

    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))

    def schedule_of(cls=DiffusionNPE, **kwargs):
        inference = cls(prior, show_progress_bars=False, **kwargs)
        return inference._schedule

    learned = FCEmbedding(input_dim=50, output_dim=8)
    frozen = FCEmbedding(input_dim=50, output_dim=8).requires_grad_(False)
    assert (schedule_of().p_mean, schedule_of().p_std) == (-1.2, 1.2)
    assert schedule_of(embedding_net=frozen).p_mean == -1.2
    wide = schedule_of(embedding_net=learned)
    assert (wide.p_mean, wide.p_std) == (0.5, 1.5)
    chosen = schedule_of(embedding_net=learned, schedule_kwargs={"p_mean": -1.0})
    assert (chosen.p_mean, chosen.p_std) == (-1.0, 1.5)
    other = schedule_of(embedding_net=learned, schedule="cosine")
    assert not hasattr(other, "p_mean")
    flow = schedule_of(FlowMatchingNPE, embedding_net=learned)
    assert not hasattr(flow, "p_mean")
    # 63% of the training noise levels above s = 1, against EDM's 16%
    times = wide.sample_training_times(20_000, torch.Generator().manual_seed(0))
    above = (wide.edm_sigma(times) > 1).float().mean()
    assert abs(float(above) - 0.631) < 0.02


def test_resolved_training_records_the_schedule(linear_gaussian):
    theta = linear_gaussian.prior.sample((200,))
    x = linear_gaussian.simulate(theta)
    inference = DiffusionNPE(
        linear_gaussian.prior, net_kwargs=NET_KWARGS, show_progress_bars=False
    )
    inference.append_simulations(theta, x).train(max_num_epochs=1)
    schedule = inference.resolved_training["schedule"]
    assert schedule.startswith("EDMVPSchedule(") and "p_mean=-1.2" in schedule


def test_empirical_prior_when_prior_is_none(linear_gaussian):
    theta = linear_gaussian.prior.sample((300,))
    x = linear_gaussian.simulate(theta)
    inference = DiffusionNPE(net_kwargs=NET_KWARGS, show_progress_bars=False)
    inference.append_simulations(theta, x).train(max_num_epochs=2)
    samples = inference.build_posterior().sample((5,), x=x[0], show_progress_bars=False)
    assert samples.shape == (5, 2)


# ------------------------------------------------------------------ bad input


def test_mismatched_batch_sizes_raise(linear_gaussian):
    inference = DiffusionNPE(linear_gaussian.prior)
    with pytest.raises(ValueError, match="rows"):
        inference.append_simulations(torch.zeros(10, 2), torch.zeros(9, 2))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"schedule": "linear_foo"}, "Unknown schedule"),
        ({"parameterization": "epsilon2"}, "Unknown parameterization"),
        ({"weighting": "heavy"}, "Unknown weighting"),
        ({"sampler": "rk99"}, "Unknown sampler"),
        ({"net": "resnet9000"}, "Unknown net"),
        ({"condition_dropout": 1.5}, "condition_dropout"),
    ],
)
def test_unknown_names_raise(linear_gaussian, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionNPE(linear_gaussian.prior, **kwargs)


def test_unknown_sampler_at_sample_time(diffusion, x_o):
    with pytest.raises(ValueError, match="Unknown sampler"):
        diffusion.build_posterior().sample((2,), x=x_o, sampler="nope")


def test_option_a_sampler_does_not_take_raises(diffusion, x_o):
    posterior = diffusion.build_posterior()
    with pytest.raises(ValueError, match="'dopri5' does not take this option"):
        posterior.sample((2,), x=x_o, sampler="dopri5", time_shift=0.5)
    samples = posterior.sample((2,), x=x_o, sampler="heun", steps=4, time_shift=0.5)
    assert samples.shape[0] == 2 and bool(torch.isfinite(samples).all())


def test_build_posterior_before_training_raises(linear_gaussian):
    with pytest.raises(ValueError, match="train"):
        DiffusionNPE(linear_gaussian.prior).build_posterior()


def test_train_without_simulations_raises(linear_gaussian):
    with pytest.raises(ValueError, match="append_simulations"):
        DiffusionNPE(linear_gaussian.prior).train()


def test_wrong_observation_shape_raises(diffusion):
    posterior = diffusion.build_posterior()
    with pytest.raises(ValueError, match="shape"):
        posterior.sample((2,), x=torch.zeros(3), show_progress_bars=False)
    with pytest.raises(ValueError, match="set_default_x"):
        posterior.sample((2,), show_progress_bars=False)


def test_invalid_simulations_are_excluded_with_warning(linear_gaussian):
    theta = linear_gaussian.prior.sample((100,))
    x = linear_gaussian.simulate(theta)
    x[:5, 0] = float("nan")
    x[5, 1] = float("inf")
    inference = DiffusionNPE(linear_gaussian.prior)
    with pytest.warns(UserWarning, match="6 simulations") as record:
        inference.append_simulations(theta, x)
    assert record[0].filename == __file__  # the warning names the caller's line
    assert inference.get_simulations()[0].shape[0] == 94
    with pytest.raises(ValueError, match="NaN"):
        DiffusionNPE(linear_gaussian.prior).append_simulations(
            theta, x, exclude_invalid_x=False
        )


def test_nan_loss_stops_training(linear_gaussian):
    theta = linear_gaussian.prior.sample((200,))
    x = linear_gaussian.simulate(theta)
    inference = DiffusionNPE(
        linear_gaussian.prior, net_kwargs=NET_KWARGS, show_progress_bars=False
    )
    inference.append_simulations(theta, x)
    inference._initialize_neural_network(True, 0)
    with torch.no_grad():
        inference._neural_net.net.output_layer.bias.fill_(float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TrainingDivergedError, match="loss became nan"):
            inference.train(max_num_epochs=2, resume_training=True)


def test_sampler_that_returns_only_nan_raises_at_once(diffusion, x_o, monkeypatch):
    """A diverging sampler (every sample NaN) is reported after one round
    instead of being redrawn round after round."""
    posterior = diffusion.build_posterior()
    calls = []

    def diverging(denoise, num, sampler, options, generator, show_progress_bars):
        calls.append(num)
        return torch.full((num, 2), float("nan")), 10.0

    monkeypatch.setattr(posterior, "_run_sampler", diverging)
    with pytest.raises(RuntimeError, match="are NaN or inf: the sampler"):
        posterior.sample((30,), x=x_o, show_progress_bars=False)
    assert calls == [30]
