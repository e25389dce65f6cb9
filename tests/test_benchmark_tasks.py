"""All ten sbibm tasks load and simulate on a current stack, without Julia."""

import os

import pytest
import torch

pytest.importorskip("sbibm")

from sbi_diffusion.benchmark.tasks import (  # noqa: E402
    TASKS,
    check_task_name,
    distribution_to,
    load_task,
)


@pytest.mark.parametrize("name", TASKS)
def test_task_loads_and_simulates(name: str) -> None:
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    task = load_task(name)
    torch.manual_seed(0)
    theta = task.sample_prior(3)
    x = task.simulate(theta)
    assert theta.shape == (3, task.dim_parameters)
    assert x.shape == (3, task.dim_data)
    assert task.get_observation(1).shape == (1, task.dim_data)
    # The prior moves to another device for sbi (meta: no memory, no GPU needed).
    moved = distribution_to(task.prior, "meta")
    assert moved.sample((2,)).device.type == "meta"
    assert task.prior.sample((2,)).device.type == "cpu"


def test_torch_load_is_restored() -> None:
    original = torch.load
    load_task("slcp_distractors").simulate(torch.rand(2, 5))
    assert torch.load is original


def test_unknown_task_and_observation() -> None:
    with pytest.raises(ValueError, match="Unknown task 'moons'"):
        check_task_name("moons")
    with pytest.raises(ValueError, match="observations 1 to 10"):
        load_task("two_moons").get_observation(11)
