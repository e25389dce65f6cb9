"""Two-step consistency sampling: C2ST against the intermediate noise level.

Multistep consistency sampling (Song et al. 2023, Algorithm 1) maps noise to
``theta`` in one step, noises it again to level ``sigma_1`` and maps it once
more. This script takes trained consistency posteriors from the model cache
(trained by ``benchmarks/consistency/run.sh``) and scores two-step sampling at
several ``sigma_1`` on the sbibm protocol (10,000 samples, sbibm ``c2st``).
Rows go to ``benchmarks/results/consistency_sigma.jsonl`` (resumable).

Example:
    python benchmarks/consistency/intermediate_time.py --task two_moons \\
        --spec consistency:teacher=diffusion --sigmas 0.1 0.25 0.5 1 2 \\
        --observations 1 2 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sbi_diffusion.benchmark import methods, runner
from sbi_diffusion.benchmark.results import append_row, read_rows
from sbi_diffusion.benchmark.tasks import load_task
from sbi_diffusion.consistency import time_for_scaled_sigma

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="two_moons")
    parser.add_argument("--spec", default="consistency:teacher=diffusion")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--model-cache", default="outputs/models")
    parser.add_argument("--output", default=str(RESULTS / "consistency_sigma.jsonl"))
    args = parser.parse_args()
    from sbibm.metrics import c2st

    torch.set_num_threads(1)
    output = Path(args.output)
    done = {
        (r["task"], r["options"]["spec"], r["options"]["sigma_1"], r["num_observation"])
        for r in (read_rows(output) if output.exists() else [])
    }
    task = load_task(args.task)
    spec = methods.parse(args.spec)
    trained = runner.train_or_load(
        args.task, task, spec, args.num_simulations, 0, "cpu", Path(args.model_cache)
    )
    posterior = trained.posterior
    schedule = posterior.estimator.schedule
    for sigma_1 in args.sigmas:
        t_1 = float(time_for_scaled_sigma(schedule, torch.tensor([sigma_1]))[0])
        for obs in args.observations:
            if (args.task, args.spec, sigma_1, obs) in done:
                continue
            runner.seed_everything(runner.sampling_seed(0, obs))
            start = time.perf_counter()
            samples = posterior.sample(
                (10_000,),
                x=task.get_observation(obs),
                times=[t_1],
                show_progress_bars=False,
            )
            sample_s = time.perf_counter() - start
            reference = task.get_reference_posterior_samples(obs)
            row = {
                "task": args.task,
                "num_simulations": args.num_simulations,
                "method": "consistency",
                "options": {"spec": args.spec, "sigma_1": sigma_1, "time": t_1},
                "seed": 0,
                "num_observation": obs,
                "c2st": float(c2st(reference, samples)[0]),
                "train_s": trained.train_s,
                "sample_s": sample_s,
                "nfe": 2.0,
                "device": "cpu",
                "versions": runner.package_versions(),
                "protocol": runner.protocol_for(10_000),
            }
            append_row(output, row)
            shown = ("options", "num_observation", "c2st")
            print(json.dumps({k: row[k] for k in shown}))


if __name__ == "__main__":
    main()
