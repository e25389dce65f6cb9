"""Benchmark of consistency-model posteriors on sbibm tasks (issue 4).

For each task, at ``--num-simulations`` simulations, trains sbi's NPE, a
``DiffusionNPE`` (defaults), a ``ConsistencyNPE`` by consistency training and a
``ConsistencyNPE`` distilled from that ``DiffusionNPE``; then, for each
observation, draws 10,000 samples and scores them against sbibm's 10,000
reference samples with ``sbibm.metrics.c2st(reference, samples)``. Consistency
models are sampled with 1, 2 and 4 steps; the diffusion model with its default
sampler (Heun, 18 steps) and NPE as usual. Sampling time is the wall time of
``posterior.sample((10_000,), x=x_o)``.

Resumable: rows go to a JSON-lines file and rows already there are skipped;
trained models are cached (``--cache-dir``) so that an interrupted run resumes
without retraining. Example (what produced ``results.jsonl``):

.. code-block:: bash

    PYTHONUNBUFFERED=1 nohup python benchmarks/consistency/run.py \\
        --tasks two_moons --observations 1-2 > benchmarks/consistency/run.log &
    python benchmarks/consistency/run.py --summary
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
TASKS = ("two_moons", "gaussian_mixture", "slcp", "bernoulli_glm")
METHODS = ("diffusion", "ct", "cd", "npe")  # the order in which they run
CONSISTENCY_STEPS = (1, 2, 4)
NUM_SAMPLES = 10_000


def parse_observations(spec: str) -> list[int]:
    """``"1-5"`` or ``"1,3"`` -> observation numbers."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    if not out or min(out) < 1 or max(out) > 10:
        raise ValueError(f"Observations must lie in 1-10, got {spec!r}.")
    return out


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All rows of a JSON-lines file (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def row_key(row: dict[str, Any]) -> tuple:
    return (
        row["task"],
        row["num_simulations"],
        row["method"],
        row["steps"],
        row["num_observation"],
        row["seed"],
    )


def train_or_load(name: str, cache: Path, build, log: list[str]) -> tuple[Any, float]:
    """Train with ``build()`` (returns ``(object, seconds)``) or load the cache."""
    path = cache / f"{name}.pt"
    if path.exists():
        obj, seconds = torch.load(path, weights_only=False)
        log.append(f"loaded {name} from cache")
        return obj, seconds
    obj, seconds = build()
    torch.save((obj, seconds), path)
    return obj, seconds


def run_task(args: argparse.Namespace, task_name: str, done: set) -> None:
    """Train the four estimators on one task and score every missing row."""
    import sbibm
    from sbi.inference import NPE
    from sbibm.metrics import c2st

    from sbi_diffusion import ConsistencyNPE, DiffusionNPE

    observations = parse_observations(args.observations)
    wanted = []
    for method in sorted(args.methods, key=METHODS.index):
        for steps in CONSISTENCY_STEPS if method in ("ct", "cd") else (None,):
            for obs in observations:
                key = (task_name, args.num_simulations, method, steps, obs, args.seed)
                if key not in done:
                    wanted.append((method, steps, obs))
    if not wanted:
        print(f"{task_name}: all rows done")
        return
    task = sbibm.get_task(task_name)
    prior = task.get_prior_dist()
    cache = Path(args.cache_dir) / f"{task_name}_{args.num_simulations}_{args.seed}"
    cache.mkdir(parents=True, exist_ok=True)
    data_path = cache / "data.pt"
    if data_path.exists():
        theta, x = torch.load(data_path)
    else:
        torch.manual_seed(args.seed)
        theta = prior.sample((args.num_simulations,))
        x = task.get_simulator()(theta)
        torch.save((theta, x), data_path)
    log: list[str] = []
    progress = args.progress

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    def build_npe():
        def fit():
            inference = NPE(prior, show_progress_bars=progress)
            inference.append_simulations(theta, x).train()
            return inference.build_posterior()

        return timed(fit)

    def build_diffusion():
        def fit():
            inference = DiffusionNPE(prior, show_progress_bars=progress)
            inference.append_simulations(theta, x)
            inference.train(max_num_epochs=args.diffusion_epochs, seed=args.seed)
            return inference

        return timed(fit)

    def build_ct():
        def fit():
            inference = ConsistencyNPE(prior, show_progress_bars=progress)
            inference.append_simulations(theta, x)
            inference.train(max_num_epochs=args.ct_epochs, seed=args.seed)
            return inference.build_posterior()

        return timed(fit)

    builders = {"npe": build_npe, "ct": build_ct}
    # cache names carry the training budget, so a rerun with other epochs retrains
    epochs = {"ct": args.ct_epochs, "cd": f"{args.diffusion_epochs}_{args.cd_epochs}"}
    posteriors: dict[str, tuple[Any, float]] = {}

    def posterior_for(method: str) -> tuple[Any, float]:
        """Train (or load) the estimator of ``method``, once."""
        if method in posteriors:
            return posteriors[method]
        if method in ("diffusion", "cd"):
            diffusion, diffusion_s = train_or_load(
                f"diffusion_e{args.diffusion_epochs}", cache, build_diffusion, log
            )
            posteriors["diffusion"] = (diffusion.build_posterior(), diffusion_s)

            def build_cd():
                def fit():
                    inference = ConsistencyNPE(prior, show_progress_bars=progress)
                    inference.distill(
                        diffusion, max_num_epochs=args.cd_epochs, seed=args.seed
                    )
                    return inference.build_posterior()

                return timed(fit)

            builders["cd"] = build_cd
        if method not in posteriors:
            name = f"{method}_e{epochs[method]}" if method in epochs else method
            posteriors[method] = train_or_load(name, cache, builders[method], log)
        while log:
            print(f"{task_name}: {log.pop(0)}", flush=True)
        return posteriors[method]

    for method, steps, obs in wanted:
        posterior, train_s = posterior_for(method)
        x_o = task.get_observation(num_observation=obs)
        reference = task.get_reference_posterior_samples(num_observation=obs)
        torch.manual_seed(1000 * args.seed + obs)
        kwargs: dict[str, Any] = {"x": x_o, "show_progress_bars": False}
        if steps is not None:
            kwargs["steps"] = steps
        start = time.perf_counter()
        samples = posterior.sample((NUM_SAMPLES,), **kwargs)
        sample_s = time.perf_counter() - start
        samples = samples.reshape(NUM_SAMPLES, -1)
        nfe = getattr(posterior, "last_nfe", None)
        row: dict[str, Any] = {
            "task": task_name,
            "num_simulations": args.num_simulations,
            "method": method,
            "steps": steps,
            "num_observation": obs,
            "seed": args.seed,
            "c2st": None,
            "sample_s": round(sample_s, 4),
            "nfe": 1.0 if method == "npe" else nfe,
            "train_s": round(train_s, 1),
            "options": {
                "diffusion_epochs": args.diffusion_epochs,
                "ct_epochs": args.ct_epochs,
                "cd_epochs": args.cd_epochs,
            },
            "torch_threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__},
        }
        if torch.isfinite(samples).all():
            row["c2st"] = float(c2st(reference, samples)[0])
        else:
            row["error"] = "non-finite samples"
        with open(args.output, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(
            f"{task_name} obs {obs} {method} steps={steps}: c2st={row['c2st']} "
            f"sample_s={row['sample_s']} nfe={row['nfe']}",
            flush=True,
        )


def summary(path: Path) -> str:
    """Mean C2ST and sampling time per task, method and steps (Markdown)."""
    groups: dict[tuple, list[dict]] = {}
    for row in read_rows(path):
        key = (row["task"], row["method"], row["steps"])
        groups.setdefault(key, []).append(row)
    lines = [
        "| task | method | steps | NFE | observations | mean C2ST | sample s "
        "(10k) | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (task, method, steps), rows in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)
    ):
        scores = [r["c2st"] for r in rows if r["c2st"] is not None]
        times = [r["sample_s"] for r in rows]
        obs = ",".join(str(r["num_observation"]) for r in rows)
        lines.append(
            f"| {task} | {method} | {steps or '-'} | {rows[0]['nfe']:.0f} | {obs} | "
            f"{sum(scores) / max(1, len(scores)):.3f} | "
            f"{sum(times) / len(times):.3f} | {rows[0]['train_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--observations", default="1-5")
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--diffusion-epochs", type=int, default=150)
    parser.add_argument("--ct-epochs", type=int, default=150)
    parser.add_argument("--cd-epochs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(HERE / "results.jsonl"))
    parser.add_argument(
        "--cache-dir",
        default=os.path.join(tempfile.gettempdir(), "sbi_diffusion_consistency"),
    )
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument(
        "--summary", action="store_true", help="print the results table and exit"
    )
    args = parser.parse_args()
    if args.summary:
        print(summary(Path(args.output)))
        return
    torch.set_num_threads(args.threads)
    done = {row_key(r) for r in read_rows(Path(args.output))}
    for task_name in args.tasks:
        run_task(args, task_name, done)
    print(summary(Path(args.output)))


if __name__ == "__main__":
    main()
