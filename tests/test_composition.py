"""I.i.d. composition: closed forms with exact single-trial denoisers, a trained
model, and bad input."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import LinearGaussian
from sbi.utils import BoxUniform
from torch import Tensor
from torch.distributions import Gamma, MultivariateNormal

from sbi_diffusion import DiffusionNPE, FlowMatchingNPE
from sbi_diffusion.composition import (
    BoxDiffusedPrior,
    GaussianDiffusedPrior,
    IIDComposedDenoiser,
    NetworkDiffusedPrior,
    diffused_prior,
    unbiased_precision_factor,
)
from sbi_diffusion.density import ode_log_prob
from sbi_diffusion.path.schedules import get_schedule
from sbi_diffusion.path.vector_field import as_time
from sbi_diffusion.samplers import (
    get_sampler,
    initial_noise,
    runs_deterministically,
    sampler_takes_option,
)

torch.set_num_threads(1)

# ---------------------------------------------- exact single-trial denoisers


class ExactSingleTrialEstimator:
    r"""``x_hat(z, t | x)`` of ``p(theta | x)`` for ``theta ~ N(m0, S0)``,
    ``x ~ N(A theta + b, L)``, in the standardised space ``z = (theta - shift) /
    scale``. The embedding of ``x`` is ``x`` itself; the null embedding (NaN)
    gives the prior's denoiser.
    """

    def __init__(self, problem, schedule, condition_dropout: float = 0.0):
        f64 = torch.float64
        self.schedule = schedule
        self.theta_dim = problem.prior_mean.shape[0]
        self.condition_shape = torch.Size([problem.matrix.shape[0]])
        self.condition_dropout = condition_dropout
        self.shift = problem.prior_mean.clone() + 0.1
        self.scale = problem.prior_cov.diagonal().sqrt() * 1.1
        self.theta_shift, self.theta_scale = self.shift[None], self.scale[None]
        s0_inv = torch.linalg.inv(problem.prior_cov.to(f64))
        a = problem.matrix.to(f64)
        l_inv = torch.linalg.inv(problem.noise_cov.to(f64))
        self.post_cov = torch.linalg.inv(s0_inv + a.T @ l_inv @ a)
        self.gain = self.post_cov @ a.T @ l_inv
        self.offset = self.post_cov @ s0_inv @ problem.prior_mean.to(f64)
        self.b = problem.shift.to(f64)
        sc = self.scale.to(f64)
        outer = sc[:, None] * sc[None]
        self.post_cov_z = self.post_cov / outer
        self.prior_cov_z = problem.prior_cov.to(f64) / outer
        self.prior_mean_z = (problem.prior_mean.to(f64) - self.shift) / sc

    def embed_condition(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).float()

    def null_condition(self, batch: int) -> Tensor:
        if self.condition_dropout <= 0:
            raise ValueError("no unconditional score: train with condition dropout")
        return torch.full((batch, self.condition_shape[0]), float("nan"))

    def to_z(self, theta: Tensor) -> Tensor:
        return (theta - self.shift) / self.scale

    def from_z(self, z: Tensor) -> Tensor:
        return self.shift + self.scale * z

    def denoise_embedded(self, z: Tensor, emb: Tensor, t) -> Tensor:
        f64 = torch.float64
        t = torch.as_tensor(t, dtype=f64)
        t = t.expand(z.shape[0]) if t.dim() == 0 else t.double()
        emb = emb.expand(z.shape[0], -1).double()
        null = torch.isnan(emb).any(-1)
        x = torch.nan_to_num(emb)
        mean = ((x - self.b) @ self.gain.T + self.offset - self.shift) / self.scale
        mean = torch.where(null[:, None], self.prior_mean_z, mean)
        alpha = self.schedule.alpha(t)[:, None, None].double()
        sigma = self.schedule.sigma(t)[:, None, None].double()
        cov = torch.where(null[:, None, None], self.prior_cov_z, self.post_cov_z)
        eye = torch.eye(self.theta_dim, dtype=f64)
        marginal = alpha**2 * cov + sigma**2 * eye
        resid = z.double() - alpha[:, :, 0] * mean
        gain = alpha * cov @ torch.linalg.solve(marginal, resid[:, :, None])
        return (mean + gain[:, :, 0]).to(z.dtype)


class Bound:
    """A conditioned exact denoiser (like ``ConditionedDenoiser``)."""

    def __init__(self, estimator: ExactSingleTrialEstimator, x: Tensor):
        self.denoiser = estimator
        self.embedding = estimator.embed_condition(x.reshape(1, -1))
        self.schedule = estimator.schedule

    def __call__(self, z: Tensor, t: Tensor) -> Tensor:
        return self.denoiser.denoise_embedded(z, self.embedding, t)


def moment_errors(samples: Tensor, mean: Tensor, cov: Tensor) -> tuple[float, Tensor]:
    """Largest |mean error| in posterior standard deviations, and the ratios of
    sample to true variances."""
    samples = samples.double()
    std = cov.diagonal().sqrt()
    mean_err = float(((samples.mean(0) - mean).abs() / std).max())
    var_ratio = torch.cov(samples.T).diagonal() / cov.diagonal()
    return mean_err, var_ratio


def _trials(problem, num_trials: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    theta = problem.prior.sample((1,))
    return problem.simulate(theta.expand(num_trials, -1))


def _sample(denoise, num, sampler="dopri5", seed=0, **options):
    g = torch.Generator().manual_seed(seed)
    noise = initial_noise(denoise.schedule, (num, 2), generator=g)
    return get_sampler(sampler)(denoise, noise, generator=g, **options)


def _compose(problem, schedule, num_trials, method, **kwargs):
    est = ExactSingleTrialEstimator(problem, get_schedule(schedule))
    x = _trials(problem, num_trials)
    if method == "gauss":
        kwargs.setdefault("trial_covariances", est.post_cov_z.float())
    prior = diffused_prior(est, problem.prior)
    return est, x, IIDComposedDenoiser(est, x, prior, method=method, **kwargs)


@pytest.mark.parametrize(
    "method,num_trials,num",
    [
        ("gauss", 1, 1000),
        ("gauss", 10, 1000),
        ("gauss", 100, 1000),
        ("jac", 1, 1000),
        ("jac", 10, 1000),
        ("jac", 100, 300),
    ],
)
def test_gauss_and_jac_recover_iid_posterior(linear_gaussian, method, num_trials, num):
    est, x, denoise = _compose(linear_gaussian, "edm_vp", num_trials, method)
    result = _sample(denoise, num)
    mean, cov = linear_gaussian.posterior(x)
    mean_err, var_ratio = moment_errors(est.from_z(result.samples), mean, cov)
    assert mean_err < 0.2
    assert ((var_ratio > 0.75) & (var_ratio < 1.3)).all(), var_ratio


@pytest.mark.parametrize(
    "sampler,options",
    [
        ("heun", {"steps": 60}),
        ("ddim", {"steps": 100}),
        ("euler_maruyama", {"steps": 200}),
        ("adaptive_sde", {}),
    ],
)
def test_gauss_with_core_samplers(linear_gaussian, sampler, options):
    est, x, denoise = _compose(linear_gaussian, "edm_vp", 10, "gauss")
    result = _sample(denoise, 800, sampler, **options)
    mean, cov = linear_gaussian.posterior(x)
    mean_err, var_ratio = moment_errors(est.from_z(result.samples), mean, cov)
    assert mean_err < 0.25
    assert ((var_ratio > 0.7) & (var_ratio < 1.4)).all(), var_ratio


def test_gauss_on_rectified_flow_path(linear_gaussian):
    est, x, denoise = _compose(linear_gaussian, "rectified_flow", 100, "gauss")
    result = _sample(denoise, 800)
    mean, cov = linear_gaussian.posterior(x)
    mean_err, var_ratio = moment_errors(est.from_z(result.samples), mean, cov)
    assert mean_err < 0.2
    assert ((var_ratio > 0.75) & (var_ratio < 1.3)).all(), var_ratio


def _compose_estimated(problem, num_trials: int, covariance_samples: int):
    """GAUSS with the single-trial covariances estimated from samples."""
    return _compose(
        problem,
        "edm_vp",
        num_trials,
        "gauss",
        trial_covariances=None,
        covariance_samples=covariance_samples,
        generator=torch.Generator().manual_seed(0),
    )


def test_gauss_with_estimated_covariances(linear_gaussian):
    est, x, denoise = _compose_estimated(linear_gaussian, 10, 300)
    ratio = denoise.trial_precisions[0] @ est.post_cov_z.float()
    assert torch.allclose(ratio, torch.eye(2), atol=0.3)
    result = _sample(denoise, 800)
    mean, cov = linear_gaussian.posterior(x)
    mean_err, var_ratio = moment_errors(est.from_z(result.samples), mean, cov)
    assert mean_err < 0.25
    assert ((var_ratio > 0.7) & (var_ratio < 1.4)).all(), var_ratio


@pytest.mark.parametrize("schedule", ["edm_vp", "rectified_flow"])
def test_noise_floor_is_exact_for_gaussian_trials(linear_gaussian, schedule):
    """Below the floor each trial's estimate comes from its denoiser at the
    floor through a Gaussian of the trial's covariance: for Gaussian trial
    posteriors that is the denoiser itself, at every noise level."""
    est, x, plain = _compose(linear_gaussian, schedule, 30, "gauss")
    _, _, floored = _compose(linear_gaussian, schedule, 30, "gauss", noise_floor=1.0)
    t_floor = floored._floor[0]
    t_min = float(floored.schedule.t_min)
    z = torch.randn(64, 2)
    for t in (t_min, 0.5 * (t_min + t_floor), t_floor, 0.5 * (t_floor + 1.0)):
        t = torch.full((64,), t)
        torch.testing.assert_close(floored(z, t), plain(z, t), atol=2e-4, rtol=2e-4)
    assert floored._floor_inputs(z, torch.full((64,), t_min))[2].all()
    assert floored._floor_inputs(z, torch.full((64,), t_floor + 0.05))[2] is None
    result = _sample(floored, 800)
    mean, cov = linear_gaussian.posterior(x)
    mean_err, var_ratio = moment_errors(est.from_z(result.samples), mean, cov)
    assert mean_err < 0.2
    assert ((var_ratio > 0.75) & (var_ratio < 1.3)).all(), var_ratio


@pytest.mark.parametrize("method,floor", [("factorized", 1.0), ("gauss", 0.0)])
def test_noise_floor_bad_input(linear_gaussian, method, floor):
    with pytest.raises(ValueError, match="noise_floor"):
        _compose(linear_gaussian, "edm_vp", 3, method, noise_floor=floor)


def test_unbiased_precision_factor():
    """The inverse of a sample covariance times the factor averages to the
    precision (inverse-Wishart mean); too few samples is an error."""
    g = torch.Generator().manual_seed(0)
    dim, n, reps = 4, 12, 4000
    cov = torch.diag(torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64))
    samples = torch.randn(reps, n, dim, generator=g, dtype=torch.float64)
    samples = samples * cov.diagonal().sqrt()
    centred = samples - samples.mean(1, keepdim=True)
    sample_cov = centred.transpose(1, 2) @ centred / (n - 1)
    mean_inverse = torch.linalg.inv(sample_cov).mean(0)
    factor = unbiased_precision_factor(n, dim)
    assert factor == pytest.approx((n - dim - 2) / (n - 1))
    ratio = (factor * mean_inverse @ cov).diagonal()
    assert torch.allclose(ratio, torch.ones(dim, dtype=torch.float64), atol=0.05)
    assert (mean_inverse @ cov).diagonal().min() > 1.4  # uncorrected: biased
    with pytest.raises(ValueError, match="covariance_samples"):
        unbiased_precision_factor(6, dim)


def test_gauss_with_estimated_covariances_many_trials():
    """sbibm's gaussian_linear (d = 10) at 100 trials with exact single-trial
    denoisers and covariances estimated from 200 samples per trial: the
    composition multiplies a bias of the precisions about twofold, so they must
    be debiased (uncorrected, the variances came out 25% too wide)."""
    problem = LinearGaussian(10, 10)
    problem.prior_mean, problem.prior_cov = torch.zeros(10), 0.1 * torch.eye(10)
    problem.matrix, problem.shift = torch.eye(10), torch.zeros(10)
    problem.noise_cov = 0.1 * torch.eye(10)
    problem.prior = MultivariateNormal(problem.prior_mean, problem.prior_cov)
    est, x, denoise = _compose_estimated(problem, 100, 200)
    g = torch.Generator().manual_seed(1)
    noise = initial_noise(denoise.schedule, (600, 10), generator=g)
    result = get_sampler("dopri5")(denoise, noise, generator=g)
    mean, cov = problem.posterior(x)
    mean_err, var_ratio = moment_errors(est.from_z(result.samples), mean, cov)
    assert mean_err < 0.45
    assert 0.9 < var_ratio.mean() < 1.1, var_ratio
    assert ((var_ratio > 0.75) & (var_ratio < 1.3)).all(), var_ratio


@pytest.mark.parametrize("method", ["factorized", "factorized_bridge"])
@pytest.mark.parametrize("num_trials", [1, 10])
def test_factorized_with_langevin_corrector(linear_gaussian, method, num_trials):
    """The factorised score is not the diffused N-trial score; with annealed
    Langevin correction it is close for a few trials (looser tolerances)."""
    est, x, denoise = _compose(linear_gaussian, "edm_vp", num_trials, method)
    result = _sample(denoise, 800, "euler_maruyama", steps=200, corrector="langevin")
    mean, cov = linear_gaussian.posterior(x)
    mean_err, var_ratio = moment_errors(est.from_z(result.samples), mean, cov)
    assert mean_err < 0.4
    assert ((var_ratio > 0.5) & (var_ratio < 1.5)).all(), var_ratio


def test_network_prior_score_matches_analytic(linear_gaussian):
    est = ExactSingleTrialEstimator(
        linear_gaussian, get_schedule("edm_vp"), condition_dropout=0.1
    )
    network = diffused_prior(est, linear_gaussian.prior, "network")
    analytic = diffused_prior(est, linear_gaussian.prior, "analytic")
    assert isinstance(network, NetworkDiffusedPrior)
    assert isinstance(analytic, GaussianDiffusedPrior)
    z, t = torch.randn(50, 2), torch.rand(50) * 0.9 + 0.05
    assert torch.allclose(network(z, t), analytic(z, t), atol=1e-4)
    x = _trials(linear_gaussian, 10)
    denoise = IIDComposedDenoiser(
        est, x, network, "gauss", trial_covariances=est.post_cov_z.float()
    )
    assert denoise.evaluations_per_call == 11
    mean, cov = linear_gaussian.posterior(x)
    samples = est.from_z(_sample(denoise, 800).samples)
    mean_err, var_ratio = moment_errors(samples, mean, cov)
    assert mean_err < 0.2
    assert ((var_ratio > 0.75) & (var_ratio < 1.3)).all(), var_ratio


def test_box_prior_denoiser_matches_quadrature():
    schedule = get_schedule("edm_vp")
    est = ExactSingleTrialEstimator.__new__(ExactSingleTrialEstimator)
    est.schedule, est.theta_dim = schedule, 2
    est.theta_shift = torch.tensor([[0.5, 0.0]])
    est.theta_scale = torch.tensor([[0.3, 2.0]])
    prior = diffused_prior(est, BoxUniform(torch.zeros(2), torch.ones(2)))
    assert isinstance(prior, BoxDiffusedPrior)
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    for t in (0.05, 0.3, 0.6, 0.95):
        tt = torch.tensor([t])
        alpha, sigma = schedule.alpha(tt).double(), schedule.sigma(tt).double()
        z = torch.tensor([[0.3, -0.8], [2.5, 0.1]])
        x_hat = prior(z, torch.full((2,), t)).double()
        precision = prior.precision(z, torch.full((2,), t)).double()
        for j in range(2):
            theta_z = (grid - est.theta_shift[0, j]) / est.theta_scale[0, j]
            log_w = -0.5 * ((z[:, j : j + 1] - alpha * theta_z) / sigma) ** 2
            w = torch.softmax(log_w, dim=1)
            m = (w * theta_z).sum(1)
            v = (w * theta_z**2).sum(1) - m**2
            assert torch.allclose(x_hat[:, j], m, rtol=1e-3, atol=1e-3)
            assert torch.allclose(1 / precision[:, j, j], v, rtol=2e-2, atol=1e-5)


def test_prior_score_choices(linear_gaussian):
    est = ExactSingleTrialEstimator(linear_gaussian, get_schedule("edm_vp"))
    gamma = torch.distributions.Independent(Gamma(torch.ones(2) * 2, torch.ones(2)), 1)
    approx = diffused_prior(est, gamma)  # no dropout: moment-matched Gaussian
    assert "Gaussian approximation" in approx.description
    with pytest.raises(ValueError, match="analytic"):
        diffused_prior(est, gamma, "analytic")
    with pytest.raises(ValueError, match="condition dropout"):
        diffused_prior(est, gamma, "network")
    with pytest.raises(ValueError, match="prior_score"):
        diffused_prior(est, gamma, "exact")


def test_composed_ode_log_prob_is_exact(linear_gaussian):
    est, x, denoise = _compose(linear_gaussian, "edm_vp", 10, "gauss")
    mean, cov = linear_gaussian.posterior(x)
    theta = MultivariateNormal(mean.float(), cov.float()).sample((5,))
    log_p = ode_log_prob(denoise, est.to_z(theta)) - torch.log(est.scale).sum()
    expected = MultivariateNormal(mean, cov).log_prob(theta.double())
    assert torch.allclose(log_p.double(), expected, atol=0.05)


def test_bad_input(linear_gaussian):
    est = ExactSingleTrialEstimator(linear_gaussian, get_schedule("edm_vp"))
    prior = diffused_prior(est, linear_gaussian.prior)
    x = _trials(linear_gaussian, 5)
    with pytest.raises(ValueError, match="iid_method"):
        IIDComposedDenoiser(est, x, prior, method="sum")
    with pytest.raises(ValueError, match="trial_covariances"):
        IIDComposedDenoiser(est, x, prior, "gauss", trial_covariances=torch.eye(3))

    class Detached(ExactSingleTrialEstimator):
        def denoise_embedded(self, z, emb, t):
            return super().denoise_embedded(z, emb, t).detach()

    detached = Detached(linear_gaussian, get_schedule("edm_vp"))
    denoise = IIDComposedDenoiser(detached, x, prior, method="jac")
    with pytest.raises(ValueError, match="not differentiable"):
        denoise(torch.zeros(3, 2), torch.tensor(0.5))


# ------------------------------------------------------------- trained model


def train_posterior(cls, prior, theta: Tensor, x: Tensor):
    """A small posterior estimator of class ``cls`` trained on ``(theta, x)``, with
    condition dropout (so it also has an unconditional model)."""
    inference = cls(
        prior,
        net_kwargs=dict(width=64, depth=2),
        condition_dropout=0.1,
        show_progress_bars=False,
    )
    inference.append_simulations(theta, x).train(
        max_num_epochs=60, training_batch_size=128, seed=0
    )
    return inference.build_posterior()


@pytest.fixture(scope="module")
def trained(linear_gaussian):
    torch.manual_seed(0)
    theta = linear_gaussian.prior.sample((2000,))
    x = linear_gaussian.simulate(theta)
    return {
        cls.__name__: train_posterior(cls, linear_gaussian.prior, theta, x)
        for cls in (DiffusionNPE, FlowMatchingNPE)
    }


def test_condition_dropout_keeps_the_posterior_at_the_data_mean():
    # the null condition is flagged: without the flag, an observation at the
    # data mean (z-scored x = 0) looked like the null embedding (initialised at
    # 0), and its posterior widened towards the prior (measured: std 0.56 and
    # 0.62 instead of 0.447 on this model; 0.9-1.0 on a 5000-simulation one)
    torch.manual_seed(1)
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    theta = prior.sample((3000,))
    x = theta + 0.5 * torch.randn_like(theta)
    posterior = train_posterior(DiffusionNPE, prior, theta, x)
    assert posterior.estimator.null_flag
    samples = posterior.sample(
        (2000,),
        x=x.mean(0),
        generator=torch.Generator().manual_seed(0),
        show_progress_bars=False,
    )
    exact_std = (1 / (1 + 1 / 0.25)) ** 0.5
    assert ((samples.std(0) / exact_std - 1).abs() < 0.25).all(), samples.std(0)
    null = posterior.estimator.null_condition(3)
    assert null.shape == (3, 3) and (null[:, -1] == 1).all()
    assert (posterior.estimator.embed_condition(x[:3])[:, -1] == 0).all()


@pytest.mark.parametrize("name", ["DiffusionNPE", "FlowMatchingNPE"])
def test_trained_model_iid_posterior(trained, linear_gaussian, name):
    posterior = trained[name]
    x = _trials(linear_gaussian, 10, seed=3)
    mean, cov = linear_gaussian.posterior(x)
    samples = posterior.sample(
        (500,),
        x=x,
        show_progress_bars=False,
        generator=torch.Generator().manual_seed(0),
        iid_options={"covariance_samples": 100},
    )
    assert samples.shape == (500, 2)
    assert posterior.last_iid_info["method"] == "gauss"
    # GAUSS runs on Euler-Maruyama, or on dopri5 on the flow-matching path
    # (alpha(t_max) = 0), unless a sampler is given
    expected = "dopri5" if name == "FlowMatchingNPE" else "euler_maruyama"
    assert posterior.last_iid_info["sampler"] == expected
    assert posterior.iid_sampler_for("jac") == ("heun", {"steps": 30})
    assert posterior.last_nfe > 10
    mean_err, var_ratio = moment_errors(samples, mean, cov)
    # the composition multiplies this small model's single-trial errors;
    # measured on trials of seeds 3-6 (1000 samples): DiffusionNPE's mean error
    # 1.1-1.9 posterior std on Euler-Maruyama (its default here) and 0.24-0.60
    # on dopri5, which follows the composed score without noise and suits such
    # near-Gaussian posteriors (on two_moons Euler-Maruyama is far better).
    # FlowMatchingNPE's composed posterior is too narrow on this small model:
    # over four trainings (data seeds 0-3) and trials of seeds 3-6 (500
    # samples), its mean error was 0.32-2.9 posterior std and its variance
    # ratios 0.14-0.56, on GAUSS (100 or 1000 covariance samples), the
    # factorised score and Euler-Maruyama alike; GAUSS with the exact
    # single-trial scores on the same path is accurate
    # (test_gauss_on_rectified_flow_path), so it is the learned velocity's
    # error, multiplied by the composition. One run of 0.97 against a bound of
    # 1.0 passed here and failed (1.05) on another machine.
    if name == "DiffusionNPE":
        assert mean_err < 2.0, mean_err
        assert ((var_ratio > 0.2) & (var_ratio < 2.5)).all(), var_ratio
    else:
        assert mean_err < 3.5, mean_err
        assert ((var_ratio > 0.1) & (var_ratio < 1.0)).all(), var_ratio
    if name == "DiffusionNPE":
        on_ode = posterior.sample(
            (500,),
            x=x,
            sampler="dopri5",
            show_progress_bars=False,
            generator=torch.Generator().manual_seed(0),
            iid_options={"covariance_samples": 100},
        )
        mean_err, var_ratio = moment_errors(on_ode, mean, cov)
        assert mean_err < 1.0, mean_err
        assert ((var_ratio > 0.5) & (var_ratio < 2.0)).all(), var_ratio


def test_iid_sampling_ends_at_t_min_without_the_denoising_step(
    trained, linear_gaussian
):
    posterior = copy.copy(trained["DiffusionNPE"])
    x = _trials(linear_gaussian, 10, seed=3)

    def draw(**options):
        return posterior.sample(
            (50,),
            x=x,
            iid_method="jac",
            sampler="heun",
            steps=8,
            show_progress_bars=False,
            generator=torch.Generator().manual_seed(0),
            **options,
        )

    default = draw()
    nfe_default = posterior.last_nfe
    assert torch.equal(default, draw(final_denoise=False))
    with_step = draw(final_denoise=True)
    # the step evaluates the composed denoiser once more: the 10 trials and the
    # prior (the Gaussian prior's score is analytic)
    assert posterior.last_nfe > nfe_default
    assert not torch.allclose(default, with_step)
    posterior.iid_final_denoise = True
    assert torch.equal(draw(), with_step)


def test_bridge_on_a_deterministic_sampler_warns(trained, linear_gaussian):
    posterior = trained["DiffusionNPE"]
    x = _trials(linear_gaussian, 3, seed=3)

    def draw(**options):
        return posterior.sample(
            (20,),
            x=x,
            iid_method="factorized_bridge",
            show_progress_bars=False,
            **options,
        )

    for options in [{"sampler": "heun", "steps": 5}, {"sampler": "dopri5"}]:
        with pytest.warns(UserWarning, match="needs a stochastic sampler"):
            draw(**options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        draw(sampler="euler_maruyama", steps=5)
        draw(sampler="heun", steps=5, corrector="langevin")
        draw(sampler="ddim", steps=5, eta=1.0)
        draw()  # the bridge's default: Euler-Maruyama, 500 steps
    assert posterior.last_nfe == pytest.approx(500 * 3, rel=0.01)  # 3 trials


def test_runs_deterministically():
    assert runs_deterministically(get_sampler("heun"), {})
    assert runs_deterministically(get_sampler("dopri5"), {})
    assert runs_deterministically(get_sampler("ddim"), {"eta": 0.0})
    assert not runs_deterministically(get_sampler("ddim"), {"eta": 0.5})
    assert not runs_deterministically(get_sampler("heun"), {"corrector": "langevin"})
    assert not runs_deterministically(get_sampler("euler_maruyama"), {})
    assert not runs_deterministically(get_sampler("adaptive_sde"), {})


def test_sampler_takes_option():
    assert sampler_takes_option(get_sampler("heun"), "final_denoise")
    assert sampler_takes_option(get_sampler("dopri5"), "final_denoise")
    assert sampler_takes_option(get_sampler("adaptive_sde"), "final_denoise")
    assert not sampler_takes_option(get_sampler("adaptive_sde"), "time_shift")

    def plain(denoise, noise, steps=1, generator=None):
        return noise

    assert not sampler_takes_option(plain, "final_denoise")


def test_trained_model_methods_and_log_prob(trained, linear_gaussian):
    posterior = trained["DiffusionNPE"]
    x = _trials(linear_gaussian, 10, seed=3)
    mean, cov = linear_gaussian.posterior(x)
    for method, sampler, prior_score in [
        ("jac", "heun", "auto"),
        ("gauss", "euler_maruyama", "auto"),
    ]:
        samples = posterior.sample(
            (300,),
            x=x,
            iid_method=method,
            sampler=sampler,
            show_progress_bars=False,
            iid_options={"covariance_samples": 100, "prior_score": prior_score},
        )
        mean_err, var_ratio = moment_errors(samples, mean, cov)
        # JAC differentiates the small network, whose Jacobian is inaccurate at
        # low noise (too narrow here): loosest tolerances. Measured with 1000
        # samples: mean error 1.8 posterior std, variance ratios 0.08 (this
        # model, whose single-trial posterior is accurate: mean error 0.02,
        # ratios 0.95); 1.1 and 0.4 on the model trained before the null
        # condition was flagged, whose single-trial ratios were 2.3 and 1.5
        # GAUSS with Euler-Maruyama (its default steps, 300 samples): 1.26 here
        assert mean_err < (2.5 if method == "jac" else 1.5), method
        low = 0.03 if method == "jac" else 0.15
        assert ((var_ratio > low) & (var_ratio < 3.0)).all(), (method, var_ratio)
    # the learned unconditional score enters with weight 1 - N: it runs, but on
    # this small model its errors dominate (not an accuracy test)
    samples = posterior.sample(
        (100,),
        x=x,
        show_progress_bars=False,
        iid_options={"covariance_samples": 100, "prior_score": "network"},
    )
    assert torch.isfinite(samples).all()
    assert "condition dropout" in posterior.last_iid_info["prior_score"]
    theta = MultivariateNormal(mean.float(), cov.float()).sample((3,))
    log_p = posterior.log_prob(
        theta, x=x, iid_options={"covariance_samples": 100}, rtol=1e-3, atol=1e-3
    )
    assert log_p.shape == (3,) and torch.isfinite(log_p).all()
    with pytest.raises(ValueError, match="iid_method='gauss'"):
        posterior.log_prob(theta, x=x, iid_method="jac")
    with pytest.raises(ValueError, match="num_trials"):
        posterior.sample((2,), x=torch.zeros(5, 3), show_progress_bars=False)
    with pytest.raises(ValueError, match="Unknown iid_method"):
        posterior.sample((2,), x=x, iid_method="mean", show_progress_bars=False)


def test_precision_from_jacobian_survives_non_finite_and_ill_conditioned() -> None:
    from sbi_diffusion.composition import precision_from_jacobian

    alpha, sigma = torch.tensor([0.9, 0.9]), torch.tensor([0.1, 0.1])
    jac = torch.eye(3).repeat(2, 1, 1)
    jac[0, 1, 1] = float("nan")
    jac[1] = torch.tensor([[1e30, 1e30, 0.0], [1e30, 1e30, 0.0], [0.0, 0.0, 1e-30]])
    prec = precision_from_jacobian(jac, alpha, sigma, max_variance=1.0)
    assert torch.isfinite(prec).all()
    # the NaN direction is uninformative: the widest allowed variance
    widest = 1.0 / (1.0 / 1.0 + 0.9**2 / 0.1**2)
    assert float(prec[0, 1, 1]) == pytest.approx(1.0 / widest, rel=1e-4)


def test_inverse_clamped_bounds_the_eigenvalues() -> None:
    from sbi_diffusion.composition import clamp_eigenvalues, inverse_clamped

    rotation = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    m = rotation @ torch.diag(torch.tensor([-1.0, 4.0])) @ rotation.T
    vals, _, dtype = clamp_eigenvalues(m[None], torch.tensor([0.5]), 2.0)
    assert dtype == torch.float32
    torch.testing.assert_close(vals, torch.tensor([[0.5, 2.0]], dtype=torch.float64))
    # eigenvalues -1 and 4 clamped to 0.5 and 2 before inversion
    expected = rotation @ torch.diag(torch.tensor([2.0, 0.5])) @ rotation.T
    torch.testing.assert_close(inverse_clamped(m, 0.5, 2.0), expected)


# ------------------------------------------------- network calls of composition


def _untrained_estimator(net: str, parameterization: str):
    """A small estimator with random (non-zero) weights, so that every layer
    matters in comparisons."""
    torch.manual_seed(0)
    prior = BoxUniform(-torch.ones(3), torch.ones(3))
    theta = prior.sample((200,))
    inference = DiffusionNPE(
        prior,
        net=net,
        parameterization=parameterization,
        net_kwargs=dict(width=32, depth=2),
        show_progress_bars=False,
    )
    inference.append_simulations(theta, theta + 0.1 * torch.randn_like(theta))
    estimator = inference.train(max_num_epochs=1)
    with torch.no_grad():
        for parameter in estimator.net.parameters():
            parameter.normal_(0, 0.3)
    return estimator, theta


@pytest.mark.parametrize(
    "net,parameterization",
    [("mlp", "F"), ("mlp", "eps"), ("adaln_mlp", "velocity"), ("adaln_mlp", "F")],
)
def test_denoise_trials_broadcast_matches_flat_rows(net, parameterization):
    from sbi_diffusion.model import denoise_trials_flat

    estimator, theta = _untrained_estimator(net, parameterization)
    assert estimator.net.broadcasts_inputs
    embeddings = estimator.embed_condition(theta[:7])
    z = torch.randn(50, 3)
    with torch.no_grad():
        for t in (torch.full((50,), 0.37), torch.tensor(0.8), torch.rand(50)):
            flat = denoise_trials_flat(estimator.denoise_embedded, z, embeddings, t)
            assert flat.shape == (50, 7, 3)
            # flat rows are z_b against e_i, batch-major
            b, i = 11, 4
            one = estimator.denoise_embedded(
                z[b : b + 1], embeddings[i : i + 1], as_time(t, z)[b : b + 1]
            )
            torch.testing.assert_close(flat[b, i], one[0])
            for max_rows in (None, 64, 5, 1):
                got = estimator.denoise_trials(z, embeddings, t, max_rows)
                torch.testing.assert_close(got, flat, rtol=1e-4, atol=1e-5)
                pieces = denoise_trials_flat(
                    estimator.denoise_embedded, z, embeddings, t, max_rows
                )
                torch.testing.assert_close(pieces, flat, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pieces_of", [None, 7])
@pytest.mark.parametrize(
    "net,parameterization", [("mlp", "F"), ("adaln_mlp", "velocity")]
)
def test_one_condition_at_one_time_broadcasts_like_flat_rows(
    net, parameterization, pieces_of, monkeypatch
):
    """With one condition and one time for all rows, the network gets them as
    one row each (and ``z`` in pieces of ``default_network_rows`` rows); the
    result and the gradients are those of the flat rows."""
    from sbi_diffusion.model import denoiser as denoiser_module

    monkeypatch.setattr(
        denoiser_module, "default_network_rows", lambda device: pieces_of
    )
    estimator, theta = _untrained_estimator(net, parameterization)
    z = torch.randn(50, 3)
    base = estimator.embed_condition(theta[:1]).detach()
    cases = [
        (t, make)
        for t in (torch.full((50,), 0.37), torch.tensor(0.8))
        for make in (
            lambda e: e,
            lambda e: e.expand(50, -1),
            lambda e: e.repeat(50, 1),
        )
    ]

    def run(t, make):
        embedding = base.clone().requires_grad_(True)
        out = estimator.denoise_embedded(z, make(embedding), t)
        (grad,) = torch.autograd.grad(out.square().sum(), embedding)
        return out.detach(), grad

    broadcast = [run(t, make) for t, make in cases]
    monkeypatch.setattr(type(estimator), "_broadcasts_at", lambda self, t: False)
    for (t, make), (out, grad) in zip(cases, broadcast, strict=True):
        flat_out, flat_grad = run(t, make)
        torch.testing.assert_close(out, flat_out, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grad, flat_grad, rtol=1e-3, atol=1e-4)


def test_conditioned_denoiser_in_pieces_matches_one_call():
    from sbi_diffusion.model import ConditionedDenoiser

    estimator, theta = _untrained_estimator("mlp", "F")
    z, t = torch.randn(40, 3), torch.rand(40)
    for embedding in (
        estimator.embed_condition(theta[:1]),
        estimator.embed_condition(theta[:40]),
    ):
        whole = ConditionedDenoiser(estimator, embedding)
        pieces = ConditionedDenoiser(estimator, embedding, max_rows=7)
        with torch.no_grad():
            torch.testing.assert_close(pieces(z, t), whole(z, t))
            torch.testing.assert_close(pieces(z, 0.3), whole(z, 0.3))
        rows = torch.arange(0, 40, 3)
        assert pieces.restricted_to(rows).max_rows == 7


@pytest.mark.parametrize(
    "net,parameterization", [("mlp", "F"), ("adaln_mlp", "velocity")]
)
def test_denoise_grouped_matches_rows_with_their_own_condition(net, parameterization):
    from sbi_diffusion.model import ConditionedDenoiser

    estimator, theta = _untrained_estimator(net, parameterization)
    n, s = 6, 9
    embeddings = estimator.embed_condition(theta[:n])
    z = torch.randn(n, s, 3)
    flat_z = z.reshape(n * s, 3)
    flat_e = embeddings.repeat_interleave(s, dim=0)
    with torch.no_grad():
        for t in (torch.tensor(0.6), torch.full((n * s,), 0.2), torch.rand(n * s)):
            expected = estimator.denoise_embedded(flat_z, flat_e, t).reshape(n, s, 3)
            for max_rows in (None, 20, 4, 1):
                got = estimator.denoise_grouped(z, embeddings, t, max_rows)
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
                grouped = ConditionedDenoiser(estimator, embeddings, max_rows, s)
                torch.testing.assert_close(
                    grouped(flat_z, t), expected.reshape(n * s, 3), rtol=1e-4, atol=1e-5
                )
        # restricting rows keeps each row's own condition
        rows = torch.tensor([0, 10, 17, 53])
        restricted = grouped.restricted_to(rows)
        torch.testing.assert_close(
            restricted(flat_z[rows], 0.5),
            estimator.denoise_embedded(flat_z[rows], flat_e[rows], 0.5),
        )
        with pytest.raises(ValueError, match="6 conditions x 9 rows"):
            grouped(flat_z[:10], 0.5)


@pytest.mark.parametrize("method", ["gauss", "factorized", "jac"])
def test_composition_does_not_depend_on_network_rows(trained, linear_gaussian, method):
    from sbi_diffusion.model import CPU_NETWORK_ROWS, default_network_rows

    assert default_network_rows("cpu") == CPU_NETWORK_ROWS
    assert default_network_rows("cuda") is None
    estimator = trained["DiffusionNPE"].estimator
    x = _trials(linear_gaussian, 10, seed=3)
    prior = diffused_prior(estimator, linear_gaussian.prior)
    covariances = torch.eye(2).expand(10, 2, 2) * 0.3
    z, t = torch.randn(30, 2), torch.full((30,), 0.4)
    results = []
    for network_rows in (None, 17):
        composed = IIDComposedDenoiser(
            estimator,
            x,
            prior,
            method=method,
            trial_covariances=covariances if method == "gauss" else None,
            network_rows=network_rows,
            max_rows=60,
        )
        assert composed.network_rows == (network_rows or CPU_NETWORK_ROWS)
        with torch.no_grad():
            results.append(composed(z, t))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


def test_trial_precisions_are_at_least_the_prior_precision():
    from sbi_diffusion.composition import at_least_prior_precision

    prior_cov = torch.tensor([[2.0, 0.3], [0.3, 1.0]])
    narrow = torch.stack([0.1 * prior_cov, torch.diag(torch.tensor([0.5, 0.2]))])
    torch.testing.assert_close(at_least_prior_precision(narrow, prior_cov), narrow)
    # wider than the prior along one direction (a bimodal posterior), narrower
    # along the other: the likelihood precision is projected onto the PSD cone
    rotation = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    wide = rotation @ torch.diag(torch.tensor([9.0, 0.05])) @ rotation.T
    fixed = at_least_prior_precision(wide[None], prior_cov)[0]
    likelihood = torch.linalg.inv(fixed) - torch.linalg.inv(prior_cov)
    assert torch.linalg.eigvalsh(likelihood).min() > -1e-4
    assert torch.linalg.eigvalsh(likelihood).max() > 1.0
    # a covariance wider than the prior everywhere becomes the prior's
    torch.testing.assert_close(
        at_least_prior_precision(3 * prior_cov[None], prior_cov)[0],
        prior_cov,
        rtol=1e-4,
        atol=1e-5,
    )


def test_composed_estimate_stays_inside_a_box_prior():
    estimator, theta = _untrained_estimator("mlp", "F")
    prior = diffused_prior(estimator, BoxUniform(-torch.ones(3), torch.ones(3)))
    low, high = prior.bounds
    x = theta[:20] + 0.1 * torch.randn(20, 3)
    z, t = 3 * torch.randn(64, 3), torch.full((64,), 0.4)
    for method in ("factorized", "gauss", "factorized_bridge"):
        composed = IIDComposedDenoiser(
            estimator,
            x,
            prior,
            method=method,
            trial_covariances=0.01 * torch.eye(3) if method == "gauss" else None,
        )
        with torch.no_grad():
            x_hat = composed(z, t)
        inside = ((x_hat >= low) & (x_hat <= high)).all()
        # the bridge is an annealed density, not a posterior mean: not clamped
        assert bool(inside) == (method != "factorized_bridge"), method


# ------------------------------------------- a posterior at a box prior's edge


def _truncated_normal_moments(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``N(mean, var)`` truncated to ``[0, 1]``."""
    std = var.sqrt()
    a, b = (0.0 - mean) / std, (1.0 - mean) / std
    normal = torch.distributions.Normal(torch.zeros((), dtype=mean.dtype), 1.0)
    mass = normal.cdf(b) - normal.cdf(a)
    pa, pb = normal.log_prob(a).exp() / mass, normal.log_prob(b).exp() / mass
    return mean + std * (pa - pb), var * (1 + a * pa - b * pb - (pa - pb) ** 2)


class BoxGaussianTrials:
    r"""``theta ~ U(0, 1)^2``, ``x ~ N(theta, s^2 I)``: the single-trial posterior
    is ``N(x, s^2 I)`` truncated to the box, and ``theta_0 | z_t, x`` the truncated
    normal of precision ``1 / s^2 + alpha^2 / sigma^2`` (standardised space = theta
    space: shift 0, scale 1)."""

    theta_dim = 2
    condition_shape = torch.Size([2])

    def __init__(self, schedule, noise_std: float):
        self.schedule = schedule
        self.noise_var = noise_std**2
        self.theta_shift, self.theta_scale = torch.zeros(1, 2), torch.ones(1, 2)

    def embed_condition(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).float()

    def denoise_embedded(self, z: Tensor, emb: Tensor, t) -> Tensor:
        t = as_time(t, z).double()
        alpha = self.schedule.alpha(t)[:, None].double()
        sigma = self.schedule.sigma(t)[:, None].double()
        precision = 1 / self.noise_var + alpha**2 / sigma**2
        mean = (
            emb.double() / self.noise_var + alpha * z.double() / sigma**2
        ) / precision
        return _truncated_normal_moments(mean, 1 / precision)[0].to(z.dtype)


def test_gauss_at_a_box_edge_uses_the_gaussian_prior_precision():
    """Ten trials put the posterior of ``theta_1`` at the box's edge (its mean is
    one posterior std from it). With the Gaussian prior precision (the default)
    GAUSS's mean is within half a posterior std; with the exact (edge-dependent)
    one it is pulled off the edge by about two."""
    num_trials, noise_std = 10, 0.3
    estimator = BoxGaussianTrials(get_schedule("edm_vp"), noise_std)
    torch.manual_seed(0)
    x = torch.tensor([0.97, 0.5]) + noise_std * torch.randn(num_trials, 2)
    trial_var = _truncated_normal_moments(
        x.double(), torch.full((num_trials, 2), noise_std**2, dtype=torch.float64)
    )[1]
    mean, var = _truncated_normal_moments(
        x.double().mean(0),
        torch.full((2,), noise_std**2 / num_trials, dtype=torch.float64),
    )
    prior = diffused_prior(estimator, BoxUniform(torch.zeros(2), torch.ones(2)))
    errors = {}
    for prior_precision in ("gaussian", "exact"):
        composed = IIDComposedDenoiser(
            estimator,
            x,
            prior,
            method="gauss",
            trial_covariances=torch.diag_embed(trial_var.float()),
            prior_precision=prior_precision,
        )
        samples = _sample(composed, 2000, "euler_maruyama", steps=500).samples
        errors[prior_precision] = (samples.double().mean(0) - mean) / var.sqrt()
    assert float(errors["gaussian"].abs().max()) < 0.6, errors
    assert float(errors["exact"][0]) < -1.5, errors  # off the edge at 1
    with pytest.raises(ValueError, match="prior_precision"):
        IIDComposedDenoiser(estimator, x, prior, method="gauss", prior_precision="?")


def test_prior_precision_defaults_per_method_and_applies_to_jac():
    """GAUSS takes the prior's Gaussian precision by default and JAC the exact
    one; either can be chosen for JAC, and at a box's edge the two differ."""
    estimator = BoxGaussianTrials(get_schedule("edm_vp"), 0.3)
    x = torch.tensor([[0.97, 0.5], [0.9, 0.4]])
    prior = diffused_prior(estimator, BoxUniform(torch.zeros(2), torch.ones(2)))
    gauss = IIDComposedDenoiser(
        estimator, x, prior, method="gauss", trial_covariances=0.01 * torch.eye(2)
    )
    assert gauss.prior_precision == "gaussian"
    z = torch.tensor([[0.999, 0.5]]).to(prior.cov)
    t = torch.full((1,), 0.3)
    exact, gaussian = prior.precision(z, t), prior.gaussian_precision(z, t)
    assert not torch.allclose(exact, gaussian)  # edge: truncated-normal precision
    jac = IIDComposedDenoiser(estimator, x, prior, method="jac")
    assert jac.prior_precision == "exact"
    torch.testing.assert_close(jac._prior_precision(z, t), exact)
    jac = IIDComposedDenoiser(
        estimator, x, prior, method="jac", prior_precision="gaussian"
    )
    torch.testing.assert_close(jac._prior_precision(z, t), gaussian)
