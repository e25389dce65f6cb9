"""Field emulation: the likelihood ``x | theta`` of problem (b), judged against
simulated fields.

Problem (b) of :mod:`sbi_diffusion.benchmark.fields`
(:class:`~sbi_diffusion.benchmark.fields.FieldParametersProblem`): ``theta =
(log pixel sd, spectral exponent beta)`` under a box prior, ``x`` one ``N x N``
periodic Gaussian random field with that spectrum. Each method learns the
likelihood ``q(x | theta)`` from ``--num-simulations`` prior simulations, then
emulates ``--fields`` fields at each of ``--test-thetas`` fixed parameter sets
(the prior's centre and the four points at its 25% and 75% quantiles), which
are scored against as many fields from the simulator:

- C2ST (sbi's ``c2st``: an MLP classifier, 5-fold cross-validated accuracy on
  the flattened fields; 0.5: indistinguishable). ``c2st_floor`` is the same
  test between two independent simulated sets, the score of a perfect
  emulator at this sample size;
- the pixel sd of the emulated fields over the exact ``exp(log_sd)``;
- the radially averaged power spectrum of the emulated fields against the
  exact one (``max |log ratio|`` over radial bins);
- seconds to emulate the fields.

Methods: ``diffusion_unet`` (``DiffusionNLE(net="unet")``), ``flow_matching_unet``
(``FlowMatchingNLE(net="unet")``), ``nle_maf`` / ``nle_nsf`` (sbi's ``NLE`` on
the flattened fields). Rows are appended as they finish; a rerun skips the
(size, method, simulations, seed, channels) already in the output.

Usage:
    PYTHONPATH=. python benchmarks/fields/field_emulation.py --sizes 16 \\
        --output benchmarks/fields/field_emulation.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from sbi.utils.metrics import c2st

from sbi_diffusion.benchmark.fields import FieldParametersProblem
from sbi_diffusion.benchmark.fields.spectra import fourier, radial_average
from sbi_diffusion.benchmark.results import append_row, iter_json_lines

sys.path.insert(0, str(Path(__file__).parent))
from posterior_field import (  # noqa: E402
    DEFAULT_CHANNELS,
    problem_key,
    unet_kwargs,
    unet_train_kwargs,
)
from run_record import run_record  # noqa: E402

OURS = ("diffusion_unet", "flow_matching_unet")
METHODS = (*OURS, "nle_maf", "nle_nsf")


def test_thetas(problem: FieldParametersProblem, num: int) -> torch.Tensor:
    """The prior's centre, then the corners of its 25%-75% box: ``(num, 2)``."""
    quarter = [(0.5, 0.5), (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)]
    if not 1 <= num <= len(quarter):
        raise ValueError(f"--test-thetas must be 1-{len(quarter)}, got {num}.")
    u = torch.tensor(quarter[:num], dtype=problem.dtype)
    return problem.low + (problem.high - problem.low) * u


def build(
    method: str,
    problem: FieldParametersProblem,
    channels: tuple[int, ...],
    schedule_kwargs: dict[str, float] | None = None,
):
    """The untrained inference object of ``method`` (``schedule_kwargs``: the
    noise schedule's options, ours only; ``None`` keeps the default)."""
    if method in OURS:
        from sbi_diffusion import DiffusionNLE, FlowMatchingNLE

        cls = DiffusionNLE if method == "diffusion_unet" else FlowMatchingNLE
        return cls(
            problem.prior,
            net="unet",
            net_kwargs=unet_kwargs(problem.N, channels),
            show_progress_bars=False,
            **({"schedule_kwargs": schedule_kwargs} if schedule_kwargs else {}),
        )
    if method.startswith("nle_"):
        from sbi.inference import NLE

        estimator = method.removeprefix("nle_")
        return NLE(problem.prior, density_estimator=estimator, show_progress_bars=False)
    raise ValueError(f"Unknown method {method!r}; pass one of {METHODS}.")


def emulate(method: str, emulator: Any, theta: torch.Tensor, num: int) -> torch.Tensor:
    """``num`` emulated fields at one ``theta`` ``(2,)``, flat ``(num, N * N)``."""
    with torch.no_grad():
        if method in OURS:
            fields = emulator.sample((num,), theta=theta)
        else:
            fields = emulator.sample((num,), condition=theta[None])[:, 0]
    return fields.reshape(num, -1)


def spectrum_error(fields: torch.Tensor, spectrum: torch.Tensor) -> float:
    """``max |log ratio|`` over radial bins of the fields' mean power spectrum
    against the exact spectrum ``(N, N)``."""
    N = spectrum.shape[-1]
    power = radial_average((fourier(fields.double(), N).abs() ** 2).mean(0))
    return float((power / radial_average(spectrum)).log().abs().max())


def run_one(args: argparse.Namespace, size: int, method: str) -> dict[str, Any]:
    """Train ``method``'s likelihood at ``size`` and score its emulated fields."""
    torch.manual_seed(args.seed)
    problem = FieldParametersProblem(size)
    generator = torch.Generator().manual_seed(args.seed)
    theta = problem.prior.sample((args.num_simulations,))
    x = problem.simulate(theta, generator=generator)
    inference = build(method, problem, tuple(args.channels), args.schedule_kwargs)
    data = x if method in OURS else x.reshape(len(x), -1)
    start = time.perf_counter()
    inference.append_simulations(theta, data)
    train_kwargs = unet_train_kwargs(args) if method in OURS else {}
    estimator = inference.train(**train_kwargs)
    train_s = time.perf_counter() - start
    emulator = inference.build_likelihood() if method in OURS else estimator
    cases = []
    for index, theta_o in enumerate(test_thetas(problem, args.test_thetas)):
        case_generator = torch.Generator().manual_seed(1000 + index)
        reference = problem.simulate(
            theta_o.expand(2 * args.fields, 2), generator=case_generator
        ).reshape(2 * args.fields, -1)
        simulated, second = reference[: args.fields], reference[args.fields :]
        start = time.perf_counter()
        fields = emulate(method, emulator, theta_o, args.fields)
        emulate_s = time.perf_counter() - start
        spectrum = problem.spectrum(theta_o[None])[0]
        cases.append(
            {
                "theta": [round(float(v), 4) for v in theta_o],
                "c2st": round(float(c2st(fields, simulated, seed=args.seed)), 4),
                "c2st_floor": round(float(c2st(second, simulated, seed=args.seed)), 4),
                "pixel_sd_ratio": round(
                    float(fields.std() / math.exp(float(theta_o[0]))), 4
                ),
                "spectrum_max_abs_log_ratio": round(
                    spectrum_error(fields, spectrum), 4
                ),
                "emulate_s": round(emulate_s, 3),
            }
        )
        print(f"  {method} theta {cases[-1]['theta']}: {cases[-1]}", flush=True)
    row: dict[str, Any] = {
        "train_s": round(train_s, 1),
        "fields": args.fields,
        "cases": cases,
        "c2st_mean": round(sum(c["c2st"] for c in cases) / len(cases), 4),
        "c2st_floor_mean": round(sum(c["c2st_floor"] for c in cases) / len(cases), 4),
    }
    if method in OURS:
        row["unet_channels"] = list(args.channels)
        row["schedule_kwargs"] = args.schedule_kwargs
        row["resolved_training"] = inference.resolved_training
        posterior = emulator.conditional
        row["sampler"] = {"name": posterior.sampler, **posterior.sampler_options}
    else:
        row["sampler"] = {"estimator": type(estimator).__name__}
    return row


def run_key(row: dict[str, Any]) -> tuple:
    """What makes two rows the same run (a rerun skips it)."""
    ours = row["method"] in OURS
    channels = tuple(row.get("unet_channels") or ()) if ours else ()
    schedule = tuple(sorted((row.get("schedule_kwargs") or {}).items())) if ours else ()
    return (*problem_key(row), channels, schedule)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--test-thetas", type=int, default=5)
    parser.add_argument("--fields", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-num-steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--channels", type=int, nargs="+", default=list(DEFAULT_CHANNELS)
    )
    parser.add_argument(
        "--schedule-kwargs",
        type=json.loads,
        default=None,
        help="ours only: the noise schedule's options as JSON, e.g. '{\"p_mean\": 0.5, "
        "\"p_std\": 1.5}'; default: the estimator's",
    )
    parser.add_argument("--output", default="benchmarks/fields/field_emulation.jsonl")
    args = parser.parse_args()
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    torch.set_num_threads(args.threads)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = {run_key(r) for _, r in iter_json_lines(output)}
    for size in args.sizes:
        for method in args.methods:
            planned = {
                "size": size,
                "method": method,
                "num_simulations": args.num_simulations,
                "seed": args.seed,
                "unet_channels": args.channels,
                "schedule_kwargs": args.schedule_kwargs,
            }
            if run_key(planned) in done:
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
            summary = {k: row[k] for k in ("train_s", "c2st_mean", "c2st_floor_mean")}
            print(f"N={size} {method}: {json.dumps(summary)}", flush=True)


if __name__ == "__main__":
    main()
