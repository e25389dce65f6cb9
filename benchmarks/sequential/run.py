"""Truncated sequential inference (TSNPE) on sbibm tasks, as sbi users run it.

For one observation, each round draws ``theta`` from the current proposal,
simulates, appends with ``proposal=``, trains on all rounds with the first-round
loss, builds the posterior at ``x_o`` and truncates the prior to its
``1 - 1e-4`` highest-density region with sbi's ``get_density_thresholder``
(Deistler et al. 2022, ``--truncation density``) or with ours, which takes
the densities along the sampling paths (``--truncation path_density``, our
posteriors only), or to a box or ellipsoid
around 10^5 posterior samples with ``get_sample_thresholder`` (``--truncation
box`` / ``ellipsoid``), which needs no density. The same loop runs for our
``DiffusionNPE`` and for sbi's ``NPE``. A row records, per round, the
simulation, training and truncation times, the proposal's acceptance rate and
the region, and the final C2ST against sbibm's reference (10,000 samples). Rows
are appended as they finish and a rerun skips the (task, method, observation,
rounds, truncation) already in the output.

Usage:
    python benchmarks/sequential/run.py --tasks two_moons slcp \
        --observations 1 2 --methods diffusion npe --rounds 4 \
        --num-simulations 10000 --truncation box \
        --output benchmarks/sequential/results.jsonl
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from sbi.utils import RestrictedPrior, get_density_thresholder

from sbi_diffusion.benchmark.methods import build_inference, parse
from sbi_diffusion.benchmark.results import append_row, iter_json_lines
from sbi_diffusion.benchmark.runner import (
    device_name,
    package_versions,
    resolved_options,
    seed_everything,
)
from sbi_diffusion.benchmark.tasks import load_task
from sbi_diffusion.inference.density_thresholder import (
    get_density_thresholder as get_path_density_thresholder,
)
from sbi_diffusion.inference.truncation import (
    get_density_region,
    get_sample_thresholder,
)


def done_keys(path: Path) -> set[tuple]:
    """The (task, method, observation, rounds, truncation, retraining) already
    in the output."""
    return {
        (
            row["task"],
            row["method"],
            row["num_observation"],
            row["num_rounds"],
            row.get("truncation", "density"),
            row.get("retrain_from_scratch", False),
        )
        for _, row in iter_json_lines(path)
    }


def run_one(
    task_name: str,
    method: str,
    num_observation: int,
    num_rounds: int,
    num_simulations: int,
    seed: int,
    quantile: float,
    support_samples: int,
    truncation: str,
    region_samples: int,
    retrain_from_scratch: bool,
) -> dict[str, Any]:
    """Run the truncated loop once; return the row."""
    from sbibm.metrics import c2st

    seed_everything(seed + num_observation)
    task = load_task(task_name)
    prior = task.prior
    spec = parse(method)
    inference, routed = build_inference(spec, prior, "cpu")
    x_o = task.get_observation(num_observation)
    per_round = num_simulations // num_rounds
    proposal: Any = prior
    rounds = []
    for index in range(num_rounds):
        start = time.perf_counter()
        if index == 0:
            theta = proposal.sample((per_round,))
        else:
            theta = proposal.sample(
                (per_round,), save_acceptance_rate=True, show_progress_bars=False
            )
        acceptance = getattr(proposal, "acceptance_rate", None)
        x = task.simulate(theta)
        simulate_s = time.perf_counter() - start
        start = time.perf_counter()
        train_options = dict(routed.train)
        if retrain_from_scratch:
            train_options["retrain_from_scratch"] = True
        inference.append_simulations(theta, x, proposal=proposal).train(
            force_first_round_loss=True, **train_options
        )
        posterior = inference.build_posterior().set_default_x(x_o)
        train_s = time.perf_counter() - start
        truncate_s, region = None, None
        if index < num_rounds - 1:
            start = time.perf_counter()
            if truncation == "density":
                accept = get_density_thresholder(
                    posterior,
                    quantile=quantile,
                    num_samples_to_estimate_support=support_samples,
                )
            elif truncation == "path_density":
                accept = get_path_density_thresholder(
                    posterior,
                    quantile=quantile,
                    num_samples_to_estimate_support=support_samples,
                )
                region = {**accept.build_record, "threshold": accept.threshold}
            elif truncation == "density_region":
                accept = get_density_region(posterior, x_o, quantile=quantile)
                region = accept.to_dict()
            else:
                accept = get_sample_thresholder(
                    posterior,
                    x_o,
                    num_samples=region_samples,
                    shape=truncation,
                    quantile=quantile,
                )
                region = accept.to_dict()
            proposal = RestrictedPrior(prior, accept, sample_with="rejection")
            truncate_s = time.perf_counter() - start
        rounds.append(
            {
                "round": index,
                "simulations": per_round,
                "simulate_s": round(simulate_s, 3),
                "train_s": round(train_s, 3),
                "training": dict(getattr(inference, "resolved_training", {}) or {}),
                "truncate_s": None if truncate_s is None else round(truncate_s, 3),
                "region": region,
                "proposal_acceptance": None
                if acceptance is None
                else float(acceptance),
            }
        )
        print(f"{task_name} {method} obs {num_observation}: {rounds[-1]}", flush=True)
    seed_everything(1000 * seed + num_observation)
    start = time.perf_counter()
    samples = posterior.sample(
        (10_000,), x=x_o, show_progress_bars=False, **routed.sample
    )
    sample_s = time.perf_counter() - start
    reference = task.get_reference_posterior_samples(num_observation)
    return {
        "task": task_name,
        "method": method,
        "num_observation": num_observation,
        "num_rounds": num_rounds,
        "num_simulations": per_round * num_rounds,
        "seed": seed,
        "quantile": quantile,
        "truncation": truncation,
        "retrain_from_scratch": retrain_from_scratch,
        "support_samples": support_samples if "density" in truncation else None,
        "region_samples": None if "density" in truncation else region_samples,
        "c2st": float(c2st(reference, samples)[0]),
        "sample_s": round(sample_s, 3),
        "rounds": rounds,
        "resolved": resolved_options(
            spec,
            posterior,
            routed,
            dict(getattr(inference, "resolved_training", {}) or {}),
        ),
        "device": device_name("cpu"),
        "versions": package_versions(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["two_moons"])
    parser.add_argument("--methods", nargs="+", default=["diffusion", "npe"])
    parser.add_argument("--observations", nargs="+", type=int, default=[1])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quantile", type=float, default=1e-4)
    parser.add_argument("--support-samples", type=int, default=1_000_000)
    parser.add_argument(
        "--truncation",
        choices=["density", "path_density", "density_region", "box", "ellipsoid"],
        default="density",
        help="density: sbi's get_density_thresholder; path_density: "
        "sbi_diffusion.get_density_thresholder (densities along the sampling "
        "paths); density_region: get_density_region; box, ellipsoid: "
        "get_sample_thresholder",
    )
    parser.add_argument("--region-samples", type=int, default=100_000)
    parser.add_argument(
        "--retrain-from-scratch",
        action="store_true",
        help="train a new network each round instead of continuing the last",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="benchmarks/sequential/results.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    output = Path(args.output)
    done = done_keys(output)
    for task_name in args.tasks:
        for method in args.methods:
            for obs in args.observations:
                key = (
                    task_name,
                    method,
                    obs,
                    args.rounds,
                    args.truncation,
                    args.retrain_from_scratch,
                )
                if key in done:
                    continue
                row = run_one(
                    task_name,
                    method,
                    obs,
                    args.rounds,
                    args.num_simulations,
                    args.seed,
                    args.quantile,
                    args.support_samples,
                    args.truncation,
                    args.region_samples,
                    args.retrain_from_scratch,
                )
                append_row(output, row)
                print(f"{task_name} {method} obs {obs}: c2st {row['c2st']:.3f}")


if __name__ == "__main__":
    main()
