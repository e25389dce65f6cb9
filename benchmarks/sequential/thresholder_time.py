"""Time the density thresholder of truncated sequential inference on our
posterior: ours (``sbi_diffusion.get_density_thresholder``, densities along the
sampling path) and, with ``--with-sbi``, sbi's ``get_density_thresholder``
(samples, then ``log_prob`` on each).

Trains (or loads from the model cache) the default ``DiffusionNPE`` on
``--num-simulations`` of each task, builds the ``1 - 1e-4`` highest-density
region from ``--support-samples`` posterior samples, and records:

- the seconds of each thresholder;
- the error of the fused densities (``sample_with_log_prob``, the
  thresholder's divergence), of ``log_prob``'s 16 Heun steps on large batches
  and of the region's 64 Heun steps, against the adaptive solver (``dopri5``,
  exact divergence), on 1,000 samples;
- the fraction of 2,000 fresh posterior samples and of 2,000 prior draws that
  the region accepts, and the seconds it takes for the prior draws.

Usage:
    python benchmarks/sequential/thresholder_time.py --tasks two_moons \\
        bernoulli_glm --support-samples 1000000 \\
        --output benchmarks/sequential/thresholder_time.jsonl
"""

from __future__ import annotations

import argparse
import time

import torch
from default_posterior import add_common_arguments, default_posteriors
from sbi.utils import get_density_thresholder as sbi_density_thresholder

from sbi_diffusion import get_density_thresholder
from sbi_diffusion.benchmark.results import append_row
from sbi_diffusion.density import LARGE_BATCH_HEUN_STEPS
from sbi_diffusion.inference.density_thresholder import posterior_covariance_basis
from sbi_diffusion.samplers import Solver


def error_summary(values: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Median, 99th percentile and largest absolute error, in nats."""
    error = (values - reference).abs()
    return {
        "median": round(float(error.median()), 4),
        "p99": round(float(error.quantile(0.99)), 4),
        "max": round(float(error.max()), 4),
    }


def tail_row(default, args: argparse.Namespace, num_lowest: int = 30) -> dict:
    """The ``num_lowest`` lowest path densities among ``--tail-samples`` samples,
    and the 1e-4 quantiles of the path densities and of ``log_prob``'s 16 Heun
    steps on ``sample()``'s samples (sbi's thresholder), each against the
    adaptive solver."""
    posterior = default.posterior
    divergence = "exact"
    torch.manual_seed(2)
    samples, fused = posterior.sample_with_log_prob(
        (args.tail_samples,), divergence=divergence
    )
    lowest = torch.topk(fused, num_lowest, largest=False).indices
    adaptive = posterior.log_prob(samples[lowest], solver="dopri5")
    errors = {"fused": error_summary(fused[lowest], adaptive)}
    for steps in (16, 64):
        values = posterior.log_prob(samples[lowest], solver=Solver("heun", steps=steps))
        errors[f"heun{steps}"] = error_summary(values, adaptive)
    rank = max(1, int(1e-4 * args.tail_samples))
    drawn = posterior.sample((args.tail_samples,), show_progress_bars=False)
    heun = posterior.log_prob(drawn, solver=Solver("heun", steps=16))
    heun_lowest = torch.topk(heun, num_lowest, largest=False).indices
    heun_adaptive = posterior.log_prob(drawn[heun_lowest], solver="dopri5")
    return default.row(
        args,
        phase="tail",
        tail_samples=args.tail_samples,
        num_lowest=num_lowest,
        lowest_path_density_errors=errors,
        quantile_1e4_path_density=round(float(fused.kthvalue(rank).values), 4),
        quantile_1e4_heun16_on_sample=round(float(heun.kthvalue(rank).values), 4),
        lowest_heun16_on_sample_error=error_summary(heun[heun_lowest], heun_adaptive),
        resolved={"divergence": divergence},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(
        parser,
        ["two_moons", "bernoulli_glm"],
        "benchmarks/sequential/thresholder_time.jsonl",
    )
    parser.add_argument(
        "--with-sbi",
        action="store_true",
        help="also time sbi's get_density_thresholder (slow: two solves)",
    )
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=["thresholder", "tail"],
        default=["thresholder", "tail"],
        help="tail: the densities of the lowest-density samples, which set the "
        "threshold, against dopri5",
    )
    parser.add_argument("--tail-samples", type=int, default=100_000)
    args = parser.parse_args()
    for default in default_posteriors(args):
        if "tail" in args.phases:
            append_row(args.output, tail_row(default, args))
        if "thresholder" not in args.phases:
            continue
        posterior = default.posterior
        torch.manual_seed(0)
        start = time.perf_counter()
        region = get_density_thresholder(
            posterior,
            quantile=1e-4,
            num_samples_to_estimate_support=args.support_samples,
        )
        ours_s = time.perf_counter() - start
        record = region.build_record
        divergence = record["divergence"]
        # accuracy of the fixed-step densities against dopri5, 1,000 samples
        basis = None
        if divergence == "hutchinson":
            basis = posterior_covariance_basis(posterior, posterior.default_x, 10_000)
        torch.manual_seed(1)
        samples, fused = posterior.sample_with_log_prob(
            (1000,), divergence=divergence, probe_basis=basis
        )
        adaptive = posterior.log_prob(samples, solver="dopri5", divergence="exact")
        heun = {
            steps: posterior.log_prob(samples, solver=Solver("heun", steps=steps))
            for steps in (LARGE_BATCH_HEUN_STEPS, record["density_steps"])
        }
        fresh = posterior.sample((2000,), show_progress_bars=False)
        prior_draws = posterior.prior.sample((2000,))
        start = time.perf_counter()
        prior_inside = float(region(prior_draws).float().mean())
        region_s = time.perf_counter() - start
        fields = {
            "thresholder": "sbi_diffusion.get_density_thresholder",
            "thresholder_s": round(ours_s, 2),
            "threshold": round(region.threshold, 4),
            "fused_vs_dopri5_abs_error": error_summary(fused, adaptive),
            **{
                f"heun{steps}_vs_dopri5_abs_error": error_summary(values, adaptive)
                for steps, values in heun.items()
            },
            "posterior_samples_inside_region": float(region(fresh).float().mean()),
            "prior_draws_inside_region": prior_inside,
            "region_s_per_2000_prior_draws": round(region_s, 2),
            "resolved": {
                "divergence": divergence,
                "probes": record["probes"],
                "sample_with_log_prob_steps": record["sample_with_log_prob_steps"],
                "region_log_prob": {
                    "solver": "heun",
                    "steps": record["density_steps"],
                    "divergence": "exact",
                },
                "box_margin": record["box_margin"],
            },
        }
        if args.with_sbi:
            torch.manual_seed(0)
            start = time.perf_counter()
            sbi_accept = sbi_density_thresholder(
                posterior,
                quantile=1e-4,
                num_samples_to_estimate_support=args.support_samples,
            )
            fields["sbi_thresholder_s"] = round(time.perf_counter() - start, 2)
            fields["sbi_posterior_samples_inside_region"] = float(
                sbi_accept(fresh).float().mean()
            )
            fields["sbi_prior_draws_inside_region"] = float(
                sbi_accept(prior_draws).float().mean()
            )
        row = default.row(args, **fields)
        append_row(args.output, row)
        print(row, flush=True)


if __name__ == "__main__":
    main()
