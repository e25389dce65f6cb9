"""Ensembles of global models on the hierarchical Gaussian model (model.py).

The composition over ``G`` groups adds up the single-group model's errors that
the groups share (``composition_error.py``). This script trains
``HierarchicalNPE(...).train(global_ensemble_size=K)`` once per seed (``K``
global models on the same simulations, seeds ``seed .. seed + K - 1``) and
composes the mean estimate of the first ``k`` members for each ``k`` in
``--members``, on the configuration of the best rows of ``gaussian.py`` (GAUSS
over all groups, ``dopri5``, noise floor 0.5). Each row: C2ST of 500 global
samples against the exact posterior, mean error and std ratio per coordinate,
seconds. Rows already present (same key) are skipped, so a rerun resumes
(the training is repeated, the scored rows are not).

    PYTHONPATH=. python benchmarks/hierarchical/ensemble.py \\
        --out benchmarks/hierarchical/ensemble.jsonl
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

from sbi_diffusion import HierarchicalNPE  # noqa: E402
from sbi_diffusion.samplers import Solver  # noqa: E402

NOISE_FLOOR = 0.5


def key(row: dict) -> str:
    fields = ("G", "seed", "members", "num_simulations", "max_num_steps")
    return json.dumps({k: row[k] for k in fields}, sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/hierarchical/ensemble.jsonl")
    parser.add_argument("--num-simulations", type=int, default=20_000)
    parser.add_argument("--max-num-steps", type=int, default=10_000)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--covariance-samples", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--groups", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    done = set()
    if out.exists():
        done = {key(json.loads(line)) for line in out.read_text().splitlines()}
    model = HierarchicalGaussian()
    for seed in args.seeds:
        rows = [
            {
                "G": G,
                "seed": seed,
                "members": k,
                "num_simulations": args.num_simulations,
                "max_num_steps": args.max_num_steps,
            }
            for G in args.groups
            for k in args.members
        ]
        rows = [row for row in rows if key(row) not in done]
        if not rows:
            continue
        torch.manual_seed(seed)
        start = time.time()
        g, loc, x = model.simulate(args.num_simulations)
        inference = HierarchicalNPE(model.global_prior, model.local_prior)
        inference.append_simulations(g, loc, x)
        inference.train(
            max_num_steps=args.max_num_steps,
            seed=seed,
            global_ensemble_size=max(args.members),
        )
        train_seconds = time.time() - start
        members = list(inference.global_members)
        for row in rows:
            G, k = row["G"], row["members"]
            torch.manual_seed(seed + G)
            _, _, x_o = model.observe(G)
            mean, var = model.global_posterior(x_o)
            inference.global_members = members[:k]
            posterior = inference.build_posterior(
                sampler=Solver("dopri5"),
                noise_floor=NOISE_FLOOR,
                composition_options={"covariance_samples": args.covariance_samples},
            )
            t0 = time.time()
            samples = posterior.sample((args.num_samples,), x=x_o)
            sample_seconds = time.time() - t0
            exact = mean + var**0.5 * torch.randn(args.num_samples, model.dim)
            finite = torch.isfinite(samples).all(1)
            row.update(
                c2st=float(c2st(samples[finite], exact[: int(finite.sum())])),
                mean_error_in_std=((samples.mean(0) - mean) / var**0.5).tolist(),
                std_ratio=(samples.std(0) / var**0.5).tolist(),
                composition="gauss",
                sampler=Solver("dopri5").as_dict(),
                noise_floor=NOISE_FLOOR,
                nfe_per_sample=posterior.last_info["nfe"],
                sample_seconds=sample_seconds,
                train_seconds_all_members=train_seconds,
                num_samples=args.num_samples,
                covariance_samples=args.covariance_samples,
                threads=args.threads,
                training=members[0].resolved_training,
            )
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                json.dumps(
                    {
                        k_: row[k_]
                        for k_ in (
                            "G",
                            "seed",
                            "members",
                            "c2st",
                            "mean_error_in_std",
                            "std_ratio",
                            "sample_seconds",
                        )
                    }
                ),
                flush=True,
            )
        inference.global_members = members


if __name__ == "__main__":
    main()
