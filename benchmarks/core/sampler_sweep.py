"""Core benchmark: our estimators with every sampler against sbi's defaults.

Trains DiffusionNPE and FlowMatchingNPE once per task (10^4 simulations, seed 0)
and scores several samplers on the same trained model, following the sbibm
protocol (``sbibm.metrics.c2st``, 10,000 samples against the 10,000 reference
samples). Rows go to a JSONL file in the format of ``sbi_diffusion.benchmark``
(``options`` holds the sampler settings), so ``sbi-diffusion-bench report`` reads
it, and an interrupted run resumes: rows already written are skipped, trained
posteriors are cached in ``--cache`` (trained by the runner's ``train_or_load``, so
this folder can be the runner's ``--model-cache``).

sbi's NPE, NPSE and FMPE baselines come from the benchmark runner, e.g.
``sbi-diffusion-bench run --tasks two_moons --budgets 10000 --methods npe npse
fmpe --observations 1-5 --output benchmarks/results/core.jsonl``.

Usage:
    python benchmarks/core/sampler_sweep.py --tasks two_moons \
        --observations 1 2 3 4 5 --output benchmarks/results/core.jsonl
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sbi_diffusion.benchmark.methods import defaults_fingerprint, parse, row_fingerprint
from sbi_diffusion.benchmark.results import append_row, read_rows, row_key
from sbi_diffusion.benchmark.runner import (
    package_versions,
    protocol_for,
    sampling_seed,
    seed_everything,
    train_or_load,
)
from sbi_diffusion.benchmark.tasks import load_task

METHODS = ["diffusion", "flow_matching"]

# (sampler, options): the full sweep; "--samplers" selects a subset.
SAMPLERS: list[tuple[str, dict]] = [
    ("heun", {"steps": 18}),
    ("dpm++2m", {"steps": 20}),
    ("euler_maruyama", {"steps": 500}),
    ("heun", {"steps": 10}),
    ("heun", {"steps": 30}),
    ("dpm++2m", {"steps": 10}),
    ("ddim", {"steps": 50}),
    ("adaptive_sde", {}),
    ("dopri5", {}),
]


def main() -> None:
    from sbibm.metrics import c2st

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["two_moons"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--observations", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--samplers",
        nargs="+",
        default=None,
        help="subset as name:steps (e.g. heun:18 dpm++2m:20 dopri5), optionally "
        "with a time shift of the grid as name:steps:shift (e.g. dpm++2m:20:0.5, "
        "the sampler option time_shift); default all",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="benchmarks/results/core.jsonl")
    parser.add_argument("--cache", default="outputs/models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    samplers = SAMPLERS
    if args.samplers is not None:
        samplers = []
        for text in args.samplers:
            name, _, rest = text.partition(":")
            steps, _, shift = rest.partition(":")
            options = {"steps": int(steps)} if steps else {}
            if shift:
                options["time_shift"] = float(shift)
            samplers.append((name, options))
    done = {(row_key(r), row_fingerprint(r)) for r in read_rows(args.output)}
    versions = package_versions()
    for task_name in args.tasks:
        task = load_task(task_name)
        for method in args.methods:
            posterior, train_s = None, None
            defaults = defaults_fingerprint(parse(method))
            for sampler, options in samplers:
                row_options = {"sampler": sampler, **options}
                for num_observation in args.observations:
                    row = {
                        "task": task_name,
                        "num_simulations": args.num_simulations,
                        "method": method,
                        "options": row_options,
                        "seed": args.seed,
                        "num_observation": num_observation,
                        "defaults": defaults,
                    }
                    if (row_key(row), row["defaults"]) in done:
                        continue
                    if posterior is None:
                        trained = train_or_load(
                            task_name,
                            task,
                            parse(method),
                            args.num_simulations,
                            args.seed,
                            "cpu",
                            cache=Path(args.cache),
                        )
                        posterior, train_s = trained.posterior, trained.train_s
                    seed_everything(sampling_seed(args.seed, num_observation))
                    x_o = task.get_observation(num_observation)
                    start = time.perf_counter()
                    samples = posterior.sample(
                        (10_000,),
                        x=x_o,
                        sampler=sampler,
                        show_progress_bars=False,
                        **options,
                    )
                    sample_s = time.perf_counter() - start
                    reference = task.get_reference_posterior_samples(num_observation)
                    row.update(
                        c2st=float(c2st(reference, samples)[0]),
                        train_s=round(train_s, 3),
                        sample_s=round(sample_s, 4),
                        nfe=posterior.last_nfe,
                        device="cpu",
                        versions=versions,
                        protocol=protocol_for(10_000),
                    )
                    append_row(args.output, row)
                    print(
                        task_name,
                        method,
                        row_options,
                        num_observation,
                        f"c2st={row['c2st']:.3f} sample_s={sample_s:.2f} "
                        f"nfe={row['nfe']:.1f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
