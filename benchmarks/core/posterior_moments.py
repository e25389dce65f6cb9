r"""Where a posterior estimate is off: its mean and spread against the reference.

C2ST says that two sample sets differ, not how. This script draws posterior
samples from trained (or cached) benchmark methods and compares their first two
moments with sbibm's reference samples, per parameter dimension:

.. math::
    e_j = \frac{\bar\theta_j - \bar\theta^{ref}_j}{s^{ref}_j}, \qquad
    r_j = \frac{s_j}{s^{ref}_j},

the mean error in reference standard deviations and the ratio of standard
deviations, and one number for a mean pulled towards the prior's,

.. math::
    \rho = \frac{\langle m^{ref} - \bar\theta,\; m^{ref} - m^{prior}\rangle}
    {\lVert m^{ref} - m^{prior} \rVert^2}

(means scaled by the reference standard deviations): the fraction of the way
from the reference mean back to the prior mean (0: no pull, 1: at the prior
mean, negative: pushed away). A posterior too wide or too narrow shows as
``r_j`` away from 1.

Example (the models come from the benchmark's model cache)::

    python benchmarks/core/posterior_moments.py --task bernoulli_glm \
        --budget 1000 --observations 1 2 3 \
        --methods diffusion flow_matching "diffusion:schedule_kwargs.p_mean=0.0"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sbi_diffusion.benchmark import methods as method_registry
from sbi_diffusion.benchmark.runner import sampling_seed, train_or_load
from sbi_diffusion.benchmark.tasks import load_task


def moment_errors(
    samples: torch.Tensor, reference: torch.Tensor, prior_mean: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-dimension mean error and std ratio, and the pull towards the prior.

    Args:
        samples: ``(n, d)`` posterior samples.
        reference: ``(m, d)`` reference posterior samples.
        prior_mean: ``(d,)`` mean of the prior.

    Returns:
        ``mean_error`` ``(d,)`` (in reference stds), ``std_ratio`` ``(d,)`` and
        ``pull_to_prior`` (a scalar, ``rho`` of the module docstring).
    """
    ref_mean, ref_std = reference.mean(0), reference.std(0)
    error = (samples.mean(0) - ref_mean) / ref_std
    away_from_prior = (ref_mean - prior_mean) / ref_std
    return {
        "mean_error": error,
        "std_ratio": samples.std(0) / ref_std,
        "pull_to_prior": -(error @ away_from_prior) / away_from_prior.square().sum(),
    }


def _row(values: torch.Tensor, signed: bool) -> str:
    form = "{:+.2f}" if signed else "{:.2f}"
    return " ".join(form.format(v) for v in values.tolist())


def main(argv: list[str] | None = None) -> None:
    """Print the moment errors of each method on each observation."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--observations", type=int, nargs="+", default=[1])
    parser.add_argument("--methods", nargs="+", default=["diffusion"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--model-cache", default="outputs/models")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    task = load_task(args.task)
    print(
        "| method | obs. | pull to prior | mean abs. mean error "
        "| mean error per dimension | std ratio per dimension |"
    )
    print("|---|---|---|---|---|---|")
    prior_mean = task.sample_prior(100_000).mean(0)
    for method in args.methods:
        spec = method_registry.parse(method)
        trained = train_or_load(
            args.task,
            task,
            spec,
            args.budget,
            args.seed,
            args.device,
            Path(args.model_cache),
        )
        for num_observation in args.observations:
            reference = task.get_reference_posterior_samples(num_observation)
            torch.manual_seed(sampling_seed(args.seed, num_observation))
            samples = trained.posterior.sample(
                (args.num_samples,),
                x=task.get_observation(num_observation).to(args.device),
                show_progress_bars=False,
            ).cpu()
            errors = moment_errors(samples, reference, prior_mean)
            print(
                f"| `{spec.to_string()}` | {num_observation} | "
                f"{errors['pull_to_prior']:.2f} | "
                f"{errors['mean_error'].abs().mean():.2f} | "
                f"{_row(errors['mean_error'], True)} | "
                f"{_row(errors['std_ratio'], False)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
