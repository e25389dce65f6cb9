"""Is the error of a composed posterior the composition's or the single-trial model's?

Every composition method approximates the same target, the product of the
single-trial model's posteriors with the prior correction,

    pi_model(theta) ∝ p(theta)^(1 - N) prod_i q(theta | x_i),

where ``q`` is the model's density (probability-flow ODE, ``posterior.log_prob``).
The true ``N``-trial posterior is ``p(theta) prod_i p(x_i | theta)`` (exact
likelihoods of gaussian_linear, two_moons and slcp). For the reference samples
and for the samples of one composition (``--method``, a name of ``run_iid.py``;
by default ours, GAUSS on 500 Euler-Maruyama steps) this records the median of
both log densities (up to constants, which cancel in the comparison) and the
share of samples where the true density is not zero:

- if ``log pi_model`` is higher (in the median) on the composed samples than
  on the reference's, the composition follows the model's product, and the distance to
  the reference is the single-trial model's error, multiplied by ``N``;
- if it is higher on the reference's samples, the composition misses mass that
  the model's product has, and a better composition can close (part of) the gap.

The medians compare the two sample sets only loosely: samples that are too
concentrated also score a high median. ``--mcmc-steps K`` adds the sound test:
random-walk Metropolis-Hastings (Metropolis et al. 1953) on ``log pi_model``
(Heun's method with ``--log-prob-steps`` steps for each ``log q``), one chain
started at each composed sample. Metropolis-Hastings leaves ``pi_model``
invariant, so

- if the composed samples already follow ``pi_model``, the chains stay where
  they are: C2ST(start, end) stays near 0.5 and C2ST against the reference does
  not change; the distance to the reference is the single-trial model's error;
- if the composition is off its target, the chains move towards ``pi_model``,
  and C2ST(end, reference) is what an exact composition of this model would
  score (as far as the chains get in ``K`` steps).

Each chain's proposal is Gaussian with the covariance of its starting sample's
50 nearest starting samples (the covariance of all of them would span the
modes of a multimodal posterior) times ``s * 2.38^2 / d`` (Roberts et al.
1997); ``s`` is tuned towards an acceptance rate of 0.3 in the first half of
the steps and then fixed. The gaussian_linear row of 20,000 simulations was
made with one global covariance (all starting samples) instead.

Rows go to ``model_product.jsonl`` (one per task, model, trials, observation,
method and number of MCMC steps; reruns skip rows that are there).

Example:
    OMP_NUM_THREADS=1 python benchmarks/iid/model_product.py --task slcp \\
        --simulations 100000 --trials 10 --observations 1 --mcmc-steps 60
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from run_iid import HERE, GaussianLinear, SbibmIID, append_row, run_method
from sbi.utils.metrics import c2st
from torch.distributions import Normal

from sbi_diffusion.benchmark.iid_references import (
    slcp_log_likelihood,
    two_moons_log_likelihood,
)


def gaussian_linear_log_likelihood(theta: torch.Tensor, x: torch.Tensor):
    """``sum_i log N(x_i; theta, 0.1 I)`` for ``theta`` ``(..., 10)``, ``x``
    ``(N, 10)``."""
    return Normal(theta[..., None, :], 0.1**0.5).log_prob(x).sum((-2, -1))


LOG_LIKELIHOODS = {
    "gaussian_linear": gaussian_linear_log_likelihood,
    "two_moons": two_moons_log_likelihood,
    "slcp": slcp_log_likelihood,
}
DEFAULT_METHOD = "ours_gauss_em500_z"
TARGET_ACCEPTANCE = 0.3


def model_log_product(
    posterior, prior, theta: torch.Tensor, x: torch.Tensor, **log_prob_options
):
    """``sum_i log q(theta | x_i) - (N - 1) log p(theta)`` for each row of theta
    (``-inf`` where a density is not finite)."""
    total = sum(
        posterior.log_prob(theta, x=trial[None], **log_prob_options) for trial in x
    )
    total = total - (x.shape[0] - 1) * prior.log_prob(theta)
    return torch.nan_to_num(total.detach(), nan=-torch.inf)


def local_proposal_factors(start: torch.Tensor, neighbours: int) -> torch.Tensor:
    """Cholesky factors ``(n, d, d)`` of ``2.38^2 / d`` times the covariance of
    each starting sample's ``neighbours`` nearest starting samples (distances in
    units of the samples' standard deviations). A multimodal posterior (slcp's
    four sign modes) has a covariance that spans its modes; the neighbours'
    covariance is that of the chain's own mode."""
    n, dim = start.shape
    scaled = start / start.std(0)
    nearest = torch.cdist(scaled, scaled).topk(min(neighbours, n), largest=False)
    group = start[nearest.indices]  # (n, k, d)
    centred = group - group.mean(1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred / (group.shape[1] - 1)
    jitter = 1e-9 * torch.eye(dim) * (1 + cov.diagonal(dim1=1, dim2=2).mean())
    return torch.linalg.cholesky(cov * 2.38**2 / dim + jitter)


def metropolis_on_model_product(
    posterior,
    prior,
    x: torch.Tensor,
    start: torch.Tensor,
    steps: int,
    heun_steps: int,
    neighbours: int = 50,
) -> tuple[torch.Tensor, float]:
    """Random-walk Metropolis-Hastings on ``pi_model``, one chain per row of
    ``start``, each with a fixed Gaussian proposal from its starting sample's
    neighbours (:func:`local_proposal_factors`; fixed per chain, so symmetric).
    Returns the final states and the acceptance rate of the second half (one
    common proposal scale is tuned in the first half)."""

    def log_target(theta):
        return model_log_product(
            posterior, prior, theta, x, solver="heun", steps=heun_steps
        )

    factors = local_proposal_factors(start, neighbours)
    state, log_density = start.clone(), log_target(start)
    scale, accepted_late = 0.5, []
    for step in range(steps):
        noise = (factors @ torch.randn_like(state)[:, :, None])[:, :, 0]
        proposal = state + scale**0.5 * noise
        log_proposal = log_target(proposal)
        accept = torch.rand(len(state)).log() < log_proposal - log_density
        state[accept], log_density[accept] = proposal[accept], log_proposal[accept]
        rate = float(accept.float().mean())
        print(f"step {step + 1}/{steps}: acceptance {rate:.2f}", flush=True)
        if step < steps // 2:
            scale *= float(torch.exp(torch.tensor(rate - TARGET_ACCEPTANCE)))
        else:
            accepted_late.append(rate)
    return state, sum(accepted_late) / max(len(accepted_late), 1)


def true_log_posterior(task: str, prior, theta: torch.Tensor, x: torch.Tensor):
    """``log p(theta) + sum_i log p(x_i | theta)`` up to a constant."""
    return prior.log_prob(theta) + LOG_LIKELIHOODS[task](theta, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(LOG_LIKELIHOODS), default="slcp")
    parser.add_argument(
        "--mcmc-steps",
        type=int,
        default=0,
        help="Metropolis-Hastings steps on the model's product (0: none)",
    )
    parser.add_argument("--log-prob-steps", type=int, default=16)
    parser.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        help="composition whose samples are compared (a run_iid.py method name)",
    )
    parser.add_argument("--simulations", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--observations", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--num-samples", type=int, default=None, help="200, or 1000 with MCMC"
    )
    parser.add_argument("--model-cache", default="outputs/models")
    parser.add_argument(
        "--cache", default=str(Path.home() / ".cache/sbi_diffusion_iid")
    )
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--results", default=str(HERE / "model_product.jsonl"))
    args = parser.parse_args()
    args.sbi_steps = 500  # unused by our methods; run_method's signature
    args.estimator = "diffusion"  # the gaussian_linear model's (run_iid.train)
    if args.num_samples is None:
        args.num_samples = 1000 if args.mcmc_steps else 200
    torch.set_num_threads(1)
    results = Path(args.results)

    key_fields = ("task", "simulations", "trials", "seed", "method", "mcmc_steps")
    done = set()
    if results.exists():
        for line in results.read_text().splitlines():
            row = json.loads(line)
            done.add(tuple(row.get(k, 0) for k in key_fields))
    task = GaussianLinear() if args.task == "gaussian_linear" else SbibmIID(args.task)
    posterior = task.posterior(args)
    for seed in args.observations:
        key = (args.task, args.simulations, args.trials, seed, args.method)
        if (*key, args.mcmc_steps) in done:
            continue
        start = time.time()
        x = task.observation(seed, args.trials)
        reference = task.reference(x, args.num_samples, seed)
        torch.manual_seed(seed)
        composed, _ = run_method(
            args.method, posterior, task.prior, x, args.num_samples, args
        )
        composed = composed.reshape(args.num_samples, -1)
        row = {
            "task": args.task,
            "simulations": args.simulations,
            "trials": args.trials,
            "seed": seed,
            "method": args.method,
            "num_samples": args.num_samples,
        }
        # with MCMC, the medians use the chains' target (Heun), not dopri5
        options = (
            {"solver": "heun", "steps": args.log_prob_steps} if args.mcmc_steps else {}
        )
        for name, samples in (("reference", reference), ("composed", composed)):
            model = model_log_product(posterior, task.prior, samples, x, **options)
            true = true_log_posterior(args.task, task.prior, samples, x)
            row[f"model_log_product_{name}"] = round(float(model.median()), 2)
            row[f"true_log_posterior_{name}"] = round(float(true.median()), 2)
            row[f"in_support_{name}"] = round(float(true.isfinite().float().mean()), 3)
        if args.mcmc_steps:
            torch.manual_seed(seed)
            moved, acceptance = metropolis_on_model_product(
                posterior, task.prior, x, composed, args.mcmc_steps, args.log_prob_steps
            )
            row.update(
                mcmc_steps=args.mcmc_steps,
                mcmc_proposal="local50",
                log_prob_heun_steps=args.log_prob_steps,
                acceptance=round(acceptance, 3),
                c2st_start=round(float(c2st(composed, reference)), 3),
                c2st_end=round(float(c2st(moved, reference)), 3),
                c2st_start_end=round(float(c2st(composed, moved)), 3),
            )
        row["seconds"] = round(time.time() - start, 1)
        append_row(results, row)


if __name__ == "__main__":
    main()
