"""Consistency models: boundary condition, training, distillation, sampling, errors."""

from __future__ import annotations

import os

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

from sbi_diffusion import ConsistencyNPE, DiffusionNPE
from sbi_diffusion.consistency import (
    ConsistencyModel,
    ConsistencyPosterior,
    improved_num_scales,
    lognormal_interval_probabilities,
    pseudo_huber,
    time_for_scaled_sigma,
)
from sbi_diffusion.nets import ResidualMLP
from sbi_diffusion.path.gaussian import GaussianDenoiser
from sbi_diffusion.path.schedules import EDMSchedule, EDMVPSchedule, get_schedule
from sbi_diffusion.samplers import get_sampler

NUM_SIMULATIONS = 3000
NET_KWARGS = dict(width=64, depth=2)
NUM_SAMPLES = 20_000
# Tolerances on the analytic posterior (posterior std is ~0.28 and ~0.49):
MEAN_TOL = 0.1  # max abs error of the mean
COV_TOL = 0.05  # max abs error of the covariance entries
ONE_STEP_MEAN_TOL = 0.15
ONE_STEP_COV_TOL = 0.08
# SBI_DIFFUSION_FAST_TESTS=1: tiny training budgets, accuracy tests skipped.
FAST = os.environ.get("SBI_DIFFUSION_FAST_TESTS", "0") == "1"
accuracy = pytest.mark.skipif(FAST, reason="SBI_DIFFUSION_FAST_TESTS=1")


@pytest.fixture(scope="module")
def data(linear_gaussian):
    torch.manual_seed(0)
    theta = linear_gaussian.prior.sample((NUM_SIMULATIONS,))
    return theta, linear_gaussian.simulate(theta)


@pytest.fixture(scope="module")
def x_o(linear_gaussian):
    torch.manual_seed(1)
    return linear_gaussian.simulate(linear_gaussian.prior.sample((1,)))


@pytest.fixture(scope="module")
def trained(linear_gaussian, data):
    torch.manual_seed(0)
    inference = ConsistencyNPE(
        linear_gaussian.prior, net_kwargs=NET_KWARGS, show_progress_bars=False
    )
    inference.append_simulations(*data).train(
        max_num_epochs=2 if FAST else 80,
        training_batch_size=128,
        final_num_scales=160,
        seed=0,
    )
    return inference


def _check_moments(samples: Tensor, mean: Tensor, cov: Tensor, mean_tol, cov_tol):
    err_mean = (samples.mean(0).double() - mean).abs().max().item()
    err_cov = (torch.cov(samples.T).double() - cov).abs().max().item()
    assert err_mean < mean_tol, (err_mean, samples.mean(0), mean)
    assert err_cov < cov_tol, (err_cov, torch.cov(samples.T), cov)


# ------------------------------------------------------------ the consistency function


def _random_model(dtype=torch.float32) -> ConsistencyModel:
    torch.manual_seed(3)
    net = ResidualMLP(3, 2, width=16, depth=2)
    nn.init.normal_(net.output_layer.weight)  # a non-trivial, untrained F
    nn.init.normal_(net.output_layer.bias)
    model = ConsistencyModel(
        net, EDMSchedule(), torch.Size([3]), torch.Size([2]), sigma_data=0.7
    )
    return model.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_boundary_condition_holds_exactly(dtype):
    model = _random_model(dtype)
    z = 5 * torch.randn(64, 3, dtype=dtype)
    x = torch.randn(64, 2, dtype=dtype)
    f = model.bind(x)
    assert torch.equal(f(z, torch.tensor(0.0, dtype=dtype)), z)
    assert not torch.allclose(f(z, torch.tensor(0.3, dtype=dtype)), z)


def test_curriculum_and_time_sampling():
    total = 1000
    values = [improved_num_scales(k, total, 10, 1280) for k in range(0, total, 10)]
    assert values[0] == 11 and values[-1] == 1281
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    sigmas = EDMSchedule().edm_sigma(torch.linspace(0, 1, 11))
    p = lognormal_interval_probabilities(sigmas, -1.1, 2.0)
    assert p.shape == (10,) and torch.isclose(p.sum(), torch.tensor(1.0))
    d = pseudo_huber(torch.zeros(2, 3), torch.ones(2, 3), c=0.1)
    assert torch.allclose(d, torch.full((2,), 3.01**0.5 - 0.1))
    with pytest.raises(ValueError, match="initial_num_scales"):
        improved_num_scales(0, 10, 20, 10)
    s = torch.tensor([0.05, 0.5, 3.0])
    for schedule in (EDMVPSchedule(), get_schedule("vp"), get_schedule("cosine")):
        t = time_for_scaled_sigma(schedule, s)
        assert torch.allclose(schedule.scaled_sigma(t), s, rtol=1e-3)


# ------------------------------------------------------------ consistency training


@accuracy
def test_trained_samples_match_analytic_posterior(trained, linear_gaussian, x_o):
    mean, cov = linear_gaussian.posterior(x_o)
    posterior = trained.build_posterior()
    assert isinstance(posterior, ConsistencyPosterior)
    one = posterior.sample((NUM_SAMPLES,), x=x_o, steps=1, show_progress_bars=False)
    assert posterior.last_nfe == 1
    _check_moments(one, mean, cov, ONE_STEP_MEAN_TOL, ONE_STEP_COV_TOL)
    two = posterior.sample((NUM_SAMPLES,), x=x_o, steps=2, show_progress_bars=False)
    assert posterior.last_nfe == 2
    _check_moments(two, mean, cov, MEAN_TOL, COV_TOL)
    chosen = posterior.sample(
        (NUM_SAMPLES,), x=x_o, times=[0.6, 0.4], show_progress_bars=False
    )
    assert posterior.last_nfe == 3
    _check_moments(chosen, mean, cov, MEAN_TOL, COV_TOL)


def test_posterior_interface(trained, linear_gaussian, x_o):
    posterior = trained.build_posterior(steps=1)
    posterior.set_default_x(x_o)
    assert posterior.sample((5,), show_progress_bars=False).shape == (5, 2)
    xs = torch.cat([x_o, x_o + 0.5])
    batched = posterior.sample_batched((7,), x=xs, show_progress_bars=False)
    assert batched.shape == (7, 2, 2)
    g = torch.Generator().manual_seed(0)
    a = posterior.sample((4,), generator=g, steps=2, show_progress_bars=False)
    g = torch.Generator().manual_seed(0)
    b = posterior.sample((4,), generator=g, steps=2, show_progress_bars=False)
    assert torch.equal(a, b)
    mean, _ = linear_gaussian.posterior(x_o)
    map_estimate = posterior.map(num_init_samples=2000)
    assert map_estimate.shape == (1, 2)
    if not FAST:
        assert (map_estimate[0].double() - mean).abs().max() < 0.2


@accuracy
def test_rejection_outside_prior_support(linear_gaussian, trained, x_o):
    from sbi.utils import BoxUniform

    box = BoxUniform(torch.tensor([1.2, -5.0]), torch.tensor([5.0, 5.0]))
    posterior = trained.build_posterior(prior=box)
    samples = posterior.sample((500,), x=x_o, show_progress_bars=False)
    assert (samples[:, 0] > 1.2).all()
    assert posterior.last_nfe == 2  # per drawn sample, as for DiffusionPosterior


def test_embedding_net(linear_gaussian, data):
    embedding = nn.Sequential(nn.Linear(2, 8), nn.Tanh())
    inference = ConsistencyNPE(
        linear_gaussian.prior,
        net_kwargs=dict(width=16, depth=1),
        embedding_net=embedding,
        show_progress_bars=False,
    )
    inference.append_simulations(*data).train(max_num_epochs=1, seed=0)
    samples = inference.build_posterior().sample(
        (10,), x=data[1][:1], show_progress_bars=False
    )
    assert samples.shape == (10, 2) and torch.isfinite(samples).all()


@pytest.mark.gpu
def test_cuda(linear_gaussian, data):
    prior = MultivariateNormal(
        linear_gaussian.prior_mean.cuda(), linear_gaussian.prior_cov.cuda()
    )
    inference = ConsistencyNPE(
        prior,
        net_kwargs=dict(width=16, depth=1),
        device="cuda",
        show_progress_bars=False,
    )
    inference.append_simulations(*data).train(max_num_epochs=1, seed=0)
    samples = inference.build_posterior().sample(
        (10,), x=data[1][:1], steps=2, show_progress_bars=False
    )
    assert samples.device.type == "cuda" and samples.shape == (10, 2)


# ------------------------------------------------------------------ distillation


class AnalyticTeacher(nn.Module):
    """Exact posterior denoiser of the linear-Gaussian problem, shaped like a
    trained diffusion estimator (identity z-scoring, ``bind(x)`` per row)."""

    def __init__(self, problem, schedule):
        super().__init__()
        self.problem = problem
        self.schedule = schedule
        self.register_buffer("theta_shift", torch.zeros(1, 2))
        self.register_buffer("theta_scale", torch.ones(1, 2))

    def bind(self, x: Tensor):
        problem, schedule = self.problem, self.schedule
        means = torch.stack([problem.posterior(row)[0] for row in x])
        cov = problem.posterior(x[:1])[1]

        class Bound:
            def __init__(self):
                self.schedule = schedule

            def __call__(self, z: Tensor, t: Tensor) -> Tensor:
                t = torch.as_tensor(t, dtype=z.dtype).expand(z.shape[0])
                out = torch.empty_like(z)
                for i in range(z.shape[0]):
                    exact = GaussianDenoiser(schedule, means[i], cov)
                    out[i] = exact(z[i : i + 1], t[i : i + 1])[0]
                return out

        return Bound()


class FastAnalyticTeacher(AnalyticTeacher):
    """Vectorised version of :class:`AnalyticTeacher` (same result)."""

    def bind(self, x: Tensor):
        problem, schedule = self.problem, self.schedule
        f64 = torch.float64
        m0, s0 = problem.prior_mean.to(f64), problem.prior_cov.to(f64)
        a, noise = problem.matrix.to(f64), problem.noise_cov.to(f64)
        li = torch.linalg.inv(noise)
        cov = torch.linalg.inv(torch.linalg.inv(s0) + a.T @ li @ a)
        means = (
            (torch.linalg.inv(s0) @ m0)[None]
            + (x.to(f64) - problem.shift) @ (a.T @ li).T
        ) @ cov.T

        class Bound:
            def __init__(self):
                self.schedule = schedule

            def __call__(self, z: Tensor, t: Tensor) -> Tensor:
                t = torch.as_tensor(t, dtype=f64).expand(z.shape[0])
                alpha = schedule.alpha(t)[:, None, None]
                sigma = schedule.sigma(t)[:, None, None]
                eye = torch.eye(2, dtype=f64)
                gain = alpha * cov @ torch.linalg.inv(alpha**2 * cov + sigma**2 * eye)
                resid = z.double() - alpha[:, :, 0] * means
                return (means + (gain @ resid[:, :, None])[:, :, 0]).to(z.dtype)

        return Bound()


def test_fast_teacher_matches_gaussian_denoiser(linear_gaussian, data):
    schedule = EDMVPSchedule()
    x = data[1][:5]
    z, t = torch.randn(5, 2), torch.rand(5)
    slow = AnalyticTeacher(linear_gaussian, schedule).bind(x)(z, t)
    fast = FastAnalyticTeacher(linear_gaussian, schedule).bind(x)(z, t)
    assert torch.allclose(slow, fast, atol=1e-5)


@accuracy
def test_distillation_reproduces_teacher(linear_gaussian, data, x_o):
    teacher = FastAnalyticTeacher(linear_gaussian, EDMVPSchedule())
    inference = ConsistencyNPE(
        linear_gaussian.prior, net_kwargs=NET_KWARGS, show_progress_bars=False
    )
    inference.append_simulations(*data)
    torch.manual_seed(0)
    inference.distill(teacher, max_num_epochs=40, training_batch_size=128, seed=0)
    mean, cov = linear_gaussian.posterior(x_o)
    posterior = inference.build_posterior()
    for steps in (1, 2):
        samples = posterior.sample(
            (NUM_SAMPLES,), x=x_o, steps=steps, show_progress_bars=False
        )
        _check_moments(samples, mean, cov, MEAN_TOL, COV_TOL)
    assert inference._trained_estimator.teacher is None
    assert posterior.estimator.teacher is None


def test_distill_from_diffusion_npe_runs(linear_gaussian, data):
    diffusion = DiffusionNPE(
        linear_gaussian.prior,
        net_kwargs=dict(width=16, depth=1),
        show_progress_bars=False,
    )
    diffusion.append_simulations(data[0][:500], data[1][:500]).train(
        max_num_epochs=1, seed=0
    )
    inference = ConsistencyNPE(
        linear_gaussian.prior,
        net_kwargs=dict(width=16, depth=1),
        show_progress_bars=False,
    )
    inference.distill(diffusion, max_num_epochs=1, num_scales=4, seed=0)
    model = inference._trained_estimator
    assert torch.equal(model.theta_shift, diffusion._trained_estimator.theta_shift)
    samples = inference.build_posterior().sample(
        (10,), x=data[1][:1], show_progress_bars=False
    )
    assert samples.shape == (10, 2)


# ------------------------------------------------------------------------ errors


def test_log_prob_raises(trained, x_o):
    posterior = trained.build_posterior()
    with pytest.raises(NotImplementedError, match="DiffusionNPE"):
        posterior.log_prob(torch.zeros(3, 2), x=x_o)


def test_error_cases(trained, linear_gaussian, data, x_o):
    posterior = trained.build_posterior()
    with pytest.raises(ValueError, match="consistency' sampler"):
        posterior.sample((5,), x=x_o, sampler="heun", show_progress_bars=False)
    with pytest.raises(ValueError, match="i.i.d. trials|one observation"):
        posterior.sample((5,), x=torch.cat([x_o, x_o]), show_progress_bars=False)
    with pytest.raises(ValueError, match="Unknown sampling options"):
        posterior.sample((5,), x=x_o, eta=1.0, show_progress_bars=False)
    with pytest.raises(ValueError, match="positive integer"):
        posterior.sample((5,), x=x_o, steps=0, show_progress_bars=False)
    with pytest.raises(ValueError, match="strictly decreasing"):
        posterior.sample((5,), x=x_o, times=[0.2, 0.5], show_progress_bars=False)
    with pytest.raises(ValueError, match="does not match"):
        posterior.sample((5,), x=x_o, steps=4, times=[0.5], show_progress_bars=False)
    with pytest.raises(ValueError, match="Unknown options"):
        get_sampler("consistency")(posterior.denoiser_for(x_o), torch.zeros(2, 2), k=1)
    with pytest.raises(ValueError, match="EDM variance-exploding"):
        ConsistencyNPE(linear_gaussian.prior, schedule="vp")
    with pytest.raises(ValueError, match="EDM variance-exploding"):
        ConsistencyNPE(linear_gaussian.prior, schedule=EDMVPSchedule())
    with pytest.raises(TypeError):
        ConsistencyNPE(linear_gaussian.prior, parameterization="eps")
    inference = ConsistencyNPE(linear_gaussian.prior, show_progress_bars=False)
    with pytest.raises(ValueError, match="No simulations"):
        inference.train()
    inference.append_simulations(*data)
    with pytest.raises(ValueError, match="max_num_epochs"):
        inference.train(max_num_epochs=None)
    with pytest.raises(ValueError, match="Unknown train"):
        inference.train(max_num_epochs=1, bogus=1)
    with pytest.raises(ValueError, match="not trained"):
        inference.distill(DiffusionNPE(linear_gaussian.prior))
    with pytest.raises(ValueError, match="lacks"):
        inference.distill(object())
    with pytest.raises(ValueError, match="not a ConsistencyNPE"):
        inference.distill(trained)
    with pytest.raises(ValueError, match="steps= or times="):
        trained.build_posterior(sampler="heun")
    with pytest.raises(ValueError, match="ConsistencyModel"):
        ConsistencyPosterior(DiffusionNPE, linear_gaussian.prior)
