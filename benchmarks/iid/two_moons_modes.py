"""Where the composed two_moons posterior puts its modes, against the reference.

The two_moons posterior for ``N`` trials has two modes, mirror images along
``theta_1 + theta_2`` (the simulator sees only ``|theta_1 + theta_2|``). C2ST
says only that the samples are told apart; this prints, for the reference and
for our default (GAUSS on 500 Euler-Maruyama steps), the share of samples with
``theta_1 + theta_2 > 0``, the mean and standard deviation of
``|theta_1 + theta_2|`` and of ``theta_2 - theta_1``, and the share of samples
at the prior's edge (``|theta_j| > 0.99``).

Example:
    OMP_NUM_THREADS=1 python benchmarks/iid/two_moons_modes.py --trials 100
"""

from __future__ import annotations

import argparse
import time

import torch
from run_iid import SbibmIID


def describe(name: str, samples: torch.Tensor) -> None:
    total = samples[:, 0] + samples[:, 1]
    difference = samples[:, 1] - samples[:, 0]
    print(
        f"{name}: {len(samples)} samples; theta_1 + theta_2 > 0: "
        f"{(total > 0).float().mean():.2f}; |theta_1 + theta_2| "
        f"{total.abs().mean():.3f} (std {total.abs().std():.3f}); "
        f"theta_2 - theta_1 {difference.mean():.3f} (std {difference.std():.3f}); "
        f"at the prior's edge {(samples.abs() > 0.99).any(1).float().mean():.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--observation", type=int, default=1)
    parser.add_argument("--num-samples", type=int, default=300)
    parser.add_argument("--model-cache", default="outputs/models")
    parser.add_argument(
        "--simulations", type=int, default=10_000, help="single-trial model's"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = SbibmIID("two_moons")
    posterior = task.posterior(args)
    x = task.observation(args.observation, args.trials)
    describe("reference", task.reference(x, 1000, args.observation))
    torch.manual_seed(args.observation)
    start = time.time()
    samples = posterior.sample(
        (args.num_samples,),
        x=x,
        iid_method="gauss",
        sampler="euler_maruyama",
        steps=500,
        final_denoise=False,
        show_progress_bars=False,
    )
    describe(
        f"ours, GAUSS on Euler-Maruyama 500 ({time.time() - start:.0f} s)", samples
    )


if __name__ == "__main__":
    main()
