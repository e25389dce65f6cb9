"""CUDA path: training and sampling on ``device=DEVICE`` (skipped without CUDA).

Every estimator, every sampler, i.i.d. composition, guidance, the joint model and
the benchmark runner are run once on the GPU; the results must stay on the GPU
and be finite. Accuracy is tested on the CPU elsewhere; here the point is that no
tensor is left on the wrong device.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.distributions import MultivariateNormal

from sbi_diffusion import (
    ConsistencyNPE,
    DiffusionNPE,
    FlowMatchingNPE,
    JointDiffusion,
)
from sbi_diffusion.composition import IID_METHODS
from sbi_diffusion.guidance import (
    ClassifierFreeGuidance,
    ConstraintGuidance,
    LikelihoodTemperature,
    PriorSwap,
    interval_constraint,
)
from sbi_diffusion.samplers import SAMPLERS

pytestmark = pytest.mark.gpu
DEVICE = "cuda"
SMALL_NET = {"width": 32, "depth": 2}


def on_device(tensor: torch.Tensor) -> bool:
    return tensor.device.type == DEVICE


def _gaussian_prior(dim: int = 2) -> MultivariateNormal:
    return MultivariateNormal(
        torch.zeros(dim, device=DEVICE), torch.eye(dim, device=DEVICE)
    )


def _simulations(prior: MultivariateNormal, n: int = 1000):
    theta = prior.sample((n,))
    return theta, theta + 0.1 * torch.randn_like(theta)


@pytest.fixture(scope="module")
def cuda_posteriors():
    """A DiffusionNPE and a FlowMatchingNPE trained on the GPU, with condition
    dropout (so classifier-free guidance and the learned prior score work)."""
    torch.manual_seed(0)
    prior = _gaussian_prior()
    theta, x = _simulations(prior)
    trained = {}
    for cls in (DiffusionNPE, FlowMatchingNPE):
        inference = cls(
            prior,
            device=DEVICE,
            net_kwargs=SMALL_NET,
            condition_dropout=0.1,
            show_progress_bars=False,
        )
        estimator = inference.append_simulations(theta, x).train(max_num_epochs=3)
        assert on_device(next(estimator.parameters()))
        trained[cls.__name__] = inference.build_posterior()
    return trained, x


@pytest.mark.parametrize("name", ["DiffusionNPE", "FlowMatchingNPE"])
def test_train_sample_and_log_prob_on_cuda(cuda_posteriors, name):
    trained, x = cuda_posteriors
    posterior = trained[name]
    samples = posterior.sample((500,), x=x[0], show_progress_bars=False)
    assert on_device(samples) and samples.shape == (500, 2)
    log_p = posterior.log_prob(samples[:10], x=x[0])
    assert on_device(log_p) and torch.isfinite(log_p).all()
    batched = posterior.sample_batched((20,), x=x[:3], show_progress_bars=False)
    assert on_device(batched) and batched.shape == (20, 3, 2)
    posterior.set_default_x(x[0])
    assert on_device(posterior.map(num_iter=20, num_to_optimize=10))


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "consistency"])
def test_every_sampler_on_cuda(cuda_posteriors, sampler):
    trained, x = cuda_posteriors
    samples = trained["DiffusionNPE"].sample(
        (200,), x=x[0], sampler=sampler, show_progress_bars=False
    )
    assert on_device(samples) and torch.isfinite(samples).all()


@pytest.mark.parametrize("name", ["DiffusionNPE", "FlowMatchingNPE"])
@pytest.mark.parametrize("method", IID_METHODS)
def test_iid_composition_on_cuda(cuda_posteriors, name, method):
    trained, x = cuda_posteriors
    samples = trained[name].sample(
        (200,),
        x=x[:10],
        iid_method=method,
        iid_options={"covariance_samples": 50},
        show_progress_bars=False,
    )
    assert on_device(samples) and samples.shape == (200, 2)
    assert torch.isfinite(samples).all()


def test_guidance_on_cuda(cuda_posteriors):
    trained, x = cuda_posteriors
    posterior = trained["DiffusionNPE"]
    new_prior = MultivariateNormal(
        torch.full((2,), 0.5, device=DEVICE), 0.5 * torch.eye(2, device=DEVICE)
    )
    guidance = [
        ClassifierFreeGuidance(1.5),
        ConstraintGuidance(interval_constraint(low=0.0)),
        PriorSwap(new_prior),
        LikelihoodTemperature(0.5),
    ]
    for transform in guidance:
        samples = posterior.sample(
            (200,), x=x[0], guidance=transform, show_progress_bars=False
        )
        assert on_device(samples) and torch.isfinite(samples).all(), transform


def test_consistency_training_and_distillation_on_cuda(cuda_posteriors):
    trained, x = cuda_posteriors
    prior = _gaussian_prior()
    theta, sims = _simulations(prior, 500)
    for teacher in (None, trained["DiffusionNPE"]):
        inference = ConsistencyNPE(
            prior, net_kwargs=SMALL_NET, device=DEVICE, show_progress_bars=False
        )
        inference.append_simulations(theta, sims)
        if teacher is None:
            inference.train(max_num_epochs=2, seed=0)
        else:
            inference.distill(teacher, max_num_epochs=2, num_scales=4, seed=0)
        samples = inference.build_posterior().sample(
            (100,), x=x[0], steps=2, show_progress_bars=False
        )
        assert on_device(samples) and torch.isfinite(samples).all()


def test_joint_model_on_cuda():
    torch.manual_seed(0)
    prior = _gaussian_prior()
    theta, x = _simulations(prior)
    x[:50, 0] = float("nan")  # missing values stay marked on the GPU too
    inference = JointDiffusion(
        prior, device=DEVICE, net_kwargs=SMALL_NET, show_progress_bars=False
    )
    inference.append_simulations(theta, x).train(max_num_epochs=2)
    x_o = x[100]
    samples = inference.build_posterior().sample(
        (100,), x=x_o, show_progress_bars=False
    )
    assert on_device(samples) and torch.isfinite(samples).all()
    likelihood = inference.build_likelihood()
    drawn = likelihood.sample((100,), theta=theta[0])
    assert on_device(drawn) and drawn.shape == (100, 2)
    log_p = likelihood.log_prob(drawn[:5], theta=theta[0])
    assert on_device(log_p) and torch.isfinite(log_p).all()
    mask = torch.tensor([True, False, True, True])
    conditional = inference.build_conditional(mask)
    drawn = conditional.sample(
        (100,), condition=torch.tensor([0.1, 0.2, 0.3], device=DEVICE)
    )
    assert on_device(drawn) and torch.isfinite(drawn).all()


def test_benchmark_runner_on_cuda(tmp_path: Path):
    from sbi_diffusion.benchmark import run_benchmark

    frame = run_benchmark(
        tasks=["two_moons"],
        num_simulations=[300],
        methods=["diffusion:max_num_epochs=2", "npe:max_num_epochs=2"],
        observations=[1],
        seeds=[0],
        num_posterior_samples=200,
        device=DEVICE,
        executor="inline",
        output=tmp_path / "rows.jsonl",
        model_cache=tmp_path / "models",
    )
    assert len(frame) == 2
    assert frame["device"].str.startswith(DEVICE).all()
    assert frame["c2st"].notna().all()
    # the GPU-trained models are scored on the CPU from the same cache
    frame = run_benchmark(
        tasks=["two_moons"],
        num_simulations=[300],
        methods=["diffusion:max_num_epochs=2"],
        observations=[2],
        seeds=[0],
        num_posterior_samples=200,
        device="cpu",
        executor="inline",
        output=tmp_path / "rows.jsonl",
        model_cache=tmp_path / "models",
    )
    row = frame[frame["num_observation"] == 2].iloc[0]
    assert row["device"].startswith("cpu") and row["train_device"].startswith(DEVICE)
