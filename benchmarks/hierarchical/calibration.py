r"""Calibration of HierarchicalNPE's global posterior on the hierarchical
Gaussian model (model.py), by simulation-based calibration (Talts et al. 2018).

For each of ``--datasets`` data sets, ``g`` is drawn from the prior and ``G``
groups are simulated from it; ``--num-samples`` posterior samples give the rank
of the true ``g`` per coordinate. Uniform ranks mean a calibrated posterior. A
row per ``G`` records the ranks, a chi-squared test of their uniformity over
``--bins`` bins, the empirical coverage of the central 50% and 90% intervals, and
the same statistics for the exact posterior's samples (the reference, which
shows the spread a perfect posterior has at this number of data sets).

    PYTHONPATH=. python benchmarks/hierarchical/calibration.py \
        --out benchmarks/hierarchical/calibration.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from scipy.stats import chisquare

sys.path.insert(0, str(Path(__file__).parent))
from model import HierarchicalGaussian, train_on_groups  # noqa: E402


def rank_statistics(ranks: torch.Tensor, num_samples: int, bins: int) -> dict:
    """Chi-squared uniformity p-values per coordinate and central-interval
    coverage from ranks ``(datasets, d)`` in ``0..num_samples``."""
    fraction = (ranks.float() + 0.5) / (num_samples + 1)
    coverage = {
        f"coverage_{int(level * 100)}": [
            float(((fraction - 0.5).abs() < level / 2)[:, k].float().mean())
            for k in range(ranks.shape[1])
        ]
        for level in (0.5, 0.9)
    }
    counts = [
        torch.histc(fraction[:, k], bins=bins, min=0.0, max=1.0).tolist()
        for k in range(ranks.shape[1])
    ]
    return {
        "chi2_pvalue": [float(chisquare(c).pvalue) for c in counts],
        **coverage,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/hierarchical/calibration.jsonl")
    parser.add_argument("--groups", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--num-samples", type=int, default=99)
    parser.add_argument("--bins", type=int, default=10)
    parser.add_argument("--num-simulations", type=int, default=20_000)
    parser.add_argument("--max-num-steps", type=int, default=3000)
    parser.add_argument("--covariance-samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = HierarchicalGaussian()
    inference, train_time = train_on_groups(
        model, args.num_simulations, args.max_num_steps, args.seed
    )
    posterior = inference.build_posterior(
        composition_options={"covariance_samples": args.covariance_samples}
    )
    for G in args.groups:
        torch.manual_seed(args.seed + 1000 + G)
        ranks, exact_ranks = [], []
        start = time.time()
        for _ in range(args.datasets):
            g_true, _, x_o = model.observe(G)
            samples = posterior.sample((args.num_samples,), x=x_o)
            ranks.append((samples < g_true).sum(0))
            mean, var = model.global_posterior(x_o)
            exact = mean + var**0.5 * torch.randn(args.num_samples, model.dim)
            exact_ranks.append((exact < g_true).sum(0))
        ranks, exact_ranks = torch.stack(ranks), torch.stack(exact_ranks)
        row = {
            "G": G,
            "datasets": args.datasets,
            "num_samples": args.num_samples,
            "bins": args.bins,
            "noise_floor": posterior.noise_floor,
            "sampler": posterior.sampler.as_dict(),
            "num_simulations": args.num_simulations,
            "max_num_steps": args.max_num_steps,
            "covariance_samples": args.covariance_samples,
            "seed": args.seed,
            "train_seconds": train_time,
            "sample_seconds_per_dataset": (time.time() - start) / args.datasets,
            "learned": rank_statistics(ranks, args.num_samples, args.bins),
            "exact": rank_statistics(exact_ranks, args.num_samples, args.bins),
            "ranks": ranks.tolist(),
        }
        with Path(args.out).open("a") as f:
            f.write(json.dumps(row) + "\n")
        summary = {k: row[k] for k in ("G", "learned", "exact")}
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
