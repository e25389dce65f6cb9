"""Parameters of a field: amplitude and spectral exponent from one image.

Problem (b) of :mod:`sbi_diffusion.benchmark.fields`
(:class:`~sbi_diffusion.benchmark.fields.FieldParametersProblem`): ``theta =
(log pixel sd, spectral exponent beta)`` under a box prior, ``x`` one ``N x N``
periodic Gaussian random field with that spectrum. Each method trains once on
``--num-simulations`` prior simulations, with the same convolutional
embedding of the image (sbi's ``CNNEmbedding``, its defaults: two convolution
layers, 20 outputs), and is scored on ``--test-cases`` held-out simulations:

- NRMSE of the posterior mean per parameter (RMSE over the test set divided by
  the prior range; the prior mean scores about 0.29);
- simulation-based calibration (Talts et al. 2018, sbi's ``run_sbc`` /
  ``check_sbc``): the Kolmogorov-Smirnov p-value of each parameter's ranks
  against uniform, and the C2ST of the ranks against uniform ones (0.5:
  calibrated);
- TARP (Lemos et al. 2023, sbi's ``run_tarp`` / ``check_tarp``): the area
  between the expected-coverage curve and the diagonal (ATC, 0: calibrated) and
  the KS p-value of the coverage.

Methods: ``diffusion`` (``DiffusionNPE`` with its defaults), ``flow_matching``
(``FlowMatchingNPE``), ``npe_maf`` / ``npe_nsf`` (sbi's ``NPE`` with MAF / NSF).
Rows are appended as they finish; a rerun skips the (size, method,
simulations, seed, ``--train-options``, ``--init-options``) already in the
output.

Usage:
    PYTHONPATH=. python benchmarks/fields/field_parameters.py --sizes 16 32 \\
        --output benchmarks/fields/field_parameters.jsonl
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from sbi.diagnostics import check_sbc, check_tarp, run_sbc, run_tarp
from sbi.neural_nets.embedding_nets import CNNEmbedding

from sbi_diffusion.benchmark.fields import FieldParametersProblem
from sbi_diffusion.benchmark.results import append_row, iter_json_lines

sys.path.insert(0, str(Path(__file__).parent))
from run_record import run_record  # noqa: E402

METHODS = ("diffusion", "flow_matching", "npe_maf", "npe_nsf")


def build(
    method: str, problem: FieldParametersProblem, init_options: dict | None = None
):
    """The untrained inference object of ``method``, with a new CNN embedding
    (ours: with the constructor keywords ``init_options``)."""
    embedding = CNNEmbedding(input_shape=(problem.N, problem.N))
    if method in ("diffusion", "flow_matching"):
        from sbi_diffusion import DiffusionNPE, FlowMatchingNPE

        cls = DiffusionNPE if method == "diffusion" else FlowMatchingNPE
        return cls(
            problem.prior,
            embedding_net=embedding,
            show_progress_bars=False,
            **(init_options or {}),
        )
    if method.startswith("npe_"):
        from sbi.inference import NPE
        from sbi.neural_nets import posterior_nn

        estimator = posterior_nn(method.removeprefix("npe_"), embedding_net=embedding)
        return NPE(problem.prior, density_estimator=estimator, show_progress_bars=False)
    raise ValueError(f"Unknown method {method!r}; pass one of {METHODS}.")


def posterior_means(
    posterior: Any, xs: torch.Tensor, num_samples: int, options: dict | None = None
) -> torch.Tensor:
    """The mean of ``num_samples`` posterior samples for each row of ``xs``."""
    return torch.stack(
        [
            posterior.sample(
                (num_samples,), x=x_i[None], show_progress_bars=False, **(options or {})
            ).mean(0)
            for x_i in xs
        ]
    )


def run_one(args: argparse.Namespace, size: int, method: str) -> dict[str, Any]:
    """Train ``method`` on fields of ``size`` and score it on the test set."""
    torch.manual_seed(args.seed)
    problem = FieldParametersProblem(size)
    generator = torch.Generator().manual_seed(args.seed)
    theta = problem.prior.sample((args.num_simulations,))
    x = problem.simulate(theta, generator=generator)
    inference = build(method, problem, args.init_options)
    start = time.perf_counter()
    inference.append_simulations(theta, x)
    ours = method in METHODS[:2]
    inference.train(**({"seed": args.seed, **args.train_options} if ours else {}))
    train_s = time.perf_counter() - start
    posterior = inference.build_posterior()
    test_theta, test_x = problem.test_set(args.test_cases, seed=args.seed + 1)

    start = time.perf_counter()
    means = posterior_means(posterior, test_x, args.posterior_samples)
    mean_s = time.perf_counter() - start
    start = time.perf_counter()
    ranks, dap_samples = run_sbc(
        test_theta,
        test_x,
        posterior,
        num_posterior_samples=args.posterior_samples,
        show_progress_bar=False,
    )
    sbc = check_sbc(
        ranks, test_theta, dap_samples, num_posterior_samples=args.posterior_samples
    )
    ecp, alpha = run_tarp(
        test_theta,
        test_x,
        posterior,
        num_posterior_samples=args.posterior_samples,
        show_progress_bar=False,
    )
    atc, tarp_p = check_tarp(ecp, alpha)
    calibration_s = time.perf_counter() - start
    row: dict[str, Any] = {
        "status": "ok",
        "train_s": round(train_s, 2),
        "posterior_mean_s": round(mean_s, 2),
        "calibration_s": round(calibration_s, 2),
        "nrmse": [round(float(v), 4) for v in problem.nrmse(means, test_theta)],
        "sbc_ks_pvals": [round(float(v), 4) for v in sbc["ks_pvals"]],
        "sbc_c2st_ranks": [round(float(v), 4) for v in sbc["c2st_ranks"]],
        "tarp_atc": round(float(atc), 4),
        "tarp_ks_pval": round(float(tarp_p), 4),
        "test_cases": args.test_cases,
        "posterior_samples": args.posterior_samples,
        "embedding": "sbi CNNEmbedding defaults (output_dim 20)",
    }
    if method in METHODS[:2]:
        row["extra_samplers"] = []
        for text in args.extra_samplers:
            name, _, steps = text.partition(":")
            options = {"sampler": name, **({"steps": int(steps)} if steps else {})}
            start = time.perf_counter()
            extra = posterior_means(posterior, test_x, args.posterior_samples, options)
            row["extra_samplers"].append(
                {
                    "sampler": text,
                    "nrmse": [
                        round(float(v), 4) for v in problem.nrmse(extra, test_theta)
                    ],
                    "posterior_mean_s": round(time.perf_counter() - start, 2),
                }
            )
        row["train_options"] = args.train_options
        row["init_options"] = args.init_options
        row["resolved_training"] = inference.resolved_training
        row["sampler"] = {"name": posterior.sampler, **posterior.sampler_options}
    else:
        row["sampler"] = {"posterior": type(posterior).__name__}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--test-cases", type=int, default=200)
    parser.add_argument("--posterior-samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--extra-samplers",
        nargs="*",
        default=[],
        help='ours: NRMSE with further samplers on the same training, e.g. "heun:30"',
    )
    parser.add_argument(
        "--train-options",
        type=json.loads,
        default={},
        help='ours: JSON keyword arguments of train(), e.g. \'{"stop_after_steps": '
        "100000}'; part of the resume key",
    )
    parser.add_argument(
        "--init-options",
        type=json.loads,
        default={},
        help='ours: JSON constructor keywords, e.g. \'{"schedule_kwargs": '
        '{"p_mean": 0.5}}\'; part of the resume key',
    )
    parser.add_argument("--output", default="benchmarks/fields/field_parameters.jsonl")
    args = parser.parse_args()
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    torch.set_num_threads(args.threads)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    key_fields = ("size", "method", "num_simulations", "seed")

    def key(row: dict[str, Any]) -> tuple:
        options = [row.get(k, {}) for k in ("train_options", "init_options")]
        return (*(row[k] for k in key_fields), json.dumps(options, sort_keys=True))

    done = {key(r) for _, r in iter_json_lines(output)}
    for size in args.sizes:
        for method in args.methods:
            planned = {
                "size": size,
                "method": method,
                "num_simulations": args.num_simulations,
                "seed": args.seed,
                "train_options": args.train_options,
                "init_options": args.init_options,
            }
            if key(planned) in done:
                print(f"skip N={size} {method}: in {output}", flush=True)
                continue
            start = time.perf_counter()
            row = run_one(args, size, method)
            row.update(
                run_record(args, size, method, start),
                peak_rss_mb=round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                ),
            )
            append_row(output, row)
            summary = {
                k: row[k] for k in ("train_s", "nrmse", "sbc_ks_pvals", "tarp_atc")
            }
            print(f"N={size} {method}: {json.dumps(summary)}", flush=True)


if __name__ == "__main__":
    main()
