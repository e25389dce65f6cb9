"""Time the truncation regions that need no 10^6 adaptive densities, and check
the density region's decisions against the adaptive solver.

Trains (or loads from the model cache) the default ``DiffusionNPE`` on
``--num-simulations`` of each task and, at observation 1:

- ``get_density_region(posterior, quantile=1e-4, num_samples=N)``: ``N``
  posterior samples, their densities with ``--cheap-steps`` Heun steps (the
  function's default if not given), the 10^4 lowest again with ``dopri5``
  (:mod:`sbi_diffusion.inference.truncation`);
- its decisions on 1,000 prior draws and 1,000 posterior samples against the
  adaptive density (``log_prob(solver="dopri5") >= threshold``), and the time
  of deciding 10^5 prior draws (what ``RestrictedPrior`` pays per 10^5
  proposals);
- ``get_sample_thresholder`` (box, 10^5 samples) and the prior mass of both
  regions (fraction of 10^5 prior draws inside).

Usage:
    python benchmarks/sequential/region_time.py --tasks two_moons \
        --support-samples 1000000 --output benchmarks/sequential/region_time.jsonl
"""

from __future__ import annotations

import argparse
import inspect
import time

import torch
from default_posterior import add_common_arguments, default_posteriors

from sbi_diffusion.benchmark.results import append_row
from sbi_diffusion.inference.truncation import (
    get_density_region,
    get_sample_thresholder,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(
        parser, ["two_moons"], "benchmarks/sequential/region_time.jsonl"
    )
    parser.add_argument(
        "--cheap-steps",
        type=int,
        default=inspect.signature(get_density_region).parameters["cheap_steps"].default,
    )
    args = parser.parse_args()
    for default in default_posteriors(args):
        task, posterior = default.task, default.posterior
        torch.manual_seed(0)
        start = time.perf_counter()
        region = get_density_region(
            posterior,
            num_samples=args.support_samples,
            quantile=1e-4,
            cheap_steps=args.cheap_steps,
        )
        region_s = time.perf_counter() - start
        build = region.to_dict()
        prior_draws = task.prior.sample((1000,))
        own = posterior.sample((1000,), show_progress_bars=False)
        agreement = {}
        for name, points in (("prior", prior_draws), ("posterior", own)):
            adaptive = posterior.log_prob(points, solver="dopri5") >= region.threshold
            decided = region(points)
            agreement[name] = {
                "agree": float((decided == adaptive).float().mean()),
                "inside_adaptive": float(adaptive.float().mean()),
                "inside_region": float(decided.float().mean()),
            }
        many = task.prior.sample((100_000,))
        checked_before = region.num_checked
        start = time.perf_counter()
        inside_density = float(region(many).float().mean())
        decide_s = time.perf_counter() - start
        checked_many = region.num_checked - checked_before
        start = time.perf_counter()
        box = get_sample_thresholder(posterior, num_samples=100_000, quantile=1e-4)
        box_s = time.perf_counter() - start
        row = default.row(
            args,
            density_region_s=round(region_s, 2),
            density_region=build,
            agreement_with_dopri5=agreement,
            decide_1e5_prior_draws_s=round(decide_s, 2),
            checked_of_1e5_prior_draws=checked_many,
            prior_mass_density_region=inside_density,
            box_region_s=round(box_s, 2),
            prior_mass_box_region=float(box(many).float().mean()),
        )
        append_row(args.output, row)
        print(row, flush=True)


if __name__ == "__main__":
    main()
