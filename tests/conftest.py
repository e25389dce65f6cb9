"""Shared fixtures: a linear-Gaussian problem with an analytic posterior."""

from __future__ import annotations

import os

import pytest
import torch
from torch.distributions import MultivariateNormal

from sbi_diffusion.path.gaussian import linear_gaussian_posterior

NOTEBOOK_RUNS_LONGEST_FIRST = (
    "00_inverse_kinematics",
    "03_joint_model",
    "04_design_choices",
    "01_quickstart",
    "05_fields",
    "06_hierarchical",
    "02_iid_trials_and_guidance",
)
"""The tutorial runs, longest first (at the test budget, on two CPU cores)."""


def pytest_configure(config):
    """Give each pytest-xdist worker one torch thread.

    With ``-n 2`` on two cores, two workers with two intra-op threads each
    oversubscribe the cores, and torch's threads then wait on each other. The
    notebook kernels the tutorial tests start inherit ``OMP_NUM_THREADS``.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def _run_order(item: pytest.Item) -> int:
    """Position of a tutorial run in :data:`NOTEBOOK_RUNS_LONGEST_FIRST`; every
    other test after them."""
    if item.originalname == "test_notebook_runs":
        for rank, name in enumerate(NOTEBOOK_RUNS_LONGEST_FIRST):
            if name in item.name:
                return rank
    return len(NOTEBOOK_RUNS_LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    """Run the tutorials first, longest first, so that pytest-xdist's workers
    share them and fill the rest of their time with the short tests; skip tests
    marked ``gpu`` when CUDA is not available."""
    items.sort(key=_run_order)  # stable: the other tests keep their order
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
