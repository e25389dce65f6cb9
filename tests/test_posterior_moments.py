"""The moment diagnostic of ``benchmarks/core/posterior_moments.py``."""

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "core" / "posterior_moments.py"


@pytest.fixture(scope="module")
def moment_errors():
    spec = importlib.util.spec_from_file_location("posterior_moments", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.moment_errors


def test_samples_halfway_to_the_prior_mean(moment_errors):
    torch.manual_seed(0)
    std = torch.tensor([0.5, 2.0, 1.0])
    reference = torch.tensor([1.0, -4.0, 2.0]) + std * torch.randn(50_000, 3)
    prior_mean = torch.tensor([0.0, 0.0, 1.0])
    ref_mean = reference.mean(0)
    # the same shape, moved halfway back to the prior mean and 20% wider
    samples = ref_mean + 1.2 * (reference - ref_mean) - 0.5 * (ref_mean - prior_mean)
    errors = moment_errors(samples, reference, prior_mean)
    assert errors["pull_to_prior"].item() == pytest.approx(0.5, abs=1e-4)
    assert torch.allclose(errors["std_ratio"], torch.full((3,), 1.2), atol=1e-4)
    expected = -0.5 * (ref_mean - prior_mean) / reference.std(0)
    assert torch.allclose(errors["mean_error"], expected, atol=1e-4)


def test_unbiased_samples_have_no_pull(moment_errors):
    torch.manual_seed(1)
    reference = 3.0 + torch.randn(20_000, 2)
    errors = moment_errors(reference.clone(), reference, torch.zeros(2))
    assert errors["pull_to_prior"].item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(errors["std_ratio"], torch.ones(2))
