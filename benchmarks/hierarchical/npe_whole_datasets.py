r"""sbi's NPE trained on whole data sets of ``G`` groups, beside HierarchicalNPE.

The baseline that needs no composition: sbi's ``NPE`` (MAF, its default) with a
permutation-invariant embedding over the groups
(``PermutationInvariantEmbedding``; each group's ``T x d`` trials flattened and
embedded by an ``FCEmbedding``, mean pooling so that the scale does not grow
with ``G``), trained on simulated data sets of exactly ``G`` groups and
evaluated on the observations of ``gaussian.py`` (seed ``seed + G``) against the
exact global posterior: C2ST of 500 samples, the mean error in posterior
standard deviations and the standard-deviation ratio. ``--budget`` is the
number of single-group simulations: ``budget / G`` data sets (``gaussian.py``
uses 2x10^4 single groups for every ``G``).

    PYTHONPATH=. python benchmarks/hierarchical/npe_whole_datasets.py \
        --out benchmarks/hierarchical/npe_whole_datasets.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from sbi.inference import NPE
from sbi.neural_nets import posterior_nn
from sbi.neural_nets.embedding_nets import FCEmbedding, PermutationInvariantEmbedding
from sbi.utils.metrics import c2st

sys.path.insert(0, str(Path(__file__).parent))
from model import HierarchicalGaussian  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--out", default="benchmarks/hierarchical/npe_whole_datasets.jsonl"
    )
    parser.add_argument("--groups", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--budgets", type=int, nargs="+", default=[20_000])
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = HierarchicalGaussian()
    group_dim = model.trials * model.dim
    for G in args.groups:
        for budget in args.budgets:
            num_datasets = budget // G
            torch.manual_seed(args.seed)
            g = model.global_prior.sample((num_datasets,))
            _, x = model.simulate_groups(g.repeat_interleave(G, 0))
            x = x.reshape(num_datasets, G, group_dim)
            embedding = PermutationInvariantEmbedding(
                FCEmbedding(group_dim, 32, num_hiddens=64),
                trial_net_output_dim=32,
                aggregation_fn="mean",
                output_dim=16,
            )
            inference = NPE(
                model.global_prior,
                density_estimator=posterior_nn("maf", embedding_net=embedding),
                show_progress_bars=False,
            )
            start = time.time()
            inference.append_simulations(g, x).train()
            train_time = time.time() - start
            posterior = inference.build_posterior()
            torch.manual_seed(args.seed + G)  # the observation of gaussian.py
            _, _, x_o = model.observe(G)
            mean, var = model.global_posterior(x_o)
            samples = posterior.sample(
                (args.num_samples,),
                x=x_o.reshape(1, G, group_dim),
                show_progress_bars=False,
            )
            exact = mean + var**0.5 * torch.randn(args.num_samples, model.dim)
            row = {
                "G": G,
                "method": "sbi NPE (maf), whole data sets, mean-pooled set embedding",
                "single_group_simulations": num_datasets * G,
                "datasets": num_datasets,
                "seed": args.seed,
                "c2st": float(c2st(samples, exact)),
                "mean_error_in_std": ((samples.mean(0) - mean) / var**0.5).tolist(),
                "std_ratio": (samples.std(0) / var**0.5).tolist(),
                "train_seconds": train_time,
                "epochs": inference.summary["epochs_trained"][-1],
            }
            with Path(args.out).open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
