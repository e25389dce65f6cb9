"""Reference posteriors for i.i.d. trials: likelihoods, and agreement with sbibm's
reference posteriors at one trial."""

import math

import pytest
import torch

pytest.importorskip("sbibm")

from sbi.utils.metrics import c2st  # noqa: E402

from sbi_diffusion.benchmark.iid_references import (  # noqa: E402
    iid_observation,
    iid_reference_posterior,
    slcp_log_likelihood,
    two_moons_log_likelihood,
)
from sbi_diffusion.benchmark.tasks import load_task  # noqa: E402


def test_two_moons_likelihood_is_a_normalised_density() -> None:
    theta = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    grid = torch.linspace(-1.5, 1.5, 1201, dtype=torch.float64)
    x1, x2 = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([x1.flatten(), x2.flatten()], -1)
    log_p = torch.stack(
        [two_moons_log_likelihood(theta, point[None])[0] for point in points[::7]]
    )
    cell = (grid[1] - grid[0]) ** 2
    assert float(log_p.exp().sum() * cell * 7) == pytest.approx(1.0, abs=0.03)


def test_slcp_likelihood_matches_the_gaussian_it_defines() -> None:
    theta = torch.tensor([[0.5, -1.0, 1.2, -0.8, 0.7]], dtype=torch.float64)
    x = torch.randn(3, 8, dtype=torch.float64)
    s1, s2, rho = 1.2**2, 0.8**2, math.tanh(0.7)
    cov = torch.tensor(
        [[s1**2 + 1e-6, rho * s1 * s2], [rho * s1 * s2, s2**2 + 1e-6]],
        dtype=torch.float64,
    )
    gaussian = torch.distributions.MultivariateNormal(theta[0, :2], cov)
    expected = gaussian.log_prob(x.reshape(-1, 2)).sum()
    assert float(slcp_log_likelihood(theta, x)[0]) == pytest.approx(float(expected))
    # sum over trials: two calls on halves add up
    halves = slcp_log_likelihood(theta, x[:1]) + slcp_log_likelihood(theta, x[1:])
    assert torch.allclose(halves, slcp_log_likelihood(theta, x))


def test_iid_observation_starts_with_sbibm_and_is_reproducible() -> None:
    task = load_task("two_moons")
    trials = iid_observation(task, 3, 5)
    assert trials.shape == (5, 2)
    assert torch.equal(trials[:1], task.get_observation(3).reshape(1, -1))
    assert torch.equal(trials, iid_observation(task, 3, 5))
    with pytest.raises(ValueError, match="at least 1"):
        iid_observation(task, 3, 0)


@pytest.mark.parametrize("task_name", ["two_moons", "slcp"])
def test_one_trial_reproduces_the_sbibm_reference(task_name: str) -> None:
    task = load_task(task_name)
    x = iid_observation(task, 1, 1)
    samples = iid_reference_posterior(task_name, x, 1500, seed=1)
    reference = task.get_reference_posterior_samples(1)[:1500]
    assert samples.shape == (1500, task.dim_parameters)
    assert float(c2st(samples, reference)) < 0.56


def test_many_trials_concentrate_at_the_true_parameter() -> None:
    task = load_task("two_moons")
    x = iid_observation(task, 1, 100)
    samples = iid_reference_posterior("two_moons", x, 2000)
    theta_o = task.get_true_parameters(1).reshape(-1)
    # two modes, mirror images under (t1, t2) -> (-t2, -t1)
    mirrored = torch.stack([-theta_o[1], -theta_o[0]])
    distance = torch.minimum(
        (samples - theta_o).norm(dim=-1), (samples - mirrored).norm(dim=-1)
    )
    assert float(distance.max()) < 0.05
    near = (samples - theta_o).norm(dim=-1) < 0.05
    assert 0.45 < float(near.float().mean()) < 0.55


def test_reference_errors() -> None:
    with pytest.raises(ValueError, match="No i.i.d. reference"):
        iid_reference_posterior("sir", torch.zeros(1, 10), 10)
    with pytest.raises(ValueError, match=r"shape \(N, 8\)"):
        iid_reference_posterior("slcp", torch.zeros(3, 2), 10)
