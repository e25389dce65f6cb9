"""Sequential rounds with truncated proposals (TSNPE, Deistler et al. 2022)."""

from __future__ import annotations

import json

import pytest
import torch
from sbi.utils import RestrictedPrior, get_density_thresholder
from torch.distributions import MultivariateNormal

from sbi_diffusion import (
    DiffusionNPE,
    FlowMatchingNPE,
    SampleRegion,
    get_density_region,
    get_sample_thresholder,
)
from sbi_diffusion.inference.proposals import (
    PRIOR,
    TRUNCATED_PRIOR,
    proposal_kind,
)
from sbi_diffusion.path.gaussian import linear_gaussian_posterior


def test_proposal_kinds(linear_gaussian):
    prior = linear_gaussian.prior
    restricted = RestrictedPrior(prior, lambda t: torch.ones(len(t), dtype=bool))
    assert proposal_kind(None, prior) == PRIOR
    assert proposal_kind(prior, prior) == PRIOR
    assert proposal_kind(restricted, prior) == TRUNCATED_PRIOR

    class Declared:
        proportional_to_prior = True

    assert proposal_kind(Declared(), prior) == TRUNCATED_PRIOR
    other = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1
    )
    with pytest.raises(ValueError, match="restricts another prior"):
        proposal_kind(RestrictedPrior(other, lambda t: t[:, 0] > 0), prior)


def _tiny_posterior(cls, problem, num_simulations: int, max_num_epochs: int):
    """A width-32, one-block ``cls`` trained briefly on ``problem``; returns the
    trainer, the posterior (default x: the first simulation) and ``(theta,
    x)``."""
    theta = problem.prior.sample((num_simulations,))
    x = problem.simulate(theta)
    inference = cls(
        problem.prior, net_kwargs={"width": 32, "depth": 1}, show_progress_bars=False
    )
    inference.append_simulations(theta, x).train(max_num_epochs=max_num_epochs)
    posterior = inference.build_posterior().set_default_x(x[:1])
    return inference, posterior, (theta, x)


def test_posterior_as_proposal_raises_naming_the_supported_path(linear_gaussian):
    inference, posterior, (theta, x) = _tiny_posterior(
        DiffusionNPE, linear_gaussian, 300, max_num_epochs=2
    )
    with pytest.raises(ValueError, match="RestrictedPrior") as error:
        inference.append_simulations(theta, x, proposal=posterior)
    assert "not a supported proposal" in str(error.value)
    assert "get_density_thresholder" in str(error.value)
    # nothing was appended by the refused call
    assert len(inference._theta_roundwise) == 1


def test_rounds_with_other_shapes_raise(linear_gaussian):
    theta = linear_gaussian.prior.sample((50,))
    x = linear_gaussian.simulate(theta)
    inference = FlowMatchingNPE(linear_gaussian.prior, show_progress_bars=False)
    inference.append_simulations(theta, x)
    restricted = RestrictedPrior(
        linear_gaussian.prior, lambda t: torch.ones(len(t), dtype=bool)
    )
    with pytest.raises(ValueError, match="earlier ones have"):
        inference.append_simulations(
            theta, torch.cat([x, x], dim=1), proposal=restricted
        )


def _gaussian_kl(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor):
    """KL(N(sample moments) || N(mean, cov))."""
    m = samples.mean(0)
    s = torch.cov(samples.T)
    inv = torch.linalg.inv(cov)
    d = mean.shape[0]
    return 0.5 * (
        torch.trace(inv @ s)
        + (mean - m) @ inv @ (mean - m)
        - d
        + torch.logdet(cov)
        - torch.logdet(s)
    )


def test_truncated_rounds_beat_one_round_of_the_same_budget():
    # A wide prior and a narrow likelihood: x = theta + N(0, 0.3^2 I), theta ~
    # N(0, 3^2 I). The posterior is 10 times narrower than the prior, so one
    # round spends most simulations far from it; truncated rounds do not.
    torch.manual_seed(0)
    dim, budget, rounds = 2, 900, 3
    prior = MultivariateNormal(torch.zeros(dim), 9.0 * torch.eye(dim))
    noise = 0.09 * torch.eye(dim)

    def simulate(theta):
        return theta + 0.3 * torch.randn_like(theta)

    x_o = torch.tensor([[1.5, -2.0]])
    mean, cov = linear_gaussian_posterior(
        torch.zeros(dim), 9.0 * torch.eye(dim), torch.eye(dim), noise, x_o
    )
    mean, cov = mean.float(), cov.float()

    def train(proposal_rounds: int, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        inference = DiffusionNPE(prior, show_progress_bars=False)
        proposal = prior
        for round_index in range(proposal_rounds):
            theta = proposal.sample((budget // proposal_rounds,))
            inference.append_simulations(theta, simulate(theta), proposal=proposal)
            inference.train(force_first_round_loss=True, seed=seed)
            posterior = inference.build_posterior().set_default_x(x_o)
            if round_index + 1 < proposal_rounds:
                accept = get_density_thresholder(
                    posterior, quantile=1e-3, num_samples_to_estimate_support=2_000
                )
                proposal = RestrictedPrior(prior, accept, sample_with="rejection")
        return posterior.sample((2000,), show_progress_bars=False)

    one_round = _gaussian_kl(train(1, 0), mean, cov)
    truncated = _gaussian_kl(train(rounds, 0), mean, cov)
    assert truncated < one_round, (float(truncated), float(one_round))


def _gaussian_samples(num: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    mean = torch.tensor([1.0, -2.0])
    scale = torch.tensor([[0.5, 0.0], [0.4, 0.2]])
    draws = mean + torch.randn(num, 2, generator=generator) @ scale.T
    return draws, mean, scale


@pytest.mark.parametrize("shape", ["box", "ellipsoid"])
def test_sample_region_holds_the_posterior_mass(shape):
    samples, _, _ = _gaussian_samples(20_000)
    region = SampleRegion(samples, shape=shape, quantile=1e-3, margin=0.0)
    fresh, _, _ = _gaussian_samples(200_000, seed=1)
    outside = 1.0 - region(fresh).float().mean()
    # the 1e-3 quantile from 20,000 samples: 20 samples in the tail
    assert outside < 3e-3, float(outside)
    wider = SampleRegion(samples, shape=shape, quantile=1e-3, margin=0.2)
    assert wider(fresh).float().mean() >= region(fresh).float().mean()
    assert region(samples).dtype == torch.bool


def test_ellipsoid_is_tighter_than_the_box_on_a_correlated_posterior():
    samples, _, _ = _gaussian_samples(20_000)
    prior = MultivariateNormal(torch.zeros(2), 9.0 * torch.eye(2))
    draws = prior.sample((200_000,))
    box = SampleRegion(samples, "box", quantile=1e-3)(draws).float().mean()
    ellipsoid = SampleRegion(samples, "ellipsoid", quantile=1e-3)(draws).float().mean()
    assert 0 < ellipsoid < box


def test_sample_region_in_restricted_prior_and_trainer(linear_gaussian):
    prior = linear_gaussian.prior
    samples, _, _ = _gaussian_samples(5_000)
    region = SampleRegion(samples, "box", quantile=1e-3, margin=0.1)
    proposal = RestrictedPrior(prior, region, sample_with="rejection")
    theta = proposal.sample((200,), show_progress_bars=False)
    assert region(theta).all()
    assert proposal_kind(proposal, prior) == TRUNCATED_PRIOR
    inference = DiffusionNPE(prior, show_progress_bars=False)
    inference.append_simulations(theta, linear_gaussian.simulate(theta), proposal)
    record = json.loads(json.dumps(region.to_dict()))
    assert record["shape"] == "box" and len(record["low"]) == 2
    assert (torch.tensor(record["low"]) < torch.tensor(record["high"])).all()
    ellipsoid = SampleRegion(samples, "ellipsoid").to_dict()
    assert json.loads(json.dumps(ellipsoid))["radius2"] > 0


def test_sample_region_errors():
    samples, _, _ = _gaussian_samples(100)
    with pytest.raises(ValueError, match="Unknown region shape 'ball'"):
        SampleRegion(samples, shape="ball")
    with pytest.raises(ValueError, match="quantile"):
        SampleRegion(samples, quantile=1.5)
    with pytest.raises(ValueError, match="margin"):
        SampleRegion(samples, margin=-0.1)
    with pytest.raises(ValueError, match="shape \\(num_samples, dim\\)"):
        SampleRegion(samples[0])
    bad = samples.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        SampleRegion(bad)
    with pytest.raises(ValueError, match="theta must have shape \\(n, 2\\)"):
        SampleRegion(samples)(torch.zeros(4, 3))


def test_sample_thresholder_from_a_trained_posterior(linear_gaussian):
    torch.manual_seed(0)
    _, posterior, _ = _tiny_posterior(
        FlowMatchingNPE, linear_gaussian, 500, max_num_epochs=5
    )
    region = get_sample_thresholder(posterior, num_samples=500, shape="ellipsoid")
    assert region.num_samples == 500
    draws = posterior.sample((200,), show_progress_bars=False)
    assert region(draws).float().mean() > 0.95


@pytest.fixture(scope="module")
def small_posterior():
    """A small DiffusionNPE posterior on x = theta + N(0, 0.5^2 I), theta ~ N(0, I)."""
    torch.manual_seed(0)
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    theta = prior.sample((1000,))
    x = theta + 0.5 * torch.randn_like(theta)
    inference = DiffusionNPE(
        prior, net_kwargs={"width": 32, "depth": 2}, show_progress_bars=False
    )
    inference.append_simulations(theta, x).train(max_num_steps=400, seed=0)
    return prior, inference.build_posterior().set_default_x(torch.tensor([0.3, -0.2]))


def test_density_region_decides_as_the_adaptive_density(small_posterior):
    prior, posterior = small_posterior
    torch.manual_seed(1)
    region = get_density_region(
        posterior, num_samples=2_000, quantile=0.05, num_candidates=400
    )
    record = region.to_dict()
    assert record["candidates_cover_threshold"]
    assert record["cheap_solver"] == {"name": "heun", "steps": 16}
    assert record["band"] == record["cheap_error_max"] >= 0
    json.dumps(record)
    # the threshold is the 5% quantile of the adaptive densities of the samples
    # (up to the samples no candidate check reached, which lie above it)
    torch.manual_seed(2)
    draws = prior.sample((300,))
    adaptive = posterior.log_prob(draws, solver="dopri5")
    expected = adaptive >= region.threshold
    decided = region(draws)
    assert decided.dtype == torch.bool and decided.shape == (300,)
    assert (decided == expected).float().mean() >= 0.99
    assert 0 < region.num_checked < region.num_evaluated == 300
    # about 95% of the posterior's own samples fall inside
    inside = region(posterior.sample((1000,), show_progress_bars=False))
    assert 0.9 < inside.float().mean() < 0.99
    proposal = RestrictedPrior(prior, region, sample_with="rejection")
    assert region(proposal.sample((50,), show_progress_bars=False)).all()


def test_density_region_errors(small_posterior):
    _, posterior = small_posterior
    with pytest.raises(TypeError, match="get_density_thresholder"):
        get_density_region(object())
    with pytest.raises(ValueError, match="quantile"):
        get_density_region(posterior, quantile=0.0)
    with pytest.raises(ValueError, match="cheap_steps"):
        get_density_region(posterior, num_samples=10, cheap_steps=0)
    with pytest.warns(UserWarning, match="num_candidates"):
        get_density_region(posterior, num_samples=500, quantile=0.2, num_candidates=2)


def test_sample_with_log_prob_gives_the_posterior_density(small_posterior):
    prior, posterior = small_posterior
    torch.manual_seed(3)
    theta, log_p = posterior.sample_with_log_prob((300,))
    assert theta.shape == (300, 2) and log_p.shape == (300,)
    assert torch.isfinite(log_p).all()
    adaptive = posterior.log_prob(theta, solver="dopri5")
    error = (log_p - adaptive).abs()
    assert error.median() < 0.15 and error.max() < 1.0
    # the quadrature converges to the adaptive density with more steps
    torch.manual_seed(3)
    theta, log_p = posterior.sample_with_log_prob((300,), steps=80)
    error = (log_p - posterior.log_prob(theta, solver="dopri5")).abs()
    assert error.median() < 0.02
    # the samples are the posterior's: same moments as sample()
    drawn = posterior.sample((2000,), show_progress_bars=False)
    assert torch.allclose(theta.mean(0), drawn.mean(0), atol=0.15)
    with pytest.raises(ValueError, match="sample_batched"):
        posterior.sample_with_log_prob((5,), x=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="steps"):
        posterior.sample_with_log_prob((5,), steps=0)


def test_sample_with_log_prob_refuses_guidance(small_posterior):
    from sbi_diffusion import ConstraintGuidance
    from sbi_diffusion.guidance import interval_constraint

    _, posterior = small_posterior
    guided = posterior.with_guidance(ConstraintGuidance(interval_constraint(low=0.0)))
    with pytest.raises(ValueError, match="guidance"):
        guided.sample_with_log_prob((5,))


def test_density_thresholder_drop_in(small_posterior):
    from sbi_diffusion import get_density_thresholder as ours

    prior, posterior = small_posterior
    torch.manual_seed(4)
    region = ours(posterior, quantile=0.05, num_samples_to_estimate_support=4000)
    record = region.to_dict()
    json.dumps(record)
    assert record["divergence"] == "exact"
    assert record["cheap_steps"] in (8, 16, 32)
    assert record["cheap_steps_requested"] == "auto"
    # the band is the measured error of the cheap pass, with a safety factor
    assert record["band"] == pytest.approx(1.5 * record["cheap_error_max"])
    assert record["band_probes"] > 0
    assert record["cheap_solver"]["steps"] == record["cheap_steps"]
    assert record["checked_solver"] == {"name": "heun", "steps": 64}
    # points outside the enclosing box or ellipsoid are rejected without a
    # density
    assert [r.shape for r in region.enclosing_regions] == ["box", "ellipsoid"]
    seen = region.num_evaluated
    assert not region(torch.tensor([[6.0, 6.0]])).any()
    assert region.num_evaluated == seen
    # the threshold is the 5% quantile of the posterior's densities: about 95%
    # of fresh posterior samples fall inside, and the region decides as the
    # adaptive density does away from the threshold
    inside = region(posterior.sample((2000,), show_progress_bars=False))
    assert 0.92 < inside.float().mean() < 0.98
    draws = prior.sample((300,))
    adaptive = posterior.log_prob(draws, solver="dopri5")
    clear = (adaptive - region.threshold).abs() > 0.2
    assert (region(draws)[clear] == (adaptive >= region.threshold)[clear]).all()
    proposal = RestrictedPrior(prior, region, sample_with="rejection")
    assert region(proposal.sample((50,), show_progress_bars=False)).all()
    # without the cheap pass every point gets the 64-step density, and the
    # decisions agree with the two-pass ones
    torch.manual_seed(4)
    full = ours(
        posterior,
        quantile=0.05,
        num_samples_to_estimate_support=4000,
        cheap_steps=None,
    )
    assert full.band == 0.0 and full.threshold == region.threshold
    assert (full(draws) == region(draws)).all()
    # "auto" (the default) measures each candidate cheap pass on the same
    # probes and takes the one of least expected steps per point; a fixed
    # cheap pass decides alike
    auto = region
    record = auto.build_record
    candidates = record["cheap_step_candidates"]
    assert [c["cheap_steps"] for c in candidates] == [8, 16, 32]
    for c in candidates:
        assert c["expected_steps"] == pytest.approx(
            c["cheap_steps"] + 64 * c["fraction_in_band"]
        )
        assert c["band"] == pytest.approx(1.5 * c["cheap_error_max"])
    best = min(candidates, key=lambda c: c["expected_steps"])
    assert (
        record["cheap_steps"]
        == best["cheap_steps"]
        == auto.cheap_solver.options["steps"]
    )
    assert record["cheap_steps_requested"] == "auto" and auto.band == best["band"]
    torch.manual_seed(4)
    eight = ours(
        posterior, quantile=0.05, num_samples_to_estimate_support=4000, cheap_steps=8
    )
    assert eight.build_record["cheap_steps"] == 8 and eight.cheap_solver.options == {
        "steps": 8
    }
    assert "cheap_step_candidates" not in eight.build_record
    assert (eight(draws) == full(draws)).all()
    # Hutchinson's estimate with probes in the posterior's eigenbasis
    noisy = ours(
        posterior,
        quantile=0.05,
        num_samples_to_estimate_support=4000,
        divergence="hutchinson",
    )
    assert noisy.build_record["probes"] == "posterior_eigenbasis"
    assert abs(noisy.threshold - region.threshold) < 0.5
    with pytest.raises(TypeError, match="sbi.utils.get_density_thresholder"):
        ours(object())
    with pytest.raises(ValueError, match="quantile"):
        ours(posterior, quantile=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        ours(posterior, num_samples_to_estimate_support=1)
    with pytest.raises(ValueError, match="cheap_steps"):
        ours(posterior, num_samples_to_estimate_support=10, cheap_steps=0)
    with pytest.raises(ValueError, match="'auto'"):
        ours(posterior, num_samples_to_estimate_support=10, cheap_steps="fast")
