"""Training and sampling throughput of the estimators on a device (CPU or GPU).

For each device and method: wall-clock seconds per training epoch on the task's
simulations (at the default batch size and at a large one), and seconds to draw
10,000 and 100,000 posterior samples with the default sampler, with the number of
network evaluations. The networks are not trained to convergence (a few epochs),
which does not change the cost of an epoch or of a sample.

    python benchmarks/core/device_throughput.py --devices cuda cpu \\
        --output benchmarks/results/device_throughput.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sbi_diffusion.benchmark.methods import build_inference, parse
from sbi_diffusion.benchmark.runner import seed_everything
from sbi_diffusion.benchmark.tasks import distribution_to, load_task


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _device_label(device: str) -> str:
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {torch.get_num_threads()} threads)"


def warm_up(task_name: str, method: str, device: str) -> None:
    """One untimed short training and sampling, so that one-time costs (CUDA
    context and kernel initialisation) do not enter the first measurement."""
    measure(task_name, method, device, 500, 1, [500], [10])


def measure(
    task_name: str,
    method: str,
    device: str,
    num_simulations: int,
    epochs: int,
    batch_sizes: list[int],
    sample_sizes: list[int],
) -> list[dict]:
    """Rows of seconds per epoch and seconds per sample draw for one method."""
    task = load_task(task_name)
    seed_everything(0)
    theta = task.sample_prior(num_simulations)
    x = task.simulate(theta)
    x_o = task.get_observation(1).to(device)
    prior = distribution_to(task.prior, device)
    spec = parse(method)
    rows = []
    base = {"task": task_name, "method": method, "device": _device_label(device)}
    posterior = None
    for batch_size in batch_sizes:
        inference, routed = build_inference(spec, prior, device)
        inference.append_simulations(theta, x)
        _synchronize(device)
        start = time.perf_counter()
        inference.train(
            max_num_epochs=epochs,
            training_batch_size=batch_size,
            show_train_summary=False,
        )
        _synchronize(device)
        seconds = time.perf_counter() - start
        rows.append(
            {
                **base,
                "measure": "train_s_per_epoch",
                "batch_size": batch_size,
                "num_simulations": num_simulations,
                "value": seconds / epochs,
            }
        )
        posterior = inference.build_posterior()
    for num_samples in sample_sizes:
        posterior.sample((10,), x=x_o, show_progress_bars=False)  # warm-up
        _synchronize(device)
        start = time.perf_counter()
        posterior.sample((num_samples,), x=x_o, show_progress_bars=False)
        _synchronize(device)
        rows.append(
            {
                **base,
                "measure": "sample_s",
                "num_samples": num_samples,
                "value": time.perf_counter() - start,
                "nfe": getattr(posterior, "last_nfe", None),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="two_moons")
    parser.add_argument(
        "--methods", nargs="+", default=["diffusion", "flow_matching", "npe"]
    )
    parser.add_argument("--devices", nargs="+", default=["cuda", "cpu"])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument(
        "--sample-sizes", type=int, nargs="+", default=[10_000, 100_000]
    )
    parser.add_argument(
        "--output", default="benchmarks/results/device_throughput.jsonl"
    )
    args = parser.parse_args()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for device in args.devices:
        warm_up(args.task, args.methods[0], device)
        for method in args.methods:
            rows = measure(
                args.task,
                method,
                device,
                args.num_simulations,
                args.epochs,
                args.batch_sizes,
                args.sample_sizes,
            )
            with output.open("a") as handle:
                for row in rows:
                    handle.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
