r"""When each noise level of a diffusion model stops improving.

Trains a benchmark method on a task's simulations (the benchmark's seed and
data) without early stopping, keeps the EMA weights at chosen epochs, and for
each prints the denoising loss on fresh test simulations in bins of the noise
level ``sigma / alpha``, and the posterior's moments on sbibm observations
against the reference (mean error in reference standard deviations, std ratio,
pull to the prior: see ``posterior_moments.py``).

With few simulations the bins do not converge together: the low noise levels
overfit while the high ones, where the denoiser learns ``E[theta | x]``, still
improve. That is what ``train(noise_bands=K)`` (per-band early stopping,
:mod:`sbi_diffusion.nets.noise_bands`) acts on.

Example::

    python benchmarks/core/noise_level_convergence.py --task bernoulli_glm \
        --budget 1000 --epochs 60 120 250 450 900 1500 --observations 1 3
"""

from __future__ import annotations

import argparse
import copy

import torch
from posterior_moments import moment_errors  # a sibling: run this as a script

from sbi_diffusion.benchmark import methods as method_registry
from sbi_diffusion.benchmark.runner import seed_everything
from sbi_diffusion.benchmark.tasks import load_task
from sbi_diffusion.model import LossDraws

SIGMA_BIN_EDGES = (1e-3, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 100.0)


class _StopTraining(Exception):
    """Raised by the snapshot tracker after the last requested epoch."""


class _SnapshotTracker:
    """Tracker that keeps the trainer's EMA weights at the requested epochs."""

    def __init__(self, inference, epochs: list[int]):
        self.inference, self.epochs, self.states = inference, epochs, {}

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        if name != "validation_loss" or step not in self.epochs:
            return
        self.states[step] = copy.deepcopy(self.inference._ema.model.state_dict())
        if step == max(self.epochs):
            raise _StopTraining

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def loss_by_noise_level(denoiser, theta, x) -> list[float]:
    """Mean test loss in the bins of ``SIGMA_BIN_EDGES`` (times drawn from the
    training distribution)."""
    with torch.no_grad():
        times = denoiser.schedule.sample_training_times(theta.shape[0])
        point = denoiser.path_point(times)
        level = (point.sigma / point.alpha).reshape(-1)
        loss = denoiser.loss(theta, x, LossDraws(times=times))
    edges = SIGMA_BIN_EDGES
    return [
        float(loss[(level >= lo) & (level < hi)].mean())
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ]


def main(argv: list[str] | None = None) -> None:
    """Train, snapshot, and print one line per snapshot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--method", default="diffusion")
    parser.add_argument("--epochs", type=int, nargs="+", required=True)
    parser.add_argument("--observations", type=int, nargs="+", default=[1])
    parser.add_argument("--num-test", type=int, default=4000)
    parser.add_argument("--num-samples", type=int, default=10_000)
    args = parser.parse_args(argv)

    task = load_task(args.task)
    spec = method_registry.parse(args.method)
    inference, routed = method_registry.build_inference(spec, task.prior, "cpu")
    seed_everything(0)  # the benchmark's training data
    theta = task.sample_prior(args.budget)
    x = task.simulate(theta)
    torch.manual_seed(123)
    test_theta = task.sample_prior(args.num_test)
    test_x = task.simulate(test_theta)
    tracker = _SnapshotTracker(inference, sorted(args.epochs))
    inference._tracker = tracker
    inference.append_simulations(theta, x)
    options = dict(routed.train)
    options["stop_after_epochs"] = 10**9
    try:
        inference.train(show_train_summary=False, **options)
    except _StopTraining:
        pass
    history = inference._summary["validation_loss"]
    best = min(range(len(history)), key=history.__getitem__) + 1
    print(f"validation loss: lowest at epoch {best} of {len(history)}")
    edges = SIGMA_BIN_EDGES
    bins = " ".join(f"[{edges[i]:g}, {edges[i + 1]:g})" for i in range(len(edges) - 1))
    print(f"test loss bins of sigma: {bins}")
    prior_mean = task.sample_prior(100_000).mean(0)
    denoiser = inference._ema.model
    for epoch in sorted(tracker.states):
        denoiser.load_state_dict(tracker.states[epoch])
        losses = loss_by_noise_level(denoiser, test_theta, test_x)
        posterior = method_registry.build_posterior(spec, inference, routed, denoiser)
        line = f"epoch {epoch}: test loss " + " ".join(f"{v:.3f}" for v in losses)
        for num_observation in args.observations:
            reference = task.get_reference_posterior_samples(num_observation)
            torch.manual_seed(num_observation)
            samples = posterior.sample(
                (args.num_samples,),
                x=task.get_observation(num_observation),
                show_progress_bars=False,
            )
            errors = moment_errors(samples, reference, prior_mean)
            line += (
                f" | obs {num_observation}: mean error "
                f"{errors['mean_error'].abs().mean():.2f}, std ratio "
                f"{errors['std_ratio'].mean():.2f}, pull "
                f"{errors['pull_to_prior']:.2f}"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
