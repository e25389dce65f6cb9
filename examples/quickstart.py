"""Two moons with DiffusionNPE: train, sample, C2ST against the reference, pairplot.

Usage: python examples/quickstart.py [--num-simulations 10000] [--output DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import sbibm  # noqa: E402
import torch  # noqa: E402
from sbi.analysis import pairplot  # noqa: E402
from sbibm.metrics import c2st  # noqa: E402

from sbi_diffusion import DiffusionNPE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--observation", type=int, default=1)
    parser.add_argument("--output", default="outputs/quickstart")
    args = parser.parse_args()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    task = sbibm.get_task("two_moons")
    prior = task.get_prior_dist()
    theta = prior.sample((args.num_simulations,))
    x = task.get_simulator()(theta)

    inference = DiffusionNPE(prior)
    start = time.time()
    inference.append_simulations(theta, x).train(seed=0)
    print(
        f"trained on {args.num_simulations} simulations in {time.time() - start:.0f} s"
    )
    posterior = inference.build_posterior()

    x_o = task.get_observation(args.observation)
    reference = task.get_reference_posterior_samples(args.observation)
    start = time.time()
    samples = posterior.sample((10_000,), x=x_o)
    print(
        f"10,000 samples in {time.time() - start:.1f} s "
        f"({posterior.last_nfe:.0f} network evaluations per sample)"
    )
    score = float(c2st(reference, samples)[0])
    print(
        f"C2ST against the reference posterior (observation {args.observation}): "
        f"{score:.3f}  (0.5 is perfect)"
    )
    fig, _ = pairplot(
        [samples, reference],
        limits=[[-1, 1], [-1, 1]],
        figsize=(5, 5),
        upper="contour",
        diag="kde",
    )
    path = output / "pairplot.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"pairplot written to {path}")


if __name__ == "__main__":
    main()
