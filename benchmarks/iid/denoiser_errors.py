"""Where the error of a composed posterior comes from (gaussian_linear).

For the gaussian_linear model of ``run_iid.py`` and ``N`` trials of one seed:

1. the single-trial model's sample bias: the mean of 2000 samples of each
   ``p(theta | x_i)`` against the exact ``x_i / 2``, in single-trial posterior
   standard deviations, and the error of the ``N``-trial posterior mean that a
   Gaussian composition of those biased single-trial posteriors would have
   (in ``N``-trial standard deviations);
2. the error of our GAUSS composed denoiser ``x_hat(z, t | x_1..x_N)`` against
   the exact ``N``-trial denoiser, at ``z_t = alpha theta + sigma eps`` with
   ``theta`` from the exact ``N``-trial posterior, per time: the norm of its
   mean over 2000 draws (systematic) and its root mean square, both per
   dimension and in ``N``-trial standard deviations.

3. the composed posterior sampled with GAUSS on the probability-flow ODE
   (``dopri5``) integrated down to ``t_end`` and returned as ``z / alpha``:
   C2ST against 1000 exact samples, the error of its mean (``N``-trial
   standard deviations, rms over dimensions) and its variance ratio, for
   several ``t_end``.

An error of the composed denoiser matters where ``sigma / alpha`` is not much
wider than the ``N``-trial posterior (after that the denoiser barely depends on
``z`` and earlier errors are forgotten), and most where the noise is smallest.

Example:
    python benchmarks/iid/denoiser_errors.py --simulations 100000 --trials 100
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from run_iid import GaussianLinear, train
from sbi.utils.metrics import c2st

from sbi_diffusion.path.gaussian import GaussianDenoiser
from sbi_diffusion.path.vector_field import ode_drift
from sbi_diffusion.samplers.adaptive import dopri5_integrate
from sbi_diffusion.samplers.base import initial_noise

TIMES = (0.001, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
END_TIMES = (0.0, 0.03, 0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--simulations", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache", default=str(Path.home() / ".cache/sbi_diffusion_iid")
    )
    args = parser.parse_args()
    args.estimator = "diffusion"
    torch.set_num_threads(1)
    task = GaussianLinear()
    posterior = train(task, args)
    x = task.observation(args.seed, args.trials)
    n = args.trials
    std_1, var_n = (1 / 20) ** 0.5, 1 / (10 + 10 * n)
    torch.manual_seed(args.seed)

    bias = torch.stack(
        [
            posterior.sample((2000,), x=x_i, show_progress_bars=False).mean(0) - x_i / 2
            for x_i in x
        ]
    )
    composed_shift = var_n * 20 * bias.sum(0) / var_n**0.5
    print(
        f"single-trial sample bias: rms {(bias / std_1).pow(2).mean().sqrt():.3f} "
        f"single-trial std; Gaussian composition of the biased single-trial "
        f"posteriors: mean error {composed_shift.pow(2).mean().sqrt():.2f} "
        f"{n}-trial std (rms over dimensions)"
    )

    estimator = posterior.estimator
    schedule = estimator.schedule
    shift = estimator._theta_shift.reshape(-1)
    scale = estimator._theta_scale.reshape(-1)
    mean_z = (var_n * 10 * x.sum(0) - shift) / scale
    std_z = var_n**0.5 / scale
    exact = GaussianDenoiser(schedule, mean_z, torch.diag(std_z**2))
    composed = posterior.iid_denoiser(x, "gauss")
    print("| t | sigma / alpha | systematic error | rms error |")
    print("|---|---|---|---|")
    for time in TIMES:
        t = torch.full((2000,), time)
        alpha, sigma = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
        theta = mean_z + std_z * torch.randn(2000, task.dim)
        z = alpha * theta + sigma * torch.randn(2000, task.dim)
        with torch.no_grad():
            error = (composed(z, t) - exact(z, t)) / std_z
        systematic = error.mean(0).norm() / task.dim**0.5
        ratio = float(sigma[0, 0] / alpha[0, 0])
        print(
            f"| {time} | {ratio:.3g} | {systematic:.2f} | "
            f"{error.pow(2).mean().sqrt():.2f} |"
        )

    reference = task.reference(x, 1000, args.seed)
    print("| t_end | sigma / alpha | C2ST | mean error | variance ratio |")
    print("|---|---|---|---|---|")
    for t_end in END_TIMES:
        torch.manual_seed(args.seed)
        noise = initial_noise(schedule, (1000, task.dim))
        with torch.no_grad():
            z, _ = dopri5_integrate(
                lambda t, z: ode_drift(schedule, z, t, composed(z, t)),
                noise,
                float(schedule.t_max),
                t_end,
                atol=1e-4,
            )
        end = torch.tensor([t_end])
        alpha, sigma = float(schedule.alpha(end)[0]), float(schedule.sigma(end)[0])
        theta = shift + scale * z / alpha
        mean_error = (theta.mean(0) - var_n * 10 * x.sum(0)) / var_n**0.5
        print(
            f"| {t_end} | {sigma / alpha:.3g} | {c2st(theta, reference):.3f} | "
            f"{mean_error.pow(2).mean().sqrt():.2f} | "
            f"{(theta.var(0) / var_n).mean():.3f} |"
        )


if __name__ == "__main__":
    main()
