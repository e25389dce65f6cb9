"""The hierarchical drift-diffusion model: the Wiener first-passage density
against closed forms, the simulator against the density, and the NUTS
reference's interface."""

import math

import pytest
import torch

from sbi_diffusion.benchmark import drift_diffusion as ddm
from sbi_diffusion.hierarchical.trainer import check_local_prior

CASES = [(0.5, 1.0, 0.5), (-1.2, 1.3, 0.4), (2.0, 0.8, 0.6)]


def lower_probability(nu: float, alpha: float, beta: float) -> float:
    """P(the lower boundary first) for a unit-scale Wiener process with drift
    ``nu`` started at ``beta * alpha`` (e.g. Cox & Miller 1965)."""
    z = beta * alpha
    return (math.exp(-2 * nu * z) - math.exp(-2 * nu * alpha)) / (
        1 - math.exp(-2 * nu * alpha)
    )


def densities(nu, alpha, beta, tau):
    args = [torch.tensor(v, dtype=torch.float64) for v in (nu, alpha, beta)]
    lower = ddm.wiener_log_density(tau, *args, torch.tensor(False)).exp()
    upper = ddm.wiener_log_density(tau, *args, torch.tensor(True)).exp()
    return lower, upper


@pytest.mark.parametrize("nu, alpha, beta", CASES)
def test_density_integrates_to_the_choice_probabilities(nu, alpha, beta):
    tau = torch.linspace(1e-5, 15, 300_001, dtype=torch.float64)
    lower, upper = densities(nu, alpha, beta, tau)
    step = float(tau[1] - tau[0])
    p_lower, p_upper = float(lower.sum()) * step, float(upper.sum()) * step
    assert p_lower + p_upper == pytest.approx(1.0, abs=1e-4)
    assert p_lower == pytest.approx(lower_probability(nu, alpha, beta), abs=1e-4)


def test_small_and_large_time_series_agree_where_both_converge():
    u = torch.linspace(0.3, 3.0, 50, dtype=torch.float64)
    w = torch.full_like(u, 0.35)
    small = ddm._log_small_time(u, w)
    large = ddm._log_large_time(u, w)
    torch.testing.assert_close(small, large, atol=1e-8, rtol=1e-8)


def test_density_is_minus_inf_before_the_non_decision_time_with_finite_gradients():
    tau = torch.tensor([-0.1, 0.0, 0.2, 1.5], dtype=torch.float64)
    nu = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    log_p = ddm.wiener_log_density(
        tau, nu, torch.tensor(1.1).double(), torch.tensor(0.5).double(), tau > 1
    )
    assert torch.isinf(log_p[:2]).all() and torch.isfinite(log_p[2:]).all()
    log_p[2:].sum().backward()
    assert torch.isfinite(nu.grad)


@pytest.mark.parametrize("nu, alpha, beta", CASES[:2])
def test_simulator_matches_the_density(nu, alpha, beta):
    torch.manual_seed(0)
    trials = 20_000
    g = torch.zeros(1, 7)
    g[0, 6] = 5 * math.log(beta / (1 - beta))  # sigmoid(beta_raw / 5) = beta
    t0 = 0.3
    local = torch.tensor([[nu, math.log(alpha), math.log(t0)]])
    x = ddm.simulate_subjects(g, local, trials=trials)[0]
    assert x.shape == (trials, 2)
    assert (x[:, 0] > t0).all()
    p = lower_probability(nu, alpha, beta)
    assert float((x[:, 1] == 0).float().mean()) == pytest.approx(
        p, abs=4 * math.sqrt(p * (1 - p) / trials)
    )
    tau = torch.linspace(1e-5, 15, 150_001, dtype=torch.float64)
    _, upper = densities(nu, alpha, beta, tau)
    mean_upper = float((upper * tau).sum() / upper.sum())
    upper_times = x[x[:, 1] == 1, 0] - t0
    standard_error = float(upper_times.std()) / math.sqrt(len(upper_times))
    assert float(upper_times.mean()) == pytest.approx(
        mean_upper, abs=4 * standard_error + 1e-3
    )


def test_priors_shapes_and_likelihood():
    prior = ddm.global_prior()
    assert check_local_prior(ddm.local_prior, prior) == 3
    g, loc, x = ddm.simulate(4, trials=6)
    assert g.shape == (4, 7) and loc.shape == (4, 3) and x.shape == (4, 6, 2)
    g_shared, _, x_set = ddm.simulate(5, trials=6, global_theta=g[0])
    assert (g_shared == g[0]).all() and x_set.shape == (5, 6, 2)
    locals_ = ddm.local_prior(g[:3, None, :].expand(3, 5, 7)).sample()
    log_lik = ddm.log_likelihood(g[:3], locals_, x_set)
    assert log_lik.shape == (3, 5)


def test_nuts_reference_runs_and_reports():
    torch.manual_seed(0)
    _, _, x = ddm.simulate(2, trials=10, global_theta=ddm.global_prior().mean)
    g, loc, record = ddm.nuts_reference(x, num_samples=10, warmup_steps=10)
    assert g.shape == (10, 7) and loc.shape == (10, 2, 3)
    assert torch.isfinite(g).all() and torch.isfinite(loc).all()
    assert record["num_samples"] == 10 and record["seconds"] > 0
    assert len(record["global_n_eff"]) == 7
