"""Shared fixtures: a linear-Gaussian problem with an analytic posterior."""

from __future__ import annotations

import os

import pytest
import torch
from torch.distributions import MultivariateNormal

from sbi_diffusion.path.gaussian import linear_gaussian_posterior


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` when CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class LinearGaussian:
    """``theta ~ N(m0, S0)``, ``x | theta ~ N(A theta + b, L)``, analytic posterior."""

    def __init__(self, theta_dim: int = 2, x_dim: int = 2, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.prior_mean = torch.full((theta_dim,), 0.5)
        self.prior_cov = torch.eye(theta_dim) * 1.5
        self.matrix = torch.randn(x_dim, theta_dim, generator=g) * 0.7 + torch.eye(
            x_dim, theta_dim
        )
        self.shift = torch.linspace(-0.5, 0.5, x_dim)
        self.noise_cov = torch.eye(x_dim) * 0.3
        self.prior = MultivariateNormal(self.prior_mean, self.prior_cov)

    def simulate(self, theta: torch.Tensor) -> torch.Tensor:
        noise = MultivariateNormal(
            torch.zeros(self.noise_cov.shape[0]), self.noise_cov
        ).sample(theta.shape[:1])
        return theta @ self.matrix.T + self.shift + noise

    def posterior(self, x: torch.Tensor, power: float = 1.0):
        return linear_gaussian_posterior(
            self.prior_mean,
            self.prior_cov,
            self.matrix,
            self.noise_cov,
            x,
            shift=self.shift,
            likelihood_power=power,
        )


@pytest.fixture(scope="session")
def linear_gaussian() -> LinearGaussian:
    return LinearGaussian()


def small_budget() -> bool:
    """Tests may shrink budgets when SBI_DIFFUSION_FAST_TESTS=1."""
    return os.environ.get("SBI_DIFFUSION_FAST_TESTS", "0") == "1"
