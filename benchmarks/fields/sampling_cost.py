"""The CPU cost of the U-Net per network layout: one call, pieces, channels-last.

Times, for each grid size ``N``, thread count and layout, drawing 1,000
posterior fields with ``DiffusionNPE(net="unet")`` (``dpm++2m`` with
``--steps`` steps) and one training step (forward and backward of the
denoising loss on a batch of 128). The network's weights do not change the
cost, so the model is trained for a few steps only. Layouts, set through the
constants of :mod:`sbi_diffusion.nets.unet`:

- ``one_call``: the whole batch in one network call, default memory layout
  (the behaviour before pieces);
- ``pieces``: pieces of ``UNet.cpu_rows`` rows, default memory layout;
- ``default``: pieces, and channels-last without gradients from
  ``CPU_CHANNELS_LAST_POINTS`` grid points (the package's default).

Each timing is the best of ``--repeats``. Run it on an otherwise idle machine.

Usage:
    PYTHONPATH=. python benchmarks/fields/sampling_cost.py --sizes 16 32 64 \\
        --threads 1 2 --output benchmarks/fields/sampling_cost.jsonl
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from functools import partial
from pathlib import Path

import torch

from sbi_diffusion import DiffusionNPE
from sbi_diffusion.benchmark.fields import GaussianRandomFieldProblem
from sbi_diffusion.benchmark.results import append_row
from sbi_diffusion.nets import unet as unet_module

sys.path.insert(0, str(Path(__file__).parent))
from posterior_field import unet_kwargs  # noqa: E402
from run_record import machine_record  # noqa: E402

NEVER = 2**62
LAYOUTS = {
    "one_call": {"CPU_ACTIVATION_FLOATS": NEVER, "CPU_CHANNELS_LAST_POINTS": NEVER},
    "pieces": {"CPU_CHANNELS_LAST_POINTS": NEVER},
    "default": {},
}
DEFAULTS = {
    name: getattr(unet_module, name)
    for name in ("CPU_ACTIVATION_FLOATS", "CPU_CHANNELS_LAST_POINTS")
}


def set_layout(layout: str) -> None:
    """Set the U-Net module's CPU constants for ``layout``."""
    for name, value in {**DEFAULTS, **LAYOUTS[layout]}.items():
        setattr(unet_module, name, value)


def best_of(repeats: int, run) -> float:
    """The shortest wall time of ``repeats`` calls of ``run`` (after one warm-up)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def train_step(denoiser, theta, x) -> None:
    """Forward and backward of the denoising loss on the first 128 rows."""
    denoiser.zero_grad()
    denoiser.loss(theta[:128], x[:128]).mean().backward()


def draw_fields(posterior, x_o, num_samples: int, steps: int) -> None:
    """``num_samples`` posterior fields with ``dpm++2m`` and ``steps`` steps."""
    posterior.sample(
        (num_samples,), x=x_o, sampler="dpm++2m", steps=steps, show_progress_bars=False
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 10])
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/fields/sampling_cost.jsonl")
    args = parser.parse_args()
    for size in args.sizes:
        torch.manual_seed(0)
        problem = GaussianRandomFieldProblem(size)
        generator = torch.Generator().manual_seed(0)
        theta = problem.sample_prior(256, generator=generator)
        x = problem.simulate(theta, generator=generator)
        inference = DiffusionNPE(
            problem.prior,
            net="unet",
            net_kwargs=unet_kwargs(size, tuple(args.channels)),
            show_progress_bars=False,
        )
        estimator = inference.append_simulations(theta, x).train(
            max_num_steps=5, training_batch_size=128, seed=0
        )
        posterior = inference.build_posterior()
        _, x_o = problem.observation(1)
        # a trainable copy of the (frozen, averaged) estimator, for the step
        denoiser = copy.deepcopy(estimator).requires_grad_(True)
        net = denoiser.net
        for threads in args.threads:
            torch.set_num_threads(threads)
            for layout in LAYOUTS:
                set_layout(layout)
                row = {
                    "size": size,
                    "threads": threads,
                    "layout": layout,
                    "channels": list(args.channels),
                    "cpu_rows": net.cpu_rows,
                    "num_samples": args.num_samples,
                    "sampler": {"name": "dpm++2m", "steps": list(args.steps)},
                }

                row["train_step_s"] = round(
                    best_of(args.repeats, partial(train_step, denoiser, theta, x)), 4
                )
                for steps in args.steps:
                    draw = partial(draw_fields, posterior, x_o, args.num_samples, steps)
                    row[f"sample_s_{steps}_steps"] = round(
                        best_of(args.repeats, draw), 3
                    )
                row.update(machine_record())
                append_row(args.output, row)
                print(row, flush=True)
    set_layout("default")


if __name__ == "__main__":
    main()
