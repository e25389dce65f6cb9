"""Two moons with DiffusionNPE: train, sample, C2ST against the reference, pairplot.

The training goes through the benchmark's model cache (``--model-cache``), so the
quick benchmark preset run after it (``scripts/quickstart.sh``) reuses this
model instead of training the same one again.

Usage: python examples/quickstart.py [--num-simulations 10000] [--output DIR]
    [--model-cache DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402
from sbi.analysis import pairplot  # noqa: E402
from sbibm.metrics import c2st  # noqa: E402

from sbi_diffusion.benchmark.methods import parse  # noqa: E402
from sbi_diffusion.benchmark.runner import train_or_load  # noqa: E402
from sbi_diffusion.benchmark.tasks import load_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--observation", type=int, default=1)
    parser.add_argument("--output", default="outputs/quickstart")
    parser.add_argument(
        "--model-cache",
        default=None,
        help="folder of trained models shared with the benchmark "
        "(default: OUTPUT/models)",
    )
    args = parser.parse_args()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    cache = Path(args.model_cache) if args.model_cache else output / "models"
    begin = time.perf_counter()

    # DiffusionNPE(prior).append_simulations(theta, x).train() on prior draws,
    # trained once and kept in the model cache.
    task = load_task("two_moons")
    trained = train_or_load(
        "two_moons", task, parse("diffusion"), args.num_simulations, 0, "cpu", cache
    )
    size = trained.resolved_training.get("net_kwargs", {})
    print(
        f"DiffusionNPE trained on {args.num_simulations} simulations in "
        f"{trained.train_s:.0f} s (network {size}, "
        f"{trained.resolved_training.get('steps_trained', '?')} optimiser steps)"
    )
    posterior = trained.posterior

    x_o = task.get_observation(args.observation)
    reference = task.get_reference_posterior_samples(args.observation)
    torch.manual_seed(args.observation)
    start = time.perf_counter()
    samples = posterior.sample((10_000,), x=x_o, show_progress_bars=False)
    print(
        f"10,000 samples in {time.perf_counter() - start:.1f} s "
        f"({posterior.last_nfe:.0f} network evaluations per sample)"
    )
    start = time.perf_counter()
    score = float(c2st(reference, samples)[0])
    print(
        f"C2ST against the reference posterior (observation {args.observation}): "
        f"{score:.3f}  (0.5 is perfect; computed in "
        f"{time.perf_counter() - start:.0f} s)"
    )
    both = torch.cat([samples, reference])
    low, high = both.quantile(0.001, dim=0), both.quantile(0.999, dim=0)
    margin = 0.3 * (high - low)
    fig, axes = pairplot(
        [samples, reference],
        limits=torch.stack([low - margin, high + margin], dim=1).tolist(),
        figsize=(5, 5),
        upper="contour",
        diag="kde",
        labels=[r"$\theta_1$", r"$\theta_2$"],
    )
    # pairplot picks its own colours: label the curves it drew on the diagonal
    drawn = axes[0, 0].get_lines()
    handles = [
        matplotlib.lines.Line2D([], [], color=line.get_color(), label=label)
        for line, label in zip(
            drawn,
            ["DiffusionNPE (10,000 samples)", "reference posterior (sbibm)"],
            strict=False,  # a diagonal may draw extra lines
        )
    ]
    fig.legend(handles=handles, loc="lower left", frameon=False)
    fig.suptitle(f"two moons, observation {args.observation}: C2ST {score:.3f}", y=1.02)
    path = output / "pairplot.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"pairplot written to {path}")
    print(f"quickstart example took {time.perf_counter() - begin:.0f} s in all")


if __name__ == "__main__":
    main()
