"""The pure-torch sir and lotka_volterra simulators against sbibm's definitions."""

import math

import pytest
import torch

from sbi_diffusion.benchmark import simulators
from sbi_diffusion.benchmark.tasks import load_task

pytest.importorskip("sbibm")


@pytest.mark.parametrize(
    ("name", "dim_theta", "dim_x"), [("sir", 2, 10), ("lotka_volterra", 4, 20)]
)
def test_shapes_and_prior(name: str, dim_theta: int, dim_x: int) -> None:
    task = load_task(name)
    torch.manual_seed(0)
    theta = task.sample_prior(200)
    x = task.simulate(theta)
    assert theta.shape == (200, dim_theta)
    assert x.shape == (200, dim_x)
    assert x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert task.get_observation(1).shape == (1, dim_x)
    assert task.get_reference_posterior_samples(1).shape == (10_000, dim_theta)
    # sbibm's log-normal priors.
    loc = task.sbibm_task.prior_params["loc"]
    scale = task.sbibm_task.prior_params["scale"]
    log_theta = task.sample_prior(20_000).log()
    assert torch.allclose(log_theta.mean(0), loc, atol=0.03)
    assert torch.allclose(log_theta.std(0), scale, atol=0.03)


def test_sir_observation_model() -> None:
    torch.manual_seed(0)
    x = simulators.sir_simulator(torch.tensor([[0.4, 0.125]]).repeat(50, 1))
    assert torch.all(x == x.round()) and x.min() >= 0 and x.max() <= 1000
    assert torch.all(x[:, 0] == 0)  # I(0) / N = 1e-6: no positive count expected.
    assert simulators.subsample_times(160.0, 1.0, 17)[-1] == 153.0
    assert len(simulators.subsample_times(20.0, 0.1, 21)) == 10


def test_lotka_volterra_initial_state_noise() -> None:
    torch.manual_seed(0)
    x = simulators.lotka_volterra_simulator(torch.full((4000, 4), 0.5))
    # First prey and predator values are log-normal around 30 and 1, sigma 0.1.
    assert abs(x[:, 0].log().mean().item() - math.log(30.0)) < 0.01
    assert abs(x[:, 10].log().std().item() - 0.1) < 0.01


@pytest.mark.parametrize("name", ["sir", "lotka_volterra"])
def test_rk4_matches_adaptive_solver(name: str) -> None:
    task = load_task(name)
    theta = torch.cat([task.get_true_parameters(k) for k in (1, 2, 3)])
    if name == "sir":
        ours = simulators.sir_trajectories(theta)
        field, u0 = simulators._sir_field, torch.tensor([1e6 - 1.0, 1.0, 0.0])
        times = simulators.subsample_times(160.0, 1.0, 17)
    else:
        ours = simulators.lotka_volterra_trajectories(theta)
        field, u0 = simulators._lv_field, torch.tensor([30.0, 1.0])
        times = simulators.subsample_times(20.0, 0.1, 21)
    reference = simulators._solve_adaptive(field, u0, theta, times)
    scale = reference.abs() + 1e-3
    assert ((ours - reference).abs() / scale).max() < 1e-4


def test_unresolved_trajectories_are_refined() -> None:
    theta = torch.tensor([[4.8, 0.04, 0.7, 0.12], [0.9, 0.05, 0.9, 0.05]])
    _, unresolved = simulators.solve_ode(
        simulators._lv_field,
        simulators._lv_rate,
        torch.tensor([30.0, 1.0]),
        theta,
        simulators.subsample_times(20.0, 0.1, 21),
        0.005,
    )
    assert unresolved.tolist() == [True, False]
    states = simulators.lotka_volterra_trajectories(theta)
    assert torch.isfinite(states).all()


@pytest.mark.parametrize("name", ["sir", "lotka_volterra"])
def test_reference_posterior_reproduces_observations(name: str) -> None:
    """Posterior predictive of sbibm's reference samples covers the observation."""
    task = load_task(name)
    torch.manual_seed(1)
    ranks, misses = [], 0
    for k in range(1, 11):
        theta = task.get_reference_posterior_samples(k)[:1000]
        predictive = task.simulate(theta)
        x_o = task.get_observation(k)[0]
        low = torch.quantile(predictive, 0.001, dim=0)
        high = torch.quantile(predictive, 0.999, dim=0)
        misses += int((~((x_o >= low) & (x_o <= high))).sum())
        below = (predictive < x_o).float().mean(0)
        equal = (predictive == x_o).float().mean(0)
        ranks.append(below + 0.5 * equal)
    # 10 observations x all dimensions inside central 99.9% predictive intervals;
    # one miss in 100-200 checks is within chance.
    assert misses <= 1
    ranks = torch.cat(ranks)
    # Observations are typical draws: their predictive ranks average about 0.5.
    assert 0.4 < ranks.mean().item() < 0.6
    # A wrong model fails the same check: halve every rate.
    wrong = task.simulate(task.get_reference_posterior_samples(1)[:1000] * 0.5)
    x_o = task.get_observation(1)[0]
    low = torch.quantile(wrong, 0.001, dim=0)
    high = torch.quantile(wrong, 0.999, dim=0)
    assert not torch.all((x_o >= low) & (x_o <= high))


def test_bad_parameter_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        simulators.sir_simulator(torch.zeros(3, 3))
