"""Ensembles of the default DiffusionNPE on sbibm tasks (lever (e) of the
accuracy issue): the mean denoiser of ``K`` trainings on the same simulations.

Each task simulates its budget as the benchmark runner does (the runner's
seed, so member 0 is the runner's default model), then trains ``K`` members
with the package's defaults, member ``k`` with torch seeded by ``1000 + k``
before training (so its initialisation, data split and training noise
differ). For every ensemble size ``K`` in ``--sizes`` the posterior of the
first ``K`` members (:class:`~sbi_diffusion.model.DenoiserEnsemble`, the mean
of their denoised estimates), and for every member in ``--single-members``
that member alone, draws 10,000 samples per observation, scored by sbibm's
C2ST against the reference samples. The single members give the spread of
one training, against which an ensemble's gain is read.

Rows go to ``benchmarks/results/ensembles.jsonl``, one per (task, members,
observation), with the member seeds, their training times and the resolved
sampler. A rerun skips the rows present; trained members are kept in
``--model-cache`` so an interrupted run does not train them again.

Usage:
    python benchmarks/ensembles/run.py --tasks slcp two_moons --sizes 2 4 \
        --single-members 0 1 2 3 --observations 1-5 --model-cache models
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from sbi_diffusion import DiffusionNPE
from sbi_diffusion.benchmark.cli import _int_list
from sbi_diffusion.benchmark.methods import defaults_fingerprint, parse
from sbi_diffusion.benchmark.results import append_row
from sbi_diffusion.benchmark.runner import (
    package_versions,
    protocol_for,
    sampling_seed,
    seed_everything,
)
from sbi_diffusion.benchmark.tasks import load_task
from sbi_diffusion.model import DenoiserEnsemble

HERE = Path(__file__).parent
OUTPUT = HERE.parent / "results" / "ensembles.jsonl"
NUM_POSTERIOR_SAMPLES = 10_000


def member_seed(member: int) -> int | None:
    """Torch seed set before training member ``member`` (None: member 0 keeps
    the state the runner's simulations leave, as the runner does)."""
    return None if member == 0 else 1000 + member


def trained_member(
    task_name: str,
    task: Any,
    theta: torch.Tensor,
    x: torch.Tensor,
    member: int,
    cache: Path | None,
) -> tuple[Any, dict[str, Any]]:
    """Train (or load) member ``member`` of a task's ensemble.

    Returns:
        The trained denoiser and its record (seed, training seconds, resolved
        training).
    """
    path = None
    if cache is not None:
        path = cache / f"ensemble_{task_name}_{theta.shape[0]}_{member}.pt"
        if path.exists():
            saved = torch.load(path, weights_only=False)
            return saved["estimator"], saved["record"]
    seed = member_seed(member)
    if seed is not None:
        torch.manual_seed(seed)
    inference = DiffusionNPE(task.prior, show_progress_bars=False)
    inference.append_simulations(theta, x)
    start, cpu_start = time.perf_counter(), time.process_time()
    estimator = inference.train()
    record = {
        "member": member,
        "torch_seed": seed,
        "train_s": round(time.perf_counter() - start, 3),
        "train_cpu_s": round(time.process_time() - cpu_start, 3),
        "resolved_training": inference.resolved_training,
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"estimator": estimator, "record": record}, path)
    return estimator, record


def row_members(row: dict[str, Any]) -> tuple[int, ...]:
    """The member indices a row's posterior averaged."""
    return tuple(member["member"] for member in row["resolved"]["members"])


def done_rows(output: Path) -> set[tuple[str, tuple[int, ...], int]]:
    """(task, member indices, observation) of the rows already written."""
    if not output.exists():
        return set()
    rows = [json.loads(line) for line in output.read_text().splitlines() if line]
    return {(row["task"], row_members(row), row["num_observation"]) for row in rows}


def run_task(
    task_name: str,
    configurations: list[tuple[int, ...]],
    observations: list[int],
    budget: int,
    output: Path,
    cache: Path | None,
) -> None:
    """Score every configuration (member indices averaged) on every
    observation of one task."""
    from sbibm.metrics import c2st

    done = done_rows(output)
    todo = [
        (chosen, obs)
        for chosen in configurations
        for obs in observations
        if (task_name, chosen, obs) not in done
    ]
    if not todo:
        return
    task = load_task(task_name)
    seed_everything(0)  # the runner's seed 0: its simulations
    theta = task.sample_prior(budget)
    x = task.simulate(theta)
    members, records = [], []
    for member in range(1 + max(max(chosen) for chosen, _ in todo)):
        estimator, record = trained_member(task_name, task, theta, x, member, cache)
        members.append(estimator)
        records.append(record)
        print(f"{task_name}: member {member} trained ({record['train_s']} s)")
    inference = DiffusionNPE(task.prior, show_progress_bars=False)
    spec = parse("diffusion")
    for chosen, obs in todo:
        size = len(chosen)
        posterior = inference.build_posterior(
            DenoiserEnsemble([members[member] for member in chosen])
        )
        seed_everything(sampling_seed(0, obs))
        x_o = task.get_observation(obs)
        start = time.perf_counter()
        samples = posterior.sample(
            (NUM_POSTERIOR_SAMPLES,), x=x_o, show_progress_bars=False
        )
        sample_s = time.perf_counter() - start
        reference = task.get_reference_posterior_samples(obs)[:NUM_POSTERIOR_SAMPLES]
        row = {
            "task": task_name,
            "num_simulations": budget,
            "method": "diffusion",
            "options": {"ensemble_size": size},
            "defaults": defaults_fingerprint(spec),
            "resolved": {
                "sampler": posterior.sampler,
                "sampler_options": dict(posterior.sampler_options),
                "members": [records[member] for member in chosen],
            },
            "seed": 0,
            "num_observation": obs,
            "c2st": float(c2st(reference, samples)[0]),
            "train_s": round(sum(records[member]["train_s"] for member in chosen), 3),
            "sample_s": round(sample_s, 4),
            "nfe": posterior.last_nfe,
            "member_evaluations": posterior.last_nfe * size,
            "versions": package_versions(),
            "protocol": protocol_for(NUM_POSTERIOR_SAMPLES),
        }
        append_row(output, row)
        print(f"{task_name} {chosen} obs={obs}: c2st {row['c2st']:.3f}", flush=True)


def main() -> None:
    """Run the grid of the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["slcp"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--single-members", nargs="*", type=int, default=[0])
    parser.add_argument("--observations", type=_int_list, default=[1, 2, 3, 4, 5])
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-cache", default=None)
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = None if args.model_cache is None else Path(args.model_cache)
    for task_name in args.tasks:
        run_task(
            task_name,
            [(member,) for member in args.single_members]
            + [tuple(range(size)) for size in sorted(args.sizes)],
            args.observations,
            args.budget,
            Path(args.output),
            cache,
        )


if __name__ == "__main__":
    main()
