"""Why drawing from the truncated prior costs so many densities: the shape of
the density region against its enclosing box and ellipsoid.

Sampling ``RestrictedPrior(prior, region, sample_with="rejection")`` takes a
posterior density for every prior draw inside the region's enclosing box and
ellipsoid (``sbi_diffusion.get_density_thresholder``), so its cost per
accepted draw is ``P(enclosing sets) / P(region)`` under the prior. For the
default ``DiffusionNPE`` of each task at observation 1 (trained, or loaded
from ``--model-cache``), this script builds the region from
``--support-samples`` and records:

- the prior mass inside the box, inside box and ellipsoid, and the fraction
  of ``--prior-draws`` prior draws inside both that the region accepts;
- the squared Mahalanobis distances of fresh posterior samples in the
  ellipsoid's metric (quantiles and maximum) beside those of a Gaussian of the
  same dimension: how heavy the model's tails are, which sets the ellipsoid's
  radius;
- the share of the ``--extremes`` most distant support samples that the
  region accepts (were they strays outside it, leaving them out would shrink
  the ellipsoid);
- an ellipsoid drawn in the prior's unbounded space (sbi's
  ``mcmc_transform``: log for a positive support, logit for a box): the share
  of the enclosed draws it keeps, and the region's points it would lose.

Usage:
    python benchmarks/sequential/region_geometry.py --tasks lotka_volterra \\
        --num-simulations 10000 --support-samples 200000 --threads 1 \\
        --output benchmarks/sequential/region_geometry.jsonl
"""

from __future__ import annotations

import argparse
import time

import torch
from default_posterior import add_common_arguments, default_posteriors
from sbi.utils.sbiutils import mcmc_transform
from scipy.stats import chi2

from sbi_diffusion import get_density_thresholder
from sbi_diffusion.benchmark.results import append_row
from sbi_diffusion.inference.truncation import SampleRegion, inside_all

QUANTILES = (0.5, 0.99, 0.9999)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(
        parser, ["lotka_volterra"], "benchmarks/sequential/region_geometry.jsonl"
    )
    parser.add_argument("--prior-draws", type=int, default=400_000)
    parser.add_argument("--extremes", type=int, default=2000)
    args = parser.parse_args()
    for default in default_posteriors(args):
        posterior, prior = default.posterior, default.task.prior
        torch.manual_seed(1)
        start = time.perf_counter()
        region = get_density_thresholder(
            posterior, num_samples_to_estimate_support=args.support_samples
        )
        build_s = time.perf_counter() - start
        box, ellipsoid = region.enclosing_regions
        draws = prior.sample((args.prior_draws,))
        enclosed = draws[inside_all(region.enclosing_regions, draws)]
        start = time.perf_counter()
        accepted = region(enclosed)
        decide_s = time.perf_counter() - start

        samples = posterior.sample((args.support_samples,), show_progress_bars=False)
        distance2 = ellipsoid._mahalanobis2(samples.double())
        dim = samples.shape[1]
        extremes = torch.topk(distance2, args.extremes)
        extremes_inside = region(samples[extremes.indices])

        transform = mcmc_transform(prior)
        unbounded = SampleRegion(
            transform(samples), shape="ellipsoid", quantile=1e-12, margin=0.1
        )
        kept = unbounded(transform(enclosed))
        row = default.row(
            args,
            prior_draws=args.prior_draws,
            build_s=round(build_s, 1),
            threshold=region.threshold,
            cheap_steps=region.build_record.get("cheap_steps"),
            prior_in_box=float(box(draws).float().mean()),
            prior_in_box_and_ellipsoid=enclosed.shape[0] / args.prior_draws,
            region_share_of_enclosed=float(accepted.float().mean()),
            densities_per_accepted_draw=enclosed.shape[0] / max(1, int(accepted.sum())),
            decide_s=round(decide_s, 1),
            ellipsoid_radius2=ellipsoid.radius2,
            sample_distance2_quantiles={
                str(q): float(distance2.quantile(q)) for q in QUANTILES
            },
            sample_distance2_max=float(distance2.max()),
            gaussian_distance2_quantiles={
                str(q): float(chi2.ppf(q, dim)) for q in QUANTILES
            },
            accepted_distance2_max=float(
                ellipsoid._mahalanobis2(enclosed[accepted].double()).max()
            ),
            extremes=args.extremes,
            extremes_inside_region=float(extremes_inside.float().mean()),
            unbounded_ellipsoid_keeps=float(kept.float().mean()),
            unbounded_ellipsoid_loses=int((accepted & ~kept).sum()),
        )
        append_row(args.output, row)
        print(
            default.task_name,
            {
                k: row[k]
                for k in (
                    "prior_in_box_and_ellipsoid",
                    "region_share_of_enclosed",
                    "densities_per_accepted_draw",
                    "sample_distance2_quantiles",
                    "gaussian_distance2_quantiles",
                    "extremes_inside_region",
                    "unbounded_ellipsoid_keeps",
                    "unbounded_ellipsoid_loses",
                )
            },
            flush=True,
        )


if __name__ == "__main__":
    main()
