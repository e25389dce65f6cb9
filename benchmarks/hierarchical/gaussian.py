"""Benchmark of HierarchicalNPE on the hierarchical Gaussian model (model.py).

For each configuration (number of groups G, composition, sampler, damping,
mini-batch of groups) one row is appended to a JSONL file: the C2ST of the
global posterior's samples against exact ones, the mean absolute error of the
local posterior means (given the sampled g) in local posterior standard
deviations, the timings and all resolved options. ``--groups-per-simulation
k`` trains the global model on data sets of ``k`` groups instead of single
groups. Rows already present (same key) are skipped, so an interrupted run
resumes.

    PYTHONPATH=. python benchmarks/hierarchical/gaussian.py \
        --out benchmarks/hierarchical/results.jsonl
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
from model import HierarchicalGaussian, train_on_groups  # noqa: E402

from sbi_diffusion.samplers import Solver  # noqa: E402

#: (G, composition, sampler, sampler options, damping SNR_0, group batch size,
#: noise floor)
CONFIGS = [
    (10, "gauss", "dopri5", {}, 0.0, None, None),
    (100, "gauss", "dopri5", {}, 0.0, None, None),
    (100, "gauss", "euler_maruyama", {"steps": 200}, 0.0, 20, None),
    (1000, "gauss", "euler_maruyama", {"steps": 200}, 0.0, 100, None),
    (1000, "gauss", "euler_maruyama", {"steps": 200}, 1.0, 100, None),
    (10, "gauss", "dopri5", {}, 0.0, None, 0.5),
    (100, "gauss", "dopri5", {}, 0.0, None, 0.5),
    (1000, "gauss", "dopri5", {}, 0.0, None, 0.5),
    (100, "gauss", "euler_maruyama", {"steps": 200}, 0.0, 20, 0.5),
    (1000, "gauss", "euler_maruyama", {"steps": 200}, 0.0, 100, 0.5),
    # damping and the mini-batch size, with the floor
    (100, "gauss", "dopri5", {}, 1.0, None, 0.5),
    (100, "gauss", "dopri5", {}, 10.0, None, 0.5),
    (100, "gauss", "euler_maruyama", {"steps": 200}, 0.0, 10, 0.5),
    (100, "gauss", "euler_maruyama", {"steps": 200}, 0.0, 50, 0.5),
    (100, "gauss", "euler_maruyama", {"steps": 500}, 0.0, 20, 0.5),
    (1000, "gauss", "dopri5", {}, 1.0, None, 0.5),
    (1000, "gauss", "euler_maruyama", {"steps": 500}, 0.0, 100, 0.5),
    (1000, "gauss", "euler_maruyama", {"steps": 200}, 0.0, 250, 0.5),
]
#: configurations of a global model of data sets of k > 1 groups (B counts
#: blocks of k groups)
BLOCK_CONFIGS = [
    (10, "gauss", "dopri5", {}, 0.0, None, 0.5),
    (100, "gauss", "dopri5", {}, 0.0, None, 0.5),
    (1000, "gauss", "dopri5", {}, 0.0, None, 0.5),
    (1000, "gauss", "dopri5", {}, 0.0, None, None),
    (1000, "gauss", "euler_maruyama", {"steps": 200}, 0.0, 20, 0.5),
]


def key(row: dict) -> str:
    fields = (
        "G",
        "composition",
        "sampler",
        "damping",
        "B",
        "seed",
        "num_simulations",
        "max_num_steps",
    )
    # rows made before the noise floor (blocks of groups, proposals) had none
    return json.dumps(
        {
            **{k: row[k] for k in fields},
            "noise_floor": row.get("noise_floor"),
            "groups_per_simulation": row.get("groups_per_simulation", 1),
            "proposal_scale": row.get("proposal_scale", 1.0),
            "global_options": row.get("global_options", {}),
        },
        sort_keys=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/hierarchical/results.jsonl")
    parser.add_argument("--num-simulations", type=int, default=20_000)
    parser.add_argument("--max-num-steps", type=int, default=3000)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--covariance-samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--groups-per-simulation",
        type=int,
        default=1,
        help="k: train the global model on data sets of k groups (the budget "
        "--num-simulations counts groups)",
    )
    parser.add_argument(
        "--proposal-scale",
        type=float,
        default=1.0,
        help="draw the training data sets' g from the prior widened this many "
        "times (HierarchicalNPE's global_proposal; with --groups-per-simulation)",
    )
    parser.add_argument(
        "--global-options",
        type=json.loads,
        default={},
        help="JSON constructor options of the global model, e.g. '{\"schedule_"
        'kwargs": {"p_mean": 0.5}}\'',
    )
    parser.add_argument(
        "--configs",
        type=int,
        nargs="*",
        default=None,
        help="indices into CONFIGS (or BLOCK_CONFIGS) to run; all if not given",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    done = set()
    if out.exists():
        done = {key(json.loads(line)) for line in out.read_text().splitlines()}
    model = HierarchicalGaussian()
    k = args.groups_per_simulation
    inference, train_time = train_on_groups(
        model,
        args.num_simulations,
        args.max_num_steps,
        args.seed,
        k,
        args.proposal_scale,
        args.global_options,
    )
    configs = CONFIGS if k == 1 else BLOCK_CONFIGS
    if args.configs is not None:
        configs = [configs[i] for i in args.configs]
    for G, comp, sampler, options, damping, batch, floor in configs:
        row = {
            "G": G,
            "composition": comp,
            "sampler": Solver(sampler, **options).as_dict(),
            "damping": damping,
            "B": batch,
            "noise_floor": floor,
            "seed": args.seed,
            "groups_per_simulation": k,
            "num_simulations": args.num_simulations,
            "max_num_steps": args.max_num_steps,
            "proposal_scale": args.proposal_scale,
            "global_options": args.global_options,
        }
        if key(row) in done:
            continue
        torch.manual_seed(args.seed + G)
        _, _, x_o = model.observe(G)
        mean, var = model.global_posterior(x_o)
        posterior = inference.build_posterior(
            composition=comp,
            sampler=Solver(sampler, **options),
            damping=damping,
            group_batch_size=batch,
            noise_floor=floor,
            composition_options={"covariance_samples": args.covariance_samples},
        )
        t0 = time.time()
        samples = posterior.sample((args.num_samples,), x=x_o)
        sample_time = time.time() - t0
        nfe = posterior.last_info["nfe"]
        num_blocks = posterior.last_info["num_blocks"]
        exact = mean + var**0.5 * torch.randn(args.num_samples, model.dim)
        finite = torch.isfinite(samples).all(1)
        score = float(c2st(samples[finite], exact[: int(finite.sum())]))
        t0 = time.time()
        local = posterior.sample_local(samples[:100], x_o)
        local_time = time.time() - t0
        local_mean, local_var = model.local_posterior(samples[:100], x_o)
        local_err = (local.mean(0) - local_mean.mean(0)) / local_var[:, None] ** 0.5
        row.update(
            c2st=score,
            mean_error_in_std=((samples.mean(0) - mean) / var**0.5).tolist(),
            std_ratio=(samples.std(0) / var**0.5).tolist(),
            local_mean_abs_error_in_std=float(local_err.abs().mean()),
            nfe_per_sample=nfe,
            num_blocks=num_blocks,
            sample_seconds=sample_time,
            local_seconds=local_time,
            train_seconds=train_time,
            num_samples=args.num_samples,
            num_simulations=args.num_simulations,
            max_num_steps=args.max_num_steps,
            covariance_samples=args.covariance_samples,
            training=inference.global_inference.resolved_training,
        )
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
