r"""Complete pooling beside HierarchicalNPE on the hierarchical Gaussian model.

Complete pooling ignores the local parameters: every group is assumed to share
``l_j = g``, so a group's trials are ``x_jk ~ N(g, s_x^2 I)``. The package's
i.i.d. composition then gives ``p(g | x_1..G)`` from a ``DiffusionNPE``
trained on single pooled groups (``T`` trials flattened). Its exact answer,

.. math::
    p_{pool}(g \mid x_{1:G}) = N\Big(\frac{\sum_{jk} x_{jk} / s_x^2}{P},
    \frac{1}{P}\Big), \quad P = \frac{1}{s_g^2} + \frac{G T}{s_x^2},

is too narrow when the groups differ (here by ``s_l = 0.5``). Per ``G`` one row
with the C2ST against the exact hierarchical posterior of the learned and of
the exact pooled posterior, on the observations of ``gaussian.py`` (seed
``seed + G``), with or without GAUSS's noise floor (``--noise-floor``).

    PYTHONPATH=. python benchmarks/hierarchical/complete_pooling.py \
        --out benchmarks/hierarchical/complete_pooling.jsonl [--noise-floor 0.5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from sbi.utils.metrics import c2st

sys.path.insert(0, str(Path(__file__).parent))
from model import HierarchicalGaussian  # noqa: E402

from sbi_diffusion import DiffusionNPE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--out", default="benchmarks/hierarchical/complete_pooling.jsonl"
    )
    parser.add_argument("--groups", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--num-simulations", type=int, default=20_000)
    parser.add_argument("--max-num-steps", type=int, default=3000)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--noise-floor",
        type=float,
        default=None,
        help="GAUSS noise floor of the i.i.d. composition (HierarchicalNPE's "
        "default is 0.5); none if not given",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = HierarchicalGaussian()
    d, T = model.dim, model.trials
    torch.manual_seed(args.seed)
    start = time.time()
    g = model.global_prior.sample((args.num_simulations,))
    x = g[:, None, :] + model.s_x * torch.randn(args.num_simulations, T, d)
    inference = DiffusionNPE(prior=model.global_prior)
    inference.append_simulations(g, x.reshape(-1, T * d))
    inference.train(max_num_steps=args.max_num_steps, seed=args.seed)
    train_seconds = time.time() - start
    posterior = inference.build_posterior()
    for G in args.groups:
        torch.manual_seed(args.seed + G)
        _, _, x_o = model.observe(G)
        mean, var = model.global_posterior(x_o)
        exact = mean + var**0.5 * torch.randn(args.num_samples, d)
        precision = 1 / model.s_g**2 + G * T / model.s_x**2
        pooled_mean = x_o.sum((0, 1)) / model.s_x**2 / precision
        pooled = pooled_mean + precision**-0.5 * torch.randn(args.num_samples, d)
        start = time.time()
        iid_options = (
            {} if args.noise_floor is None else {"noise_floor": args.noise_floor}
        )
        learned = posterior.sample(
            (args.num_samples,), x=x_o.reshape(G, T * d), iid_options=iid_options
        )
        seconds = time.time() - start
        row = {
            "G": G,
            "c2st_learned_pooled_vs_exact": float(c2st(learned, exact)),
            "c2st_exact_pooled_vs_exact": float(c2st(pooled, exact)),
            "c2st_learned_vs_exact_pooled": float(c2st(learned, pooled)),
            "std_ratio_learned": (learned.std(0) / var**0.5).tolist(),
            "std_ratio_exact_pooled": precision**-0.5 / float(var) ** 0.5,
            "mean_error_in_std_learned": ((learned.mean(0) - mean) / var**0.5).tolist(),
            "sample_seconds": seconds,
            "iid": posterior.last_iid_info,
            "noise_floor": args.noise_floor,
            "num_samples": args.num_samples,
            "num_simulations": args.num_simulations,
            "max_num_steps": args.max_num_steps,
            "train_seconds": train_seconds,
            "seed": args.seed,
            "training": inference.resolved_training,
        }
        with Path(args.out).open("a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        print(json.dumps(row, default=str), flush=True)


if __name__ == "__main__":
    main()
