"""CUDA path: training and sampling on ``device="cuda"`` (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from sbi_diffusion import DiffusionNPE, FlowMatchingNPE


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [DiffusionNPE, FlowMatchingNPE])
def test_train_and_sample_on_cuda(cls):
    prior = MultivariateNormal(
        torch.zeros(2, device="cuda"), torch.eye(2, device="cuda")
    )
    theta = prior.sample((1000,))
    x = theta + 0.1 * torch.randn_like(theta)
    inference = cls(prior, device="cuda", show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(max_num_epochs=3)
    assert next(estimator.parameters()).is_cuda
    posterior = inference.build_posterior()
    samples = posterior.sample((500,), x=x[0], show_progress_bars=False)
    assert samples.is_cuda and samples.shape == (500, 2)
    log_p = posterior.log_prob(samples[:10], x=x[0])
    assert log_p.is_cuda and torch.isfinite(log_p).all()
    batched = posterior.sample_batched((20,), x=x[:3], show_progress_bars=False)
    assert batched.shape == (20, 3, 2)
