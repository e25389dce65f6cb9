"""Command line of the benchmark: ``sbi-diffusion-bench run|report|overview``.

Examples::

    sbi-diffusion-bench --preset quick
    sbi-diffusion-bench run --tasks two_moons slcp --budgets 1000 10000 \\
        --methods npe "diffusion:sampler=heun,steps=30" --observations 1-10 \\
        --output results.jsonl
    sbi-diffusion-bench report results.jsonl
    sbi-diffusion-bench overview results.jsonl more_results.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sbi_diffusion.benchmark.executors import EXECUTORS, SlurmOptions
from sbi_diffusion.benchmark.methods import METHODS
from sbi_diffusion.benchmark.tasks import EXTRA_TASKS, TASKS

PRESETS: dict[str, dict[str, object]] = {
    "quick": {
        "tasks": ["two_moons"],
        "budgets": [1000, 10000],
        "methods": ["diffusion", "npe"],
        "observations": [1, 2],
        "seeds": [0],
        "output": "bench-quick/results.jsonl",
        "workers": 2,
    },
}
"""Named settings; explicit command-line arguments override them."""


def _int_list(text: str) -> list[int]:
    """Parse ``1-10``, ``1,2,5`` or ``1e4`` into integers."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            low, high = part.split("-", 1)
            out.extend(range(int(low), int(high) + 1))
        else:
            value = float(part)
            if value != int(value):
                raise argparse.ArgumentTypeError(f"{part!r} is not an integer")
            out.append(int(value))
    return out


def _flatten(groups: Sequence[list[int]] | None) -> list[int] | None:
    if groups is None:
        return None
    return [value for group in groups for value in group]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sbi-diffusion-bench``."""
    parser = argparse.ArgumentParser(
        prog="sbi-diffusion-bench",
        description="Benchmark SBI methods on the ten sbibm tasks (C2ST).",
    )
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run or resume a benchmark (the default)")
    run.add_argument("--preset", choices=sorted(PRESETS), help="named settings")
    run.add_argument(
        "--tasks",
        nargs="+",
        metavar="TASK",
        help=f"tasks: {', '.join(TASKS + EXTRA_TASKS)}",
    )
    run.add_argument(
        "--budgets",
        nargs="+",
        type=_int_list,
        metavar="N",
        help="simulation budgets, e.g. 1000 10000 or 1e3,1e4",
    )
    run.add_argument(
        "--methods",
        nargs="+",
        metavar="SPEC",
        help=(
            f"method specs name[:key=value,...]; names: {', '.join(METHODS)}; "
            "e.g. diffusion:schedule=edm,parameterization=F,sampler=heun"
        ),
    )
    run.add_argument(
        "--observations",
        nargs="+",
        type=_int_list,
        metavar="K",
        help="observation numbers, e.g. 1-10 or 1,2 (default 1-10)",
    )
    run.add_argument(
        "--seeds", nargs="+", type=_int_list, metavar="S", help="seeds (default 0)"
    )
    run.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    run.add_argument("--output", help="JSONL results file (appended, resumable)")
    run.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="pool",
        help="pool (default): process pool; inline; local/slurm: submitit",
    )
    run.add_argument("--workers", type=int, help="parallel jobs (default 1)")
    run.add_argument(
        "--threads", type=int, default=1, help="torch threads per job (default 1)"
    )
    run.add_argument(
        "--num-posterior-samples",
        type=int,
        default=10_000,
        help="samples per observation; only 10000 is the published protocol",
    )
    run.add_argument(
        "--model-cache",
        metavar="DIR",
        help="keep trained estimators here; reruns reuse them instead of training",
    )
    run.add_argument("--log-folder", help="submitit log folder")
    run.add_argument("--no-report", action="store_true", help="skip table and figure")
    slurm = run.add_argument_group("slurm (--executor slurm)")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--time", type=int, default=120, help="minutes per job")
    slurm.add_argument("--gpus", type=int, default=0, help="GPUs per job")
    slurm.add_argument("--cpus", type=int, default=2, help="CPU cores per job")
    slurm.add_argument("--mem-gb", type=int, default=16, help="memory per job (GiB)")
    slurm.add_argument(
        "--array-parallelism", type=int, default=64, help="jobs running at once"
    )
    slurm.add_argument("--account", help="Slurm account")

    report = sub.add_parser("report", help="Markdown table and PNG from results")
    report.add_argument("results", help="JSONL results file")
    report.add_argument("--table", help="Markdown output (default <results>.md)")
    report.add_argument("--figure", help="PNG output (default <results>.png)")

    overview = sub.add_parser(
        "overview",
        help="one table per budget: every method at its current defaults beside "
        "the published numbers",
    )
    overview.add_argument(
        "results", nargs="+", help="JSONL results files (a row in several: the first)"
    )
    overview.add_argument("--output", help="Markdown output (default: print)")
    return parser


def _overview(results: list[str], output: str | None) -> int:
    from pathlib import Path

    from sbi_diffusion.benchmark.overview import load_all, overview_table

    missing = [path for path in results if not Path(path).exists()]
    if missing:
        raise ValueError(f"Results file(s) {', '.join(missing)} do not exist.")
    text = overview_table(load_all(results))
    if output is None:
        print(text)
    else:
        Path(output).write_text(text, encoding="utf-8")
        print(f"overview: {output}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from sbi_diffusion.benchmark.api import BenchmarkJobsFailed, run_benchmark
    from sbi_diffusion.benchmark.report import write_report

    preset = dict(PRESETS[args.preset]) if args.preset else {}
    tasks = args.tasks or preset.get("tasks")
    budgets = _flatten(args.budgets) or preset.get("budgets")
    methods = args.methods or preset.get("methods")
    observations = _flatten(args.observations) or preset.get(
        "observations", list(range(1, 11))
    )
    seeds = _flatten(args.seeds) or preset.get("seeds", [0])
    output = args.output or preset.get("output")
    workers = args.workers or preset.get("workers", 1)
    missing = [
        flag
        for flag, value in (
            ("--tasks", tasks),
            ("--budgets", budgets),
            ("--methods", methods),
            ("--output", output),
        )
        if not value
    ]
    if missing:
        raise ValueError(
            f"Missing {', '.join(missing)}; pass them or use --preset quick."
        )
    slurm = SlurmOptions(
        partition=args.partition,
        time_min=args.time,
        gpus_per_node=args.gpus,
        cpus_per_task=args.cpus,
        mem_gb=args.mem_gb,
        array_parallelism=args.array_parallelism,
        additional={"account": args.account} if args.account else None,
    )
    status = 0
    try:
        frame = run_benchmark(
            tasks=tasks,  # type: ignore[arg-type]
            num_simulations=budgets,  # type: ignore[arg-type]
            methods=methods,  # type: ignore[arg-type]
            observations=observations,  # type: ignore[arg-type]
            seeds=seeds,  # type: ignore[arg-type]
            device=args.device,
            output=str(output),
            executor=args.executor,
            workers=int(workers),  # type: ignore[arg-type]
            torch_threads=args.threads,
            slurm=slurm,
            log_folder=args.log_folder,
            num_posterior_samples=args.num_posterior_samples,
            model_cache=args.model_cache,
        )
        print(f"{len(frame)} rows of the requested grid are in {output}")
    except BenchmarkJobsFailed as err:
        print(err, file=sys.stderr)
        status = 1
    if not args.no_report:
        try:
            table, png = write_report(str(output))
            print(f"table: {table}\nfigure: {png}")
        except ValueError as err:
            print(f"no report: {err}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sbi-diffusion-bench``.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` if None. When
            the first argument is not a command, ``run`` is assumed.

    Returns:
        The exit status: 0 on success, 1 if jobs failed, 2 on invalid input.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in {"run", "report", "overview", "-h", "--help"}:
        argv = ["run", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "report":
            from sbi_diffusion.benchmark.report import write_report

            table, png = write_report(args.results, args.table, args.figure)
            print(f"table: {table}\nfigure: {png}")
            return 0
        if args.command == "overview":
            return _overview(args.results, args.output)
        return _run(args)
    except ValueError as err:
        print(f"sbi-diffusion-bench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
