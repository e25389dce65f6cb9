"""Does ``torch.compile`` pay off for training the default denoiser?

Times one training step (forward, backward, AdamW, EMA) of the default residual
MLP at the sizes the trainer picks for 10^3, 10^4 and 10^5 simulations, eager
against ``torch.compile(net)``, in alternating rounds so both see the same
machine state; and the time of the first compiled step (the compilation). A
compiled training pays off when the steps saved exceed the compilation:
``break_even_steps = first_step_s / (eager_step_s - compiled_step_s)``.

Usage:
    python benchmarks/training_speed/compile_check.py \
        --output benchmarks/training_speed/compile.jsonl
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sbi_diffusion import DiffusionNPE
from sbi_diffusion.benchmark.results import append_row
from sbi_diffusion.benchmark.runner import device_name, package_versions
from sbi_diffusion.inference.optimization import (
    ExponentialMovingAverage,
    make_optimizer,
)


def step_timer(denoiser, theta, x, device):
    """A function that runs ``n`` training steps and returns seconds per step."""
    optimizer = make_optimizer(list(denoiser.parameters()), 1e-4)
    ema = ExponentialMovingAverage(denoiser, 0.999)

    def run(n: int) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            denoiser.loss(theta, x).mean().backward()
            optimizer.step()
            ema.update(denoiser)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / n

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--output", default="benchmarks/training_speed/compile.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    prior = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(5), torch.ones(5)), 1
    )
    theta = prior.sample((256,))
    x = theta.repeat(1, 2) + 0.1 * torch.randn(256, 10)
    for num_simulations in (1_000, 10_000, 100_000):
        inference = DiffusionNPE(prior, show_progress_bars=False, device=args.device)
        inference.append_simulations(theta, x)
        # the network the trainer builds for this budget (5 parameters, 10 data)
        size = inference._resolved_net_kwargs(num_simulations, 5)
        inference._net_kwargs = size
        inference._initialize_neural_network(True, 0)
        eager = inference._neural_net
        compiled = DiffusionNPE(prior, show_progress_bars=False, device=args.device)
        compiled._net_kwargs = size
        compiled.append_simulations(theta, x)._initialize_neural_network(True, 0)
        compiled_denoiser = compiled._neural_net
        start = time.perf_counter()
        compiled_denoiser.net = torch.compile(compiled_denoiser.net)
        th, xx = theta.to(args.device), x.to(args.device)
        run_eager = step_timer(eager, th, xx, args.device)
        run_compiled = step_timer(compiled_denoiser, th, xx, args.device)
        first_step_s = run_compiled(1) + (time.perf_counter() - start)
        run_eager(5)
        run_compiled(5)
        eager_s, compiled_s = [], []
        for _ in range(args.rounds):
            eager_s.append(run_eager(args.steps))
            compiled_s.append(run_compiled(args.steps))
        e, c = statistics.median(eager_s), statistics.median(compiled_s)
        row = {
            "num_simulations": num_simulations,
            "net_kwargs": size,
            "batch": 256,
            "eager_step_ms": round(1e3 * e, 3),
            "compiled_step_ms": round(1e3 * c, 3),
            "speedup": round(e / c, 3),
            "first_compiled_step_s": round(first_step_s, 2),
            "break_even_steps": round(first_step_s / (e - c)) if e > c else None,
            "threads": args.threads,
            "device": device_name(args.device),
            "versions": package_versions(),
        }
        append_row(args.output, row)
        print(row, flush=True)


if __name__ == "__main__":
    main()
