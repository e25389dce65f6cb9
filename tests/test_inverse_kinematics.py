"""The robot-arm task: forward kinematics, reference sampler, benchmark task."""

import math

import pytest
import torch

from sbi_diffusion.benchmark import inverse_kinematics as ik
from sbi_diffusion.benchmark.plan import plan
from sbi_diffusion.benchmark.tasks import check_observation, load_task


def test_forward_kinematics_on_hand_computed_configurations():
    theta = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # straight along the horizontal
            [0.3, 0.0, 0.0, 0.0],  # the same, moved up the rail
            [0.0, math.pi / 2, 0.0, 0.0],  # straight up
            [0.0, 0.0, math.pi / 2, 0.0],  # second joint bent up
            [-0.2, 0.0, 0.0, -math.pi / 2],  # last joint bent down
        ]
    )
    expected_hand = torch.tensor(  # (height, reach)
        [[0.0, 2.0], [0.3, 2.0], [2.0, 0.0], [1.5, 0.5], [-1.2, 1.0]]
    )
    torch.testing.assert_close(
        ik.forward_kinematics(theta), expected_hand, atol=1e-6, rtol=0
    )
    positions = ik.joint_positions(theta[3:4])[0]  # (horizontal, vertical)
    expected = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.5, 1.5]])
    torch.testing.assert_close(positions, expected, atol=1e-6, rtol=0)


def test_simulator_adds_the_noise():
    torch.manual_seed(0)
    theta = torch.zeros(20_000, 4)
    x = ik.simulator(theta)
    assert x.shape == (20_000, 2)
    residual = x - ik.forward_kinematics(theta)
    torch.testing.assert_close(
        residual.std(0), torch.full((2,), ik.NOISE_STD), atol=3e-4, rtol=0
    )


@pytest.mark.parametrize("name", list(ik.CONDITIONALS))
def test_reference_samples_reproduce_the_observation(name):
    conditional = ik.CONDITIONALS[name]
    reference = ik.reference_samples(name, num_samples=2000, num_proposals=400_000)
    assert reference.effective_sample_size >= 2000
    samples = reference.samples
    assert samples.shape == (2000, 3 if conditional.angles_only else 4)
    if conditional.angles_only:
        samples = torch.cat([torch.zeros(2000, 1), samples], dim=1)
    hand = ik.forward_kinematics(samples)
    observed = torch.tensor([conditional.observe_height, conditional.observe_reach])
    if name != "angles":  # the angle marginal drops the offset the hand needs
        error = (hand - torch.tensor(ik.OBSERVATION))[:, observed]
        assert error.mean(0).abs().max() < 2e-3
        assert error.std(0).max() < 0.015
    if conditional.elbow_up:
        assert (torch.sin(samples[:, 2]) >= 0).all()


def test_reference_sampler_matches_plain_likelihood_weighting():
    """With the reach alone observed, prior draws weighted by the likelihood
    (no solved joint, a closed-form weight) agree with the sampler that solves
    for the last angle."""
    torch.manual_seed(1)
    theta = ik.prior().sample((2_000_000,))
    reach = ik.forward_kinematics(theta)[:, 1]
    log_w = -0.5 * ((reach - ik.OBSERVATION[1]) / ik.NOISE_STD) ** 2
    weights = torch.exp(log_w - log_w.max()).double()
    ess = float(weights.sum() ** 2 / (weights**2).sum())
    assert ess > 20_000
    mean = (weights[:, None] * theta.double()).sum(0) / weights.sum()
    second = (weights[:, None] * theta.double() ** 2).sum(0) / weights.sum()
    std = (second - mean**2).sqrt()
    solved = ik.reference_samples("reach_only", num_samples=20_000, seed=2)
    torch.testing.assert_close(solved.samples.mean(0).double(), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(solved.samples.std(0).double(), std, atol=0.02, rtol=0)


def test_two_solved_joints_match_one_solved_joint():
    """The offset-fixed sampler solves the last two joints for the hand; solving
    only the last one for the reach and weighting by the height's likelihood
    gives the same distribution (with a far smaller effective sample size)."""
    two = ik.reference_samples("offset_fixed", num_samples=20_000)
    generator = torch.Generator().manual_seed(3)
    angles = 0.5 * torch.randn(4_000_000, 3, generator=generator, dtype=torch.float64)
    reach = ik.OBSERVATION[1] + ik.NOISE_STD * torch.randn(
        4_000_000, generator=generator, dtype=torch.float64
    )
    log_w = ik._solve_last_joint(angles, reach, generator)
    lengths = torch.tensor(ik.SEGMENT_LENGTHS, dtype=torch.float64)
    height = (lengths * torch.cumsum(angles, 1).sin()).sum(1)
    log_w = log_w - 0.5 * (height / ik.NOISE_STD) ** 2
    weights = torch.exp(log_w - log_w.max())
    assert float(weights.sum() ** 2 / (weights**2).sum()) > 2000
    mean = (weights[:, None] * angles).sum(0) / weights.sum()
    std = ((weights[:, None] * (angles - mean) ** 2).sum(0) / weights.sum()).sqrt()
    torch.testing.assert_close(two.samples.mean(0).double(), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(two.samples.std(0).double(), std, atol=0.05, rtol=0)


def test_reference_sampler_reports_a_small_effective_sample_size():
    with pytest.raises(RuntimeError, match="effective sample size"):
        ik.reference_samples("posterior", num_samples=1000, num_proposals=1000)
    with pytest.raises(ValueError, match="Unknown conditional"):
        ik.reference_samples("elbow_down")


def test_task_loads_and_simulates():
    task = load_task("inverse_kinematics")
    theta = task.sample_prior(5)
    x = task.simulate(theta)
    assert theta.shape == (5, task.dim_parameters) == (5, 4)
    assert x.shape == (5, task.dim_data) == (5, 2)
    assert task.get_observation(1).shape == (1, 2)
    reference = task.get_reference_posterior_samples(1)
    assert reference.shape == (10_000, 4)
    assert torch.unique(reference, dim=0).shape[0] == 10_000


def test_other_observations_are_refused(tmp_path):
    task = load_task("inverse_kinematics")
    for number in (0, 2):
        with pytest.raises(ValueError, match="has one observation, number 1"):
            task.get_observation(number)
        with pytest.raises(ValueError, match="has one observation, number 1"):
            check_observation("inverse_kinematics", number)
    with pytest.raises(ValueError, match="has one observation, number 1"):
        plan(
            ["inverse_kinematics"],
            [1000],
            ["npe"],
            observations=[1, 2],
            output=tmp_path / "rows.jsonl",
        )
    planned = plan(
        ["inverse_kinematics"],
        [1000],
        ["npe"],
        observations=[1],
        output=tmp_path / "rows.jsonl",
    )
    assert [job.observations for job in planned.jobs] == [(1,)]
