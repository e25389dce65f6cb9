"""Guidance transforms: closed forms with exact denoisers, a trained model, and
bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_composition import (
    ExactSingleTrialEstimator,
    _trials,
    moment_errors,
    train_posterior,
)
from torch.distributions import MultivariateNormal

from sbi_diffusion import DiffusionNPE
from sbi_diffusion.guidance import (
    ClassifierFreeGuidance,
    ConstraintGuidance,
    GuidanceContext,
    LikelihoodTemperature,
    PriorSwap,
    apply_guidance,
    check_sampler_accepts_guidance,
    interval_constraint,
    linear_constraint,
    soft_indicator_moments,
)
from sbi_diffusion.path.gaussian import linear_gaussian_posterior
from sbi_diffusion.path.schedules import get_schedule
from sbi_diffusion.samplers import SAMPLERS, get_sampler, initial_noise

torch.set_num_threads(1)


class Bound:
    """An exact estimator with its condition fixed (like ``ConditionedDenoiser``)."""

    def __init__(self, estimator: ExactSingleTrialEstimator, x: torch.Tensor):
        self.denoiser = estimator
        self.embedding = estimator.embed_condition(x.reshape(1, -1))
        self.schedule = estimator.schedule

    def __call__(self, z, t):
        return self.denoiser.denoise_embedded(z, self.embedding, t)


def _setup(problem, schedule="edm_vp", dropout=0.0):
    est = ExactSingleTrialEstimator(problem, get_schedule(schedule), dropout)
    x = _trials(problem, 1, seed=2)
    context = GuidanceContext.from_estimator(est, problem.prior)
    return est, x, Bound(est, x), context


def _sample(denoise, num, sampler="dopri5", seed=0, **options):
    g = torch.Generator().manual_seed(seed)
    noise = initial_noise(denoise.schedule, (num, 2), generator=g)
    return get_sampler(sampler)(denoise, noise, generator=g, **options).samples


NEW_MEAN = torch.tensor([-0.5, 1.0])
NEW_COV = torch.tensor([[0.5, 0.1], [0.1, 0.8]])


@pytest.mark.parametrize("schedule", ["edm_vp", "rectified_flow"])
@pytest.mark.parametrize("covariance", ["gaussian", "jacobian"])
def test_prior_swap_recovers_new_posterior(linear_gaussian, schedule, covariance):
    est, x, denoise, context = _setup(linear_gaussian, schedule)
    swap = PriorSwap(MultivariateNormal(NEW_MEAN, NEW_COV), covariance=covariance)
    guided = apply_guidance(denoise, swap, context)
    p = linear_gaussian
    mean, cov = linear_gaussian_posterior(
        NEW_MEAN, NEW_COV, p.matrix, p.noise_cov, x, shift=p.shift
    )
    samples = est.from_z(_sample(guided, 1000))
    mean_err, var_ratio = moment_errors(samples, mean, cov)
    assert mean_err < 0.15
    assert ((var_ratio > 0.8) & (var_ratio < 1.25)).all(), var_ratio


@pytest.mark.parametrize("power", [0.5, 2.0])
@pytest.mark.parametrize("precision", ["gaussian", "jacobian"])
def test_likelihood_temperature(linear_gaussian, power, precision):
    est, x, denoise, context = _setup(linear_gaussian)
    tempered = LikelihoodTemperature(power, precision=precision)
    guided = apply_guidance(denoise, [tempered], context)
    mean, cov = linear_gaussian.posterior(x, power)
    mean_err, var_ratio = moment_errors(est.from_z(_sample(guided, 1000)), mean, cov)
    assert mean_err < 0.15
    assert ((var_ratio > 0.8) & (var_ratio < 1.25)).all(), var_ratio


def test_classifier_free_guidance_limits(linear_gaussian):
    est, x, denoise, context = _setup(linear_gaussian, dropout=0.1)
    z, t = torch.randn(20, 2), torch.rand(20) * 0.9 + 0.05
    prior = context.diffused_prior()
    one = apply_guidance(denoise, ClassifierFreeGuidance(1.0), context)
    zero = apply_guidance(denoise, ClassifierFreeGuidance(0.0), context)
    assert torch.allclose(one(z, t), denoise(z, t), atol=1e-5)
    assert torch.allclose(zero(z, t), prior(z, t), atol=1e-4)
    assert one.evaluations_per_call == 2
    # w = 2 with the factorised weights equals temperature 2 with identity weights
    two = apply_guidance(denoise, ClassifierFreeGuidance(2.0), context)
    temp = apply_guidance(
        denoise, LikelihoodTemperature(2.0, precision="identity"), context
    )
    assert torch.allclose(two(z, t), temp(z, t), atol=1e-4)


@pytest.mark.parametrize(
    "make_constraint",
    [
        lambda m: interval_constraint(low=torch.tensor([m[0], -1e9])),
        lambda m: linear_constraint(torch.tensor([[1.0, 1.0]]), m.sum().reshape(1)),
        lambda m: lambda theta: (theta - m).pow(2).sum(-1) - 0.05,
    ],
    ids=["interval", "linear", "function"],
)
def test_constraint_guidance_keeps_samples_inside(linear_gaussian, make_constraint):
    est, x, denoise, context = _setup(linear_gaussian)
    mean, _ = linear_gaussian.posterior(x)
    transform = ConstraintGuidance(make_constraint(mean.float()))
    guided = apply_guidance(denoise, transform, context)
    samples = est.from_z(_sample(guided, 1000, "heun", steps=40))
    inside = transform.satisfied(samples).float().mean()
    assert inside > 0.99, inside
    assert torch.isfinite(samples).all()


def test_soft_indicator_moments_closed_form():
    # N(0, 1) times (1 - w + w Phi(theta / tau)), tau -> 0: the half-normal's mean
    # w phi(0) / (1 - w + w / 2)
    mean, cov = torch.zeros(1, 1), torch.ones(1, 1, 1)
    c, slopes = torch.zeros(1, 1), -torch.ones(1, 1, 1)
    phi0 = (2 * math.pi) ** -0.5
    for w in [0.0, 0.5, 1.0]:
        got = soft_indicator_moments(mean, cov, c, slopes, w, 1e-6)
        assert got.item() == pytest.approx(w * phi0 / (1 - w + w / 2), abs=1e-5)
    # a point far outside moves to about the boundary, not beyond
    far = soft_indicator_moments(
        torch.full((1, 1), -50.0), 0.01 * cov, torch.full((1, 1), 50.0), slopes, 1, 1e-6
    )
    assert 0.0 < far.item() < 0.5


@pytest.mark.parametrize("covariance", ["gaussian", "jacobian"])
def test_constraint_guidance_matches_truncated_gaussian(linear_gaussian, covariance):
    est, x, denoise, context = _setup(linear_gaussian)
    mean, cov = linear_gaussian.posterior(x)
    mean, cov = mean.double(), cov.double()
    # theta_1 >= its posterior mean: E[theta_1] = m_1 + sqrt(S_11) phi(0) / Phi(0),
    # E[theta_2] = m_2 + S_21 / S_11 (E[theta_1] - m_1)
    transform = ConstraintGuidance(
        interval_constraint(low=torch.tensor([mean[0].item(), -1e9])),
        covariance=covariance,
    )
    guided = apply_guidance(denoise, transform, context)
    samples = est.from_z(_sample(guided, 2000, "heun", steps=40)).double()
    shift1 = cov[0, 0].sqrt() * (2 / math.pi) ** 0.5
    expected = torch.stack([mean[0] + shift1, mean[1] + cov[1, 0] / cov[0, 0] * shift1])
    std = cov.diagonal().sqrt()
    assert ((samples.mean(0) - expected).abs() / std < 0.1).all(), (
        samples.mean(0),
        expected,
    )
    assert transform.satisfied(samples).float().mean() > 0.99
    # the default isotropic covariance is too wide for this posterior: inside,
    # but pushed further in (measured: 0.6 posterior std on theta_1; the
    # gradient step used before this moment matching put it at 10 std)
    isotropic = ConstraintGuidance(transform.constraint)
    guided = apply_guidance(denoise, isotropic, context)
    samples = est.from_z(_sample(guided, 2000, "heun", steps=40)).double()
    assert ((samples.mean(0) - expected).abs() / std < 1.0).all(), samples.mean(0)
    assert isotropic.satisfied(samples).float().mean() > 0.99


def test_transforms_compose(linear_gaussian):
    est, x, denoise, context = _setup(linear_gaussian)
    low = torch.tensor([0.0, -1e9])
    transforms = [
        PriorSwap(MultivariateNormal(NEW_MEAN, NEW_COV)),
        ConstraintGuidance(interval_constraint(low=low)),
    ]
    guided = apply_guidance(denoise, transforms, context)
    samples = est.from_z(_sample(guided, 500, "heun", steps=40))
    assert (samples[:, 0] >= 0).float().mean() > 0.99


def test_bad_guidance_input(linear_gaussian):
    est, x, denoise, context = _setup(linear_gaussian)
    z, t = torch.randn(4, 2), torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="condition dropout"):
        apply_guidance(denoise, ClassifierFreeGuidance(2.0), context)
    wrong_shape = ConstraintGuidance(lambda theta: theta[:, :, None])
    with pytest.raises(ValueError, match="shape"):
        apply_guidance(denoise, wrong_shape, context)(z, t)
    nan = ConstraintGuidance(lambda theta: theta[:, 0] * float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        apply_guidance(denoise, nan, context)(z, t)
    with pytest.raises(ValueError, match="ScoreTransform"):
        apply_guidance(denoise, ["cfg"], context)
    with pytest.raises(ValueError, match="power"):
        LikelihoodTemperature(-1.0)
    with pytest.raises(ValueError, match="covariance"):
        ConstraintGuidance(interval_constraint(low=0.0), covariance="full")
    with pytest.raises(ValueError, match="strength"):
        ConstraintGuidance(interval_constraint(low=0.0), strength=10.0)

    def one_step(denoise, noise, **kwargs):
        raise AssertionError("not reached")

    one_step.accepts_guidance = False
    with pytest.raises(ValueError, match="cannot use score transforms"):
        check_sampler_accepts_guidance("one_step", one_step)


# ------------------------------------------------------------- trained model


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def posterior(linear_gaussian):
    torch.manual_seed(0)
    theta = linear_gaussian.prior.sample((2000,))
    x = linear_gaussian.simulate(theta)
    return train_posterior(DiffusionNPE, linear_gaussian.prior, theta, x)


def test_trained_model_guidance(posterior, linear_gaussian):
    p = linear_gaussian
    x = _trials(p, 1, seed=2)
    kwargs = dict(show_progress_bars=False)
    mean, cov = p.posterior(x)
    plain = posterior.sample((1000,), x=x, generator=_gen(), **kwargs)
    samples = posterior.sample(
        (1000,), x=x, guidance=ClassifierFreeGuidance(1.0), generator=_gen(), **kwargs
    )
    assert posterior.last_nfe > 30
    # scale 1 is the conditional model itself: same noise, same samples
    assert torch.allclose(samples, plain, atol=1e-3)
    mean_err, var_ratio = moment_errors(samples, mean, cov)
    assert mean_err < 0.5 and ((var_ratio > 0.4) & (var_ratio < 3.5)).all()

    constraint = ConstraintGuidance(interval_constraint(low=mean.float()))
    samples = posterior.sample((500,), x=x, guidance=[constraint], **kwargs)
    assert constraint.satisfied(samples).float().mean() > 0.98

    no_dropout = copy.deepcopy(posterior)
    no_dropout.estimator.condition_dropout = 0.0
    with pytest.raises(ValueError, match="condition dropout"):
        no_dropout.sample((2,), x=x, guidance=ClassifierFreeGuidance(2.0), **kwargs)

    def one_step(denoise, noise, **options):
        raise AssertionError("not reached")

    one_step.accepts_guidance = False
    SAMPLERS["_one_step_test"] = one_step
    try:
        with pytest.raises(ValueError, match="cannot use score transforms"):
            posterior.sample(
                (2,), x=x, sampler="_one_step_test", guidance=constraint, **kwargs
            )
    finally:
        del SAMPLERS["_one_step_test"]


def test_trained_model_prior_swap(posterior, linear_gaussian):
    """With the Gaussian-fit covariance (default). The Jacobian of this small
    model overshoots (measured: mean error 0.57-0.88 posterior std and variance
    ratios up to 2 on observations 2-4, against 0.04-0.17 and 0.8-1.2 here)."""
    p = linear_gaussian
    x = _trials(p, 1, seed=2)
    kwargs = dict(show_progress_bars=False)
    plain = posterior.sample((500,), x=x, generator=_gen(), **kwargs)
    new_mean, new_cov = linear_gaussian_posterior(
        NEW_MEAN, NEW_COV, p.matrix, p.noise_cov, x, shift=p.shift
    )
    swapped = posterior.with_guidance(PriorSwap(MultivariateNormal(NEW_MEAN, NEW_COV)))
    samples = swapped.sample((500,), x=x, **kwargs)
    mean_err, var_ratio = moment_errors(samples, new_mean, new_cov)
    unswapped_err, _ = moment_errors(plain, new_mean, new_cov)
    # the small model is not exact: the swap must move most of the way
    assert mean_err < 0.5 * unswapped_err, (mean_err, unswapped_err)
    assert mean_err < 0.35, mean_err
    assert ((var_ratio > 0.6) & (var_ratio < 1.6)).all(), var_ratio


def test_trained_model_prior_swap_per_observation(posterior, linear_gaussian):
    """``sample_batched`` over two observations: each gets its own Gaussian fit
    (one fit over both posteriors would be far too wide)."""
    p = linear_gaussian
    x = torch.cat([_trials(p, 1, seed=2), _trials(p, 1, seed=3)])
    swap = PriorSwap(MultivariateNormal(NEW_MEAN, NEW_COV), covariance_samples=300)
    samples = posterior.sample_batched(
        (400,), x=x, guidance=swap, show_progress_bars=False
    )
    assert samples.shape == (400, 2, 2)
    for b in range(2):
        new_mean, new_cov = linear_gaussian_posterior(
            NEW_MEAN, NEW_COV, p.matrix, p.noise_cov, x[b : b + 1], shift=p.shift
        )
        mean_err, var_ratio = moment_errors(samples[:, b], new_mean, new_cov)
        assert mean_err < 0.4, (b, mean_err)
        assert ((var_ratio > 0.6) & (var_ratio < 1.6)).all(), (b, var_ratio)


def test_gaussian_fit_is_shared_by_chunks_and_counted(posterior, linear_gaussian):
    """One fit per sampling call: chunks (and rejection rounds) reuse it, even
    chunks too small to fit on their own, and its draws count in ``last_nfe``."""
    x = _trials(linear_gaussian, 1, seed=2)
    small = copy.copy(posterior)
    small.max_sampling_batch_size = 50
    kwargs = dict(x=x, sampler="heun", steps=10, show_progress_bars=False)
    small.sample((200,), **kwargs)
    plain_nfe = small.last_nfe
    swap = PriorSwap(MultivariateNormal(NEW_MEAN, NEW_COV), covariance_samples=300)
    samples = small.sample((200,), guidance=swap, **kwargs)
    assert samples.shape == (200, 2) and torch.isfinite(samples).all()
    # one fit: 6 passes of the first chunk's 50 rows, 30 Heun steps (59 calls)
    one_fit = 6 * 50 * 59 / 200
    assert small.last_nfe - plain_nfe == pytest.approx(one_fit, rel=0.05)
    # the last chunk, 2 rows, would need 150 passes (an error) on its own
    samples = small.sample((52,), guidance=swap, **kwargs)
    assert torch.isfinite(samples).all()
    with pytest.raises(ValueError, match="per observation"):
        small.sample((2,), guidance=swap, **kwargs)


def test_gaussian_covariance_errors(posterior, linear_gaussian):
    with pytest.raises(ValueError, match="covariance_samples"):
        PriorSwap(MultivariateNormal(NEW_MEAN, NEW_COV), covariance_samples=3)
    with pytest.raises(ValueError, match="covariance_samples"):
        ConstraintGuidance(lambda theta: theta[:, 0], covariance_samples=2)
    too_few = PriorSwap(MultivariateNormal(NEW_MEAN, NEW_COV), covariance_samples=4)
    with pytest.raises(ValueError, match="covariance_samples"):  # d = 2: needs 5
        posterior.sample(
            (10,),
            x=_trials(linear_gaussian, 1),
            guidance=too_few,
            show_progress_bars=False,
        )
    with pytest.raises(ValueError, match="Unknown covariance"):
        PriorSwap(MultivariateNormal(NEW_MEAN, NEW_COV), covariance="isotropic")
    x = torch.cat([_trials(linear_gaussian, 1, seed=s) for s in range(5)])
    swap = PriorSwap(MultivariateNormal(NEW_MEAN, NEW_COV), covariance_samples=500)
    with pytest.raises(ValueError, match="per observation"):
        posterior.sample_batched((2,), x=x, guidance=swap, show_progress_bars=False)


def test_with_guidance_leaves_the_original_unchanged(posterior):
    swapped = posterior.with_guidance(PriorSwap(MultivariateNormal(NEW_MEAN, NEW_COV)))
    assert posterior.guidance == []
    assert len(swapped.guidance) == 1
    assert len(swapped.with_guidance(LikelihoodTemperature(2.0)).guidance) == 2
    assert len(swapped.guidance) == 1


@pytest.mark.parametrize("power", [0.5, 2.0])
@pytest.mark.parametrize("precision", ["gaussian", "jacobian"])
def test_trained_model_likelihood_temperature(
    posterior, linear_gaussian, power, precision
):
    x = _trials(linear_gaussian, 1, seed=2)
    mean, cov = linear_gaussian.posterior(x, power)
    samples = posterior.sample(
        (1000,),
        x=x,
        guidance=LikelihoodTemperature(power, precision=precision),
        generator=_gen(),
        show_progress_bars=False,
    )
    mean_err, var_ratio = moment_errors(samples, mean, cov)
    if precision == "gaussian":
        # measured on this model: mean error 0.11-0.15, variance ratios 1.1-1.15
        low, high = 0.7, 1.5
    else:
        # measured: mean errors about 0.2, variance ratios 0.74-0.85 at power 2
        # and 1.4-1.8 at power 0.5 (with the Jacobians' precisions unbounded by
        # the prior, 9.8 at power 2); the model's own single-trial errors count
        # too (test_trained_model_guidance allows 3.5 unguided)
        low, high = (0.5, 2.0) if power > 1 else (0.3, 6.0)
    assert mean_err < 0.5
    assert ((var_ratio > low) & (var_ratio < high)).all(), var_ratio


def test_guidance_by_name_is_refused_with_a_clear_error():
    """A string is not split into characters: it is refused as a whole."""
    from sbi_diffusion.guidance import as_transform_list

    transform = ClassifierFreeGuidance(2.0)
    assert as_transform_list([transform, [transform]]) == [transform, transform]
    assert as_transform_list(None) == []
    with pytest.raises(ValueError, match="got 'cfg'"):
        as_transform_list("cfg")
    with pytest.raises(ValueError, match="got str"):
        as_transform_list(["cfg"])
