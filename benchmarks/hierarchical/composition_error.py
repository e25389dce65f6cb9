r"""Where the composed global posterior goes wrong at large G, measured.

On the hierarchical Gaussian model (model.py) every quantity has a closed form,
so the composed denoiser can be checked step by step:

1. ``exact`` rows: the composition (GAUSS) of the *exact* single-group
   denoiser (the Gaussian ``p(g | xbar_j)`` as a
   :class:`~sbi_diffusion.joint.GaussianJointDenoiser`), sampled with the same
   sampler: C2ST, mean error and std ratio against the exact ``p(g | x_1..G)``.
   This isolates the composition and the sampler from the learned network.
2. ``field`` rows: the learned model's composed denoiser against the exact
   composed one at the same ``(z, t)``, with ``z`` drawn from the exact diffused
   composed posterior ``z_t = alpha g + sigma eps``, per noise level: the error
   in units of the composed posterior's standard deviation; and the learned
   single-group denoisers' errors against the exact ones, split into the part
   common to all groups (the mean over groups, which the composition adds up
   ``G`` times) and the part that varies between groups.

    PYTHONPATH=. python benchmarks/hierarchical/composition_error.py \
        --out benchmarks/hierarchical/composition_error.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from sbi.utils.metrics import c2st

sys.path.insert(0, str(Path(__file__).parent))
from model import HierarchicalGaussian, train_on_groups  # noqa: E402

from sbi_diffusion.composition.path import alpha_sigma  # noqa: E402
from sbi_diffusion.joint import GaussianJointDenoiser, JointPosterior  # noqa: E402

GROUP_COUNTS = (10, 100, 1000)
NOISE_LEVELS = (2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005)  # sigma / alpha


def group_posteriors(model: HierarchicalGaussian, x: torch.Tensor):
    """Means ``(G, d)`` and variance of each single-group ``p(g | x_j)``."""
    xbar = x.mean(1)
    v = model.s_l**2 + model.s_x**2 / x.shape[1]
    precision = 1 / model.s_g**2 + 1 / v
    return xbar / v / precision, 1 / precision


def time_at_noise_ratio(schedule, ratio: float) -> torch.Tensor:
    """The time ``(1,)`` at which ``sigma / alpha`` is nearest ``ratio``."""
    grid = torch.linspace(float(schedule.t_min), float(schedule.t_max), 20_001)
    alpha, sigma = alpha_sigma(schedule, grid)
    return grid[(sigma / alpha - ratio).abs().argmin()].reshape(1)


def gaussian_x_hat(z, alpha, sigma, mean, var):
    """``E[u | z]`` for ``u ~ N(mean, var I)`` and ``z = alpha u + sigma eps``."""
    gain = alpha * var / (alpha**2 * var + sigma**2)
    return mean + gain * (z - alpha * mean)


def exact_rows(model, x_o, mean, var, args, schedule) -> list[dict]:
    """Sample the composition of the exact single-group denoiser."""
    d = model.dim
    v = model.s_l**2 + model.s_x**2 / x_o.shape[1]
    eye = torch.eye(d)
    cov = torch.cat(
        [
            torch.cat([model.s_g**2 * eye, model.s_g**2 * eye], 1),
            torch.cat([model.s_g**2 * eye, (model.s_g**2 + v) * eye], 1),
        ]
    )
    exact_model = GaussianJointDenoiser(schedule, torch.zeros(2 * d), cov, (d,), (d,))
    posterior = JointPosterior(exact_model, model.global_prior)
    _, group_var = group_posteriors(model, x_o)
    rows = []
    for covariances in ("estimated", "exact"):
        options = {"covariance_samples": args.covariance_samples}
        if covariances == "exact":
            options = {"trial_covariances": group_var * eye}
        t0 = time.time()
        samples = posterior.sample(
            (args.num_samples,),
            x=x_o.mean(1),
            sampler="dopri5",
            iid_method="gauss",
            iid_options=options,
            show_progress_bars=False,
        )
        rows.append(
            summary(samples, mean, var)
            | {
                "kind": "exact",
                "covariances": covariances,
                "nfe_per_sample": posterior.last_nfe,
                "sample_seconds": time.time() - t0,
            }
        )
    return rows


def summary(samples, mean, var) -> dict:
    exact = mean + var**0.5 * torch.randn(samples.shape[0], samples.shape[1])
    return {
        "c2st": float(c2st(samples, exact)),
        "mean_error_in_std": ((samples.mean(0) - mean) / var**0.5).tolist(),
        "std_ratio": (samples.std(0) / var**0.5).tolist(),
    }


def learned_rows(inference, model, x_o, mean, var, args, floor) -> list[dict]:
    """Samples of the learned model's composition, as ``gaussian.py`` draws
    them (GAUSS over all groups, ``dopri5``)."""
    posterior = inference.build_posterior(
        noise_floor=floor,
        composition_options={"covariance_samples": args.covariance_samples},
    )
    t0 = time.time()
    samples = posterior.sample((args.num_samples,), x=x_o)
    return [
        summary(samples, mean, var)
        | {
            "kind": "learned",
            "noise_floor": floor,
            "nfe_per_sample": posterior.last_info["nfe"],
            "sample_seconds": time.time() - t0,
        }
    ]


def field_rows(inference, model, x_o, mean, var, args, floor) -> list[dict]:
    """Learned composed and single-group denoisers against the exact ones."""
    gp = inference.build_posterior().global_posterior
    est = gp.estimator
    encoded = inference.layout.check_groups(x_o)
    composed = gp.iid_denoiser(
        encoded,
        "gauss",
        generator=torch.Generator().manual_seed(0),
        covariance_samples=args.covariance_samples,
        noise_floor=floor,
    )
    shift, scale = est.theta_shift.reshape(-1), est.theta_scale.reshape(-1)
    # the exact posteriors in the estimator's standardised space
    comp_mean, comp_var = (mean - shift) / scale, var / scale**2
    group_mean, group_var = group_posteriors(model, x_o)
    group_mean, group_var = (group_mean - shift) / scale, group_var / scale**2
    rows = []
    for ratio in NOISE_LEVELS:
        t = time_at_noise_ratio(est.schedule, ratio).expand(args.num_points)
        alpha, sigma = alpha_sigma(est.schedule, t)
        a, s = alpha[:, None], sigma[:, None]
        u = comp_mean + comp_var**0.5 * torch.randn(args.num_points, model.dim)
        z = a * u + s * torch.randn_like(u)
        with torch.no_grad():
            learned = composed(z, t)
            per_group = composed.trial_denoise(z, t, torch.arange(x_o.shape[0]))
            z_net, t_net, below = composed._floor_inputs(z, t)
            if below is not None:  # the trials' estimates the composition uses
                per_group = composed._floored(
                    z,
                    t,
                    torch.arange(x_o.shape[0]),
                    composed.trial_denoise(z_net, t_net, torch.arange(x_o.shape[0])),
                    below,
                )
        exact = gaussian_x_hat(z, a, s, comp_mean, comp_var)
        err = (learned - exact) / comp_var**0.5
        exact_groups = gaussian_x_hat(
            z[:, None], a[:, None], s[:, None], group_mean[None], group_var[None]
        )
        group_err = (per_group - exact_groups) / group_var[None, None] ** 0.5
        common = group_err.mean(1)  # (points, d): the part the sum adds G times
        rows.append(
            {
                "kind": "field",
                "noise_floor": floor,
                "noise_ratio": ratio,
                "composed_error_in_std": float(err.pow(2).mean().sqrt()),
                "composed_bias_in_std": err.mean(0).tolist(),
                "group_common_error_in_std": float(common.pow(2).mean().sqrt()),
                "group_varying_error_in_std": float(
                    (group_err - common[:, None]).pow(2).mean().sqrt()
                ),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--out", default="benchmarks/hierarchical/composition_error.jsonl"
    )
    parser.add_argument("--num-simulations", type=int, default=20_000)
    parser.add_argument("--max-num-steps", type=int, default=3000)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--num-points", type=int, default=200)
    parser.add_argument("--covariance-samples", type=int, default=200)
    parser.add_argument("--groups", type=int, nargs="+", default=list(GROUP_COUNTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-exact", action="store_true")
    parser.add_argument(
        "--noise-floors",
        type=float,
        nargs="+",
        default=[0.0, 0.5, 1.0],
        help="noise_floor options of the composition (0: none)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = HierarchicalGaussian()
    inference, train_time = train_on_groups(
        model, args.num_simulations, args.max_num_steps, args.seed
    )
    schedule = inference.global_inference.build_posterior().estimator.schedule
    out = Path(args.out)
    for G in args.groups:
        torch.manual_seed(args.seed + G)  # the observation of gaussian.py
        _, _, x_o = model.observe(G)
        mean, var = model.global_posterior(x_o)
        common = {
            "G": G,
            "seed": args.seed,
            "num_simulations": args.num_simulations,
            "max_num_steps": args.max_num_steps,
            "covariance_samples": args.covariance_samples,
            "train_seconds": train_time,
        }
        rows = []
        for value in args.noise_floors:
            floor = value or None
            rows += field_rows(inference, model, x_o, mean, var, args, floor)
            rows += learned_rows(inference, model, x_o, mean, var, args, floor)
        if not args.skip_exact:
            rows += exact_rows(model, x_o, mean, var, args, schedule)
        with out.open("a") as f:
            for row in rows:
                f.write(json.dumps(common | row) + "\n")
                print(json.dumps(common | row), flush=True)


if __name__ == "__main__":
    main()
