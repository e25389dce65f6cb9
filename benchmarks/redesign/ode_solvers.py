"""Our Dormand-Prince solver against ``zuko.utils.odeint`` on the package's ODEs.

Both integrate with the Dormand-Prince 5(4) pair and one step size for the whole
batch. They differ in the step control: ours uses the RMS error norm per row
(every row meets the tolerance), a PI controller (Gustafsson 1991), Hairer's
first-step heuristic and first-same-as-last (6 network evaluations per step);
zuko uses the max-norm over all entries, an I controller and 7 evaluations per
step. This script measures, on trained models and the same inputs:

* the probability-flow log density (``ode_log_prob``): network evaluations,
  time, and error against a tight-tolerance reference;
* sampling along the probability-flow ODE from fixed noise: evaluations, time,
  and distance of the samples from a tight-tolerance reference.

Usage (one thread, results appended to a JSONL file):

    OMP_NUM_THREADS=1 python benchmarks/redesign/ode_solvers.py \
        --model-cache outputs/quickstart/models \
        --output benchmarks/results/ode_solvers.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import zuko

import sbi_diffusion.samplers.adaptive as adaptive
from sbi_diffusion.benchmark.methods import parse
from sbi_diffusion.benchmark.runner import device_name, package_versions, train_or_load
from sbi_diffusion.benchmark.tasks import load_task
from sbi_diffusion.density import ode_log_prob
from sbi_diffusion.samplers import get_sampler, initial_noise

CASES = (("two_moons", 10_000), ("slcp", 1_000))
TOLERANCES = (1e-3, 1e-5)
REFERENCE_TOLERANCE = 1e-8
NUM_POINTS = 500


class Counting:
    """Counts the rows a right-hand side is evaluated on, per row of the batch."""

    def __init__(self, f, rows: int):
        self.f, self.rows, self.evaluations = f, rows, 0.0

    def __call__(self, t, y):
        self.evaluations += y.shape[0] / self.rows if y.dim() > 1 else 1.0
        return self.f(t, y)


def zuko_integrate(f, y0, t0, t1, rtol=1e-3, atol=1e-6, **_):
    """``dopri5_integrate``'s signature on top of ``zuko.utils.odeint``."""
    with torch.no_grad():
        return zuko.utils.odeint(f, y0, t0, t1, atol=atol, rtol=rtol), 0


def run_with(solver_name: str, call, rows: int):
    """Run ``call()`` with ``solver_name`` as the package's Dormand-Prince
    integrator; returns (result, evaluations per row, seconds)."""
    original = adaptive.dopri5_integrate
    base = zuko_integrate if solver_name == "zuko" else original
    counters: list[Counting] = []

    def integrate(f, y0, t0, t1, **options):
        counter = Counting(f, y0.shape[0] if y0.dim() > 1 else 1)
        counters.append(counter)
        return base(counter, y0, t0, t1, **options)

    adaptive.dopri5_integrate = integrate
    try:
        start = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - start
    finally:
        adaptive.dopri5_integrate = original
    return result, sum(c.evaluations for c in counters), seconds


def measure(task_name: str, budget: int, cache: Path, output: Path) -> None:
    task = load_task(task_name)
    trained = train_or_load(
        task_name, task, parse("diffusion"), budget, 0, "cpu", cache
    )
    posterior = trained.posterior
    x_o = task.get_observation(1)
    torch.manual_seed(0)
    theta = posterior.sample((NUM_POINTS,), x=x_o, show_progress_bars=False)
    denoise = posterior.denoiser_for(posterior._check_x(x_o, allow_batch=False))
    z = posterior.estimator.to_z(theta).reshape(NUM_POINTS, -1)
    sampler = get_sampler("dopri5")
    noise = initial_noise(
        denoise.schedule, (NUM_POINTS, z.shape[1]), torch.Generator().manual_seed(1)
    )
    common = {
        "task": task_name,
        "num_simulations": budget,
        "num_points": NUM_POINTS,
        "device": device_name("cpu"),
        "threads": torch.get_num_threads(),
        "versions": package_versions(),
    }

    def density(tol):
        return lambda: ode_log_prob(denoise, z, rtol=tol, atol=tol)

    def samples(tol):
        return lambda: sampler(denoise, noise, rtol=tol, atol=tol).samples

    for quantity, make in (("log_prob", density), ("sample", samples)):
        reference, _, _ = run_with("ours", make(REFERENCE_TOLERANCE), NUM_POINTS)
        for tol in TOLERANCES:
            for solver in ("ours", "zuko"):
                value, evaluations, seconds = run_with(solver, make(tol), NUM_POINTS)
                error = (value - reference).abs()
                if error.dim() > 1:
                    error = error.norm(dim=1)
                row = {
                    **common,
                    "quantity": quantity,
                    "solver": solver,
                    "tolerance": tol,
                    "evaluations_per_row": evaluations,
                    "seconds": round(seconds, 3),
                    "error_median": float(error.median()),
                    "error_max": float(error.max()),
                }
                print(json.dumps(row))
                with output.open("a") as f:
                    f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-cache", default="outputs/quickstart/models")
    parser.add_argument("--output", default="benchmarks/results/ode_solvers.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for task_name, budget in CASES:
        measure(task_name, budget, Path(args.model_cache), Path(args.output))


if __name__ == "__main__":
    main()
