"""Is the error of a composed posterior the composition's or the single-trial model's?

Every composition method approximates the same target, the product of the
single-trial model's posteriors with the prior correction,

    pi_model(theta) ∝ p(theta)^(1 - N) prod_i q(theta | x_i),

where ``q`` is the model's density (probability-flow ODE, ``posterior.log_prob``).
The true ``N``-trial posterior is ``p(theta) prod_i p(x_i | theta)`` (exact
likelihoods of two_moons and slcp). For the reference samples and for our default
composition (GAUSS on 500 Euler-Maruyama steps) this prints the median of both
log densities (up to constants, which cancel in the comparison) and the share of
samples where the true density is not zero:

- if ``log pi_model`` is higher (in the median) on our samples than on the
  reference's, the composition follows the model's product, and the distance to
  the reference is the single-trial model's error, multiplied by ``N``;
- if it is higher on the reference's samples, the composition misses mass that
  the model's product has, and a better composition can close (part of) the gap.

Rows go to ``model_product.jsonl`` (one per task, model, trials and observation;
reruns skip rows that are there).

Example:
    OMP_NUM_THREADS=1 python benchmarks/iid/model_product.py --task slcp \\
        --simulations 100000 --trials 10 --observations 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from run_iid import HERE, SbibmIID, append_row, run_method

from sbi_diffusion.benchmark.iid_references import (
    slcp_log_likelihood,
    two_moons_log_likelihood,
)

LOG_LIKELIHOODS = {"two_moons": two_moons_log_likelihood, "slcp": slcp_log_likelihood}
DEFAULT_METHOD = "ours_gauss_em500_z"


def model_log_product(posterior, prior, theta: torch.Tensor, x: torch.Tensor):
    """``sum_i log q(theta | x_i) - (N - 1) log p(theta)`` for each row of theta."""
    total = sum(posterior.log_prob(theta, x=trial[None]) for trial in x)
    return total - (x.shape[0] - 1) * prior.log_prob(theta)


def true_log_posterior(task: str, prior, theta: torch.Tensor, x: torch.Tensor):
    """``log p(theta) + sum_i log p(x_i | theta)`` up to a constant."""
    return prior.log_prob(theta) + LOG_LIKELIHOODS[task](theta, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(LOG_LIKELIHOODS), default="slcp")
    parser.add_argument("--simulations", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--observations", type=int, nargs="+", default=[1])
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--model-cache", default="outputs/models")
    parser.add_argument("--results", default=str(HERE / "model_product.jsonl"))
    args = parser.parse_args()
    args.sbi_steps = 500  # unused by our methods; run_method's signature
    torch.set_num_threads(1)
    results = Path(args.results)
    done = set()
    if results.exists():
        for line in results.read_text().splitlines():
            row = json.loads(line)
            done.add((row["task"], row["simulations"], row["trials"], row["seed"]))
    task = SbibmIID(args.task)
    posterior = task.posterior(args)
    for seed in args.observations:
        if (args.task, args.simulations, args.trials, seed) in done:
            continue
        start = time.time()
        x = task.observation(seed, args.trials)
        reference = task.reference(x, args.num_samples, seed)
        torch.manual_seed(seed)
        ours, _ = run_method(
            DEFAULT_METHOD, posterior, task.prior, x, args.num_samples, args
        )
        ours = ours.reshape(args.num_samples, -1)
        row = {
            "task": args.task,
            "simulations": args.simulations,
            "trials": args.trials,
            "seed": seed,
            "method": DEFAULT_METHOD,
            "num_samples": args.num_samples,
        }
        for name, samples in (("reference", reference), ("ours", ours)):
            model = model_log_product(posterior, task.prior, samples, x).detach()
            true = true_log_posterior(args.task, task.prior, samples, x)
            row[f"model_log_product_{name}"] = round(float(model.median()), 2)
            row[f"true_log_posterior_{name}"] = round(float(true.median()), 2)
            row[f"in_support_{name}"] = round(float(true.isfinite().float().mean()), 3)
        row["seconds"] = round(time.time() - start, 1)
        append_row(results, row)


if __name__ == "__main__":
    main()
