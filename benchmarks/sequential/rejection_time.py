"""Time sampling sbi's ``RestrictedPrior`` on our density thresholder, with and
without its cheap first pass and enclosing ellipsoid.

Each new round of truncated sequential inference draws its parameters by
rejection from the prior; every candidate inside the region's enclosing sets
needs a posterior density. Trains (or loads from the model cache) the default
``DiffusionNPE`` on ``--num-simulations`` of each task at observation 1, builds
``sbi_diffusion.get_density_thresholder`` twice from the same support samples,

- ``one_pass``: the box around the support samples, then the 64-step density
  of every candidate inside it (``cheap_steps=None``, the box alone);
- ``two_pass``: the box and the ellipsoid, then 8 Heun steps with the 64-step
  density only within the measured band of the threshold (the default),
- ``two_pass_auto`` (with ``--variants``): the same with ``cheap_steps="auto"``,
  the cheap pass of 8, 16 or 32 steps with the least expected cost,

and records, for ``--draws`` samples of ``RestrictedPrior(prior, region,
sample_with="rejection")`` from each: the seconds, the acceptance rate, the
densities taken and checked, and the fraction of each region's samples that
the other region accepts (the two must decide alike).

Usage:
    python benchmarks/sequential/rejection_time.py --tasks lotka_volterra \\
        bernoulli_glm --num-simulations 2500 --support-samples 200000 \\
        --threads 1 --output benchmarks/sequential/rejection_time.jsonl
"""

from __future__ import annotations

import argparse
import time

import torch
from default_posterior import add_common_arguments, default_posteriors
from sbi.utils import RestrictedPrior

from sbi_diffusion import get_density_thresholder
from sbi_diffusion.benchmark.results import append_row

#: region name -> ``cheap_steps`` of ``get_density_thresholder``
VARIANTS = {"one_pass": None, "two_pass": 8, "two_pass_auto": "auto"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(
        parser,
        ["lotka_volterra", "bernoulli_glm"],
        "benchmarks/sequential/rejection_time.jsonl",
    )
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["one_pass", "two_pass"],
        choices=list(VARIANTS),
        help="regions to time; one_pass is always built (the reference)",
    )
    args = parser.parse_args()
    names = ["one_pass"] + [v for v in args.variants if v != "one_pass"]
    for default in default_posteriors(args):
        regions, build_s = {}, {}
        for name in names:
            torch.manual_seed(1)
            start = time.perf_counter()
            regions[name] = get_density_thresholder(
                default.posterior,
                num_samples_to_estimate_support=args.support_samples,
                cheap_steps=VARIANTS[name],
            )
            build_s[name] = round(time.perf_counter() - start, 3)
        regions["one_pass"].enclosing_regions = regions["one_pass"].enclosing_regions[
            :1
        ]
        drawn, sampling = {}, {}
        for name, region in regions.items():
            torch.manual_seed(2)
            proposal = RestrictedPrior(
                default.task.prior, region, sample_with="rejection"
            )
            start = time.perf_counter()
            drawn[name] = proposal.sample(
                (args.draws,), save_acceptance_rate=True, show_progress_bars=False
            )
            sampling[name] = {
                "sample_s": round(time.perf_counter() - start, 3),
                "acceptance": float(proposal.acceptance_rate),
                "densities": region.num_evaluated,
                "checked": region.num_checked,
                "build_s": build_s[name],
            }
        agreement = {}
        for name in names[1:]:
            agreement[f"one_pass_accepts_{name}_samples"] = float(
                regions["one_pass"](drawn[name]).float().mean()
            )
            agreement[f"{name}_accepts_one_pass_samples"] = float(
                regions[name](drawn["one_pass"]).float().mean()
            )
        fields = {f"{name}_region": regions[name].to_dict() for name in names[1:]}
        row = default.row(
            args,
            draws=args.draws,
            threshold=regions["one_pass"].threshold,
            **fields,
            sampling=sampling,
            agreement=agreement,
        )
        append_row(args.output, row)
        print(default.task_name, sampling, agreement, flush=True)


if __name__ == "__main__":
    main()
