"""Why sbi's ``auto_gauss`` does well on the flow-matching gaussian_linear model.

Runs sbi 0.27's GAUSS score (``VectorFieldPosterior(..., sample_with="sde")``,
Euler-Maruyama with 500 steps, the setting of ``run_iid.py``) with different
single-trial precisions, on the same trained estimator and trials as
``run_iid.py`` (gaussian_linear, 10 trials), and reports C2ST against the
analytic posterior:

* ``auto_gauss``: sbi's own, per trial, the inverse of the *uncentred* second
  moment ``E[theta theta^T]`` of 5000 samples of each single-trial posterior
  (standardised space);
* ``auto_gauss_centred``: the same samples (same sampler, same budget), the
  inverse of their covariance, per trial;
* ``gauss_exact``: one precision for all trials, the exact single-trial
  posterior precision ``20 I`` (in the standardised space);
* ``gauss_mean_centred``: one precision for all trials, the mean of the
  ``auto_gauss_centred`` precisions.

Rows are appended to ``precision_ablation.jsonl`` (finished rows are skipped).

Example:
    PYTHONUNBUFFERED=1 python benchmarks/iid/precision_ablation.py \
        --simulations 20000 --estimator flow_matching --seeds 0 1
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from run_iid import ESTIMATORS, GaussianLinear, standardised_prior, train
from sbi.inference.posteriors.vector_field_posterior import VectorFieldPosterior
from sbi.inference.potentials.vector_field_adaptor import (
    AutoGaussCorrectedScoreFn,
    register_iid_method,
)
from sbi.utils.metrics import c2st
from torch import Tensor

HERE = Path(__file__).resolve().parent
VARIANTS = ("auto_gauss", "auto_gauss_centred", "gauss_exact", "gauss_mean_centred")


def single_trial_samples(estimator, prior, conditions: Tensor, steps: int = 100):
    """Samples of each single-trial posterior, drawn as sbi's ``auto_gauss``
    draws them (``sample_batched`` with ``steps`` steps and sbi's budget of
    ``min(1000 d, 5000)`` per trial); shape ``(budget, N, d)``."""
    budget = min(int(prior.event_shape[0] * 1000), 5000)
    posterior = VectorFieldPosterior(estimator, prior, device=conditions.device)
    return posterior.sample_batched(
        torch.Size([budget]), x=conditions, show_progress_bars=False, steps=steps
    )


def centred_precisions(thetas: Tensor) -> Tensor:
    """Per-trial inverse sample covariances of samples ``(budget, N, d)``."""
    centred = thetas - thetas.mean(0, keepdim=True)
    cov = torch.einsum("bnd,bne->nde", centred, centred) / (thetas.shape[0] - 1)
    return torch.inverse(cov)


@register_iid_method("auto_gauss_centred")
class CentredAutoGaussScoreFn(AutoGaussCorrectedScoreFn):
    """sbi's ``auto_gauss`` with the covariance of the single-trial samples
    (centred) in place of their second moment."""

    #: estimates by (estimator, conditions) identity: sbi builds a new score
    #: function at every step and caches its own estimate the same way
    cache: dict = {}

    def posterior_precision_est_fn(self, conditions: Tensor) -> Tensor:
        key = (id(self.vector_field_estimator), id(conditions))
        if key not in self.cache:
            thetas = single_trial_samples(
                self.vector_field_estimator,
                self.prior,
                conditions,
                self.precision_initial_sampler_steps,
            )
            self.cache[key] = centred_precisions(thetas).unsqueeze(0)
        return self.cache[key]


def fixed_precision(variant: str, estimator, prior, x: Tensor, scale: Tensor):
    """The shared precision of the ``gauss_*`` variants (standardised space)."""
    if variant == "gauss_exact":
        return torch.diag(20.0 * scale**2)
    return centred_precisions(single_trial_samples(estimator, prior, x)).mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--simulations", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--estimator", choices=sorted(ESTIMATORS), default="diffusion")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--sbi-steps", type=int, default=500)
    parser.add_argument(
        "--cache", default=str(Path.home() / ".cache/sbi_diffusion_iid")
    )
    parser.add_argument("--results", default=str(HERE / "precision_ablation.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = Path(args.results)
    key_names = ("estimator", "simulations", "seed", "variant")
    lines = results.read_text().splitlines() if results.exists() else []
    done_keys = {tuple(json.loads(line)[k] for k in key_names) for line in lines}
    task = GaussianLinear()
    estimator = copy.deepcopy(train(task, args).estimator)
    shift = estimator._theta_shift.reshape(-1).clone()
    scale = estimator._theta_scale.reshape(-1).clone()
    estimator._compose_standardization.fill_(False)
    prior = standardised_prior(task.prior, shift, scale)
    for seed in args.seeds:
        x = task.observation(seed, args.trials)
        reference = task.reference(x, args.num_samples, seed)
        for variant in args.variants:
            key = (args.estimator, args.simulations, seed, variant)
            if key in done_keys:
                continue
            torch.manual_seed(seed)
            t0 = time.time()
            if variant.startswith("auto_gauss"):
                method, params = variant, None
            else:
                precision = fixed_precision(variant, estimator, prior, x, scale)
                method, params = "gauss", {"posterior_precision": precision}
            samples = VectorFieldPosterior(estimator, prior, sample_with="sde").sample(
                (args.num_samples,),
                x=x,
                iid_method=method,
                iid_params=params,
                steps=args.sbi_steps,
                show_progress_bars=False,
            )
            samples = shift + scale * samples.reshape(args.num_samples, -1)
            row = dict(
                zip(key_names, key, strict=True),
                num_trials=args.trials,
                c2st=round(float(c2st(samples, reference)), 4),
                seconds=round(time.time() - t0, 1),
            )
            print(json.dumps(row), flush=True)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
