"""Time sbi's ``get_density_thresholder`` on our posterior, and the error of the
fixed-step density it uses on large batches.

Trains the default ``DiffusionNPE`` on ``--num-simulations`` of each task, then
runs ``get_density_thresholder(posterior, quantile=1e-4,
num_samples_to_estimate_support=N)`` as sbi's truncated-sequential loop does
(``N`` posterior samples, ``log_prob`` on all of them), and compares the
``log_prob`` of ``solver="auto"`` on a large batch (Heun, 16 steps) with the
adaptive solver (``solver="dopri5"``) on 1,000 of the samples.

Usage:
    python benchmarks/sequential/thresholder_time.py --tasks two_moons \
        bernoulli_glm --support-samples 1000000 \
        --output benchmarks/sequential/thresholder_time.jsonl
"""

from __future__ import annotations

import argparse
import time

import torch
from default_posterior import add_common_arguments, default_posteriors
from sbi.utils import get_density_thresholder

from sbi_diffusion.benchmark.results import append_row
from sbi_diffusion.density import LARGE_BATCH_HEUN_STEPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(
        parser,
        ["two_moons", "bernoulli_glm"],
        "benchmarks/sequential/thresholder_time.jsonl",
    )
    args = parser.parse_args()
    for default in default_posteriors(args):
        posterior = default.posterior
        torch.manual_seed(0)
        start = time.perf_counter()
        samples = posterior.sample((args.support_samples,), show_progress_bars=False)
        sample_s = time.perf_counter() - start
        start = time.perf_counter()
        log_p = posterior.log_prob(samples)
        log_prob_s = time.perf_counter() - start
        # what get_density_thresholder does, end to end (it samples again)
        torch.manual_seed(0)
        start = time.perf_counter()
        accept = get_density_thresholder(
            posterior,
            quantile=1e-4,
            num_samples_to_estimate_support=args.support_samples,
        )
        thresholder_s = time.perf_counter() - start
        subset = samples[:1000]
        adaptive = posterior.log_prob(subset, solver="dopri5")
        fixed = log_p[:1000]
        error = (fixed - adaptive).abs()
        inside = float(accept(subset).float().mean())
        row = default.row(
            args,
            sample_s=round(sample_s, 2),
            log_prob_s=round(log_prob_s, 2),
            thresholder_s=round(thresholder_s, 2),
            heun16_vs_dopri5_abs_error_median=round(float(error.median()), 4),
            heun16_vs_dopri5_abs_error_max=round(float(error.max()), 4),
            posterior_samples_inside_region=inside,
            resolved={
                "log_prob_solver": "heun",
                "log_prob_steps": LARGE_BATCH_HEUN_STEPS,
            },
        )
        append_row(args.output, row)
        print(row, flush=True)


if __name__ == "__main__":
    main()
