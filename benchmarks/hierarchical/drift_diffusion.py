"""HierarchicalNPE on the hierarchical drift-diffusion model
(``sbi_diffusion.benchmark.drift_diffusion``): 100 subjects of 30 trials, 7
global and 3 local parameters per subject.

Phases, each resumable (the trained model and the NUTS draws are cached under
``--cache`` as ``.pt`` files, rows already in the JSONL file are skipped):

1. train one ``HierarchicalNPE`` on ``--num-simulations`` single-subject
   simulations (with ``--groups-per-simulation k``: that many subjects, in data
   sets of ``k`` subjects that share the global parameters; with
   ``--global-ensemble-size K``: ``K`` global models, composed through their
   mean estimate);
2. per reference data set and sampling configuration, a row ``"reference"``:
   C2ST of 1,000 global samples against NUTS (pyro, exact likelihood), the
   error of the posterior means in NUTS standard deviations, the local
   posterior means' error in local NUTS standard deviations, and the seconds
   per data set of both;
3. (``--phases subsets``) rows ``"subset"``: the first ``G'`` subjects of
   reference data set 0 against NUTS on the same subjects, with and without
   the noise floor, to see how the error grows with the number of groups;
4. (``--phases single``) rows ``"single"``: the network's posterior given one
   subject against NUTS on that subject, and the share of the information
   (precision gain over the prior) it captures;
5. a row ``"sbc"``: simulation-based calibration and parameter recovery over
   ``--sbc-datasets`` data sets simulated from the prior (each data set's
   result is cached as it comes, so a stopped run resumes there).

The network sees each trial as ``(log rt, c)``.

    PYTHONPATH=. python benchmarks/hierarchical/drift_diffusion.py \
        --out benchmarks/hierarchical/drift_diffusion.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from sbi.utils.metrics import c2st
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))
from calibration import rank_statistics  # noqa: E402

from sbi_diffusion import HierarchicalNPE  # noqa: E402
from sbi_diffusion.benchmark import drift_diffusion as ddm  # noqa: E402
from sbi_diffusion.samplers import Solver  # noqa: E402

#: name -> build_posterior options; "default" is build_posterior()'s default
CONFIGS: dict[str, dict] = {
    "default": {},
    "euler_maruyama 200, B = 20": {
        "sampler": Solver("euler_maruyama", steps=200),
        "group_batch_size": 20,
    },
    "damping SNR_0 = 1": {"damping": 1.0},
    "covariance_samples 200": {"composition_options": {"covariance_samples": 200}},
}


def features(x: Tensor) -> Tensor:
    """What the network sees of trials ``(..., 2)``: ``(log rt, c)``."""
    return torch.stack([x[..., 0].log(), x[..., 1]], -1)


def read_rows(path: Path) -> list[dict]:
    return (
        [json.loads(s) for s in path.read_text().splitlines()] if path.exists() else []
    )


def append_row(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "ranks"}), flush=True)


def trained_model(args, cache: Path) -> tuple[HierarchicalNPE, float]:
    k = args.groups_per_simulation
    suffix = "" if k == 1 else f"_k{k}"
    if args.global_ensemble_size > 1:
        suffix += f"_e{args.global_ensemble_size}"
    path = cache / f"ddm_model_{args.num_simulations}_{args.max_num_steps}{suffix}.pt"
    if path.exists():
        stored = torch.load(path, weights_only=False)
        return stored["inference"], stored["train_seconds"]
    torch.manual_seed(args.seed)
    start = time.time()
    if k == 1:
        g, loc, x = ddm.simulate(args.num_simulations, args.trials)
    else:
        # data sets of k subjects that share their global parameters
        g = ddm.global_prior().sample((args.num_simulations // k,))
        _, loc, x = ddm.simulate(
            g.shape[0] * k, args.trials, global_theta=g.repeat_interleave(k, 0)
        )
        loc = loc.reshape(g.shape[0], k, -1)
        x = x.reshape(g.shape[0], k, *x.shape[1:])
    simulate_seconds = time.time() - start
    inference = HierarchicalNPE(ddm.global_prior(), ddm.local_prior)
    inference.append_simulations(g, loc, features(x))
    inference.train(
        max_num_steps=args.max_num_steps,
        seed=args.seed,
        global_ensemble_size=args.global_ensemble_size,
    )
    train_seconds = time.time() - start
    print(
        f"simulated in {simulate_seconds:.0f} s; simulation and training took "
        f"{train_seconds:.0f} s"
    )
    torch.save({"inference": inference, "train_seconds": train_seconds}, path)
    return inference, train_seconds


def cached_nuts(args, cache: Path, name: str, seed: int, data: dict) -> dict:
    """NUTS draws for the data set ``data["x"]``: ``data`` with ``g``, ``l`` and
    the record of :func:`~sbi_diffusion.benchmark.drift_diffusion.nuts_reference`
    added, loaded from the cache file of ``name`` if there, else drawn and
    saved."""
    path = cache / f"ddm_nuts_{name}_{args.nuts_warmup}_{args.nuts_samples}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    g, loc, record = ddm.nuts_reference(
        data["x"], args.nuts_samples, args.nuts_warmup, seed=seed
    )
    stored = {**data, "g": g, "l": loc, **record}
    torch.save(stored, path)
    return stored


def nuts_draws(args, cache: Path, index: int) -> dict:
    """NUTS draws for reference data set ``index``, with its true parameters
    (the data set is simulated again from its seed, which takes a moment)."""
    torch.manual_seed(10_000 + index)
    g_true = ddm.global_prior().sample()
    _, l_true, x = ddm.simulate(args.groups, args.trials, global_theta=g_true)
    data = {"g_true": g_true, "l_true": l_true, "x": x}
    return cached_nuts(args, cache, str(index), index, data)


def same_model(row: dict, args) -> bool:
    """Whether a row was made with the model these arguments train."""
    return (
        row["num_simulations"],
        row["max_num_steps"],
        row.get("groups_per_simulation", 1),
        row.get("global_ensemble_size", 1),
    ) == (
        args.num_simulations,
        args.max_num_steps,
        args.groups_per_simulation,
        args.global_ensemble_size,
    )


def comparison(g: Tensor, loc: Tensor, ref: dict) -> dict:
    """Global and local samples against NUTS's ``ref["g"]``, ``ref["l"]``."""
    n = min(len(g), len(ref["g"]))
    nuts_std, nuts_local_std = ref["g"].std(0), ref["l"].std(0)
    return {
        "c2st": float(c2st(g[:n], ref["g"][:n])),
        "c2st_per_parameter": [
            float(c2st(g[:n, k : k + 1], ref["g"][:n, k : k + 1]))
            for k in range(g.shape[1])
        ],
        "mean_error_in_std": ((g.mean(0) - ref["g"].mean(0)) / nuts_std).tolist(),
        "std_ratio": (g.std(0) / nuts_std).tolist(),
        "local_mean_abs_error_in_std": (
            ((loc.mean(0) - ref["l"].mean(0)) / nuts_local_std).abs().mean(0).tolist()
        ),
        "nuts_seconds": ref["seconds"],
        "nuts": {
            k: ref.get(k)
            for k in (
                "num_samples",
                "warmup_steps",
                "step_size",
                "divergences",
                "global_n_eff",
                "global_split_r_hat",
            )
        },
    }


def reference_rows(args, inference, train_seconds, cache: Path, out: Path) -> None:
    done = {
        (r["dataset"], r["config"])
        for r in read_rows(out)
        if r["kind"] == "reference" and same_model(r, args)
    }
    for index in range(args.reference_datasets):
        ref = None
        for name, options in CONFIGS.items():
            if (index, name) in done or name not in args.configs:
                continue
            ref = ref or nuts_draws(args, cache, index)
            posterior = inference.build_posterior(**options)
            torch.manual_seed(index)
            start = time.time()
            g, loc = posterior.sample_joint((args.num_samples,), x=features(ref["x"]))
            seconds = time.time() - start
            row = {"kind": "reference", "dataset": index, "config": name}
            row |= comparison(g, loc, ref)
            row |= {
                "seconds_per_dataset": seconds,
                "speedup": ref["seconds"] / seconds,
                "resolved": resolved(posterior),
                "num_samples": args.num_samples,
                **common(args, inference, train_seconds),
            }
            append_row(out, row)


#: name -> build_posterior options of the "subset" rows
SUBSET_CONFIGS: dict[str, dict] = {
    "default": {},
    "no noise floor": {"noise_floor": None},
}


def subset_rows(args, inference, train_seconds, cache: Path, out: Path) -> None:
    """Rows ``"subset"``: the first ``G'`` subjects of reference data set 0,
    against NUTS on the same subjects, to see how the error grows with ``G'``."""
    done = {
        (r["groups_used"], r["config"])
        for r in read_rows(out)
        if r["kind"] == "subset" and same_model(r, args)
    }
    full = nuts_draws(args, cache, 0)
    for groups in args.subset_groups:
        ref = cached_nuts(args, cache, f"0_first{groups}", 0, {"x": full["x"][:groups]})
        for name, options in SUBSET_CONFIGS.items():
            if (groups, name) in done:
                continue
            posterior = inference.build_posterior(**options)
            torch.manual_seed(0)
            start = time.time()
            g, loc = posterior.sample_joint((args.num_samples,), x=features(ref["x"]))
            row = {"kind": "subset", "dataset": 0, "groups_used": groups}
            row |= {"config": name, **comparison(g, loc, ref)}
            row |= {
                "seconds_per_dataset": time.time() - start,
                "resolved": resolved(posterior),
                "num_samples": args.num_samples,
                **common(args, inference, train_seconds),
            }
            append_row(out, row)


def single_rows(args, inference, train_seconds, cache: Path, out: Path) -> None:
    r"""Rows ``"single"``: the network's posterior of the global parameters
    given one subject (``G = 1``, no composition) against NUTS on that subject,
    for the first ``--single-subjects`` subjects of reference data set 0.

    ``information_captured`` is, per parameter, the learned over the exact gain
    in precision over the prior,
    ``(1/s_net^2 - 1/s_prior^2) / (1/s_nuts^2 - 1/s_prior^2)``. Composed over
    ``G`` groups the precisions' gains add up, so a network that captures a
    share ``r`` of each gain gives a composed posterior about ``1/sqrt(r)``
    times too wide once the data dominate the prior.
    """
    done = {
        r["subject"]
        for r in read_rows(out)
        if r["kind"] == "single" and same_model(r, args)
    }
    full = nuts_draws(args, cache, 0)
    prior_var = ddm.global_prior().variance
    posterior = inference.build_posterior()
    for subject in range(args.single_subjects):
        if subject in done:
            continue
        ref = cached_nuts(
            args,
            cache,
            f"0_subject{subject}",
            subject,
            {"x": full["x"][subject : subject + 1]},
        )
        torch.manual_seed(subject)
        g, loc = posterior.sample_joint((args.num_samples,), x=features(ref["x"]))
        gain = 1 / g.var(0) - 1 / prior_var
        exact_gain = 1 / ref["g"].var(0) - 1 / prior_var
        row = {"kind": "single", "dataset": 0, "subject": subject}
        row |= comparison(g, loc, ref)
        row |= {
            "information_captured": (gain / exact_gain).tolist(),
            "nuts_std_over_prior_std": (ref["g"].std(0) / prior_var**0.5).tolist(),
            "resolved": resolved(posterior),
            "num_samples": args.num_samples,
            **common(args, inference, train_seconds),
        }
        append_row(out, row)


def resolved(posterior) -> dict:
    """The sampling options a posterior resolved to."""
    return {
        "composition": posterior.composition,
        "sampler": posterior.sampler.as_dict(),
        "group_batch_size": posterior.group_batch_size,
        "damping_snr0": posterior.damping.snr0,
        "noise_floor": posterior.noise_floor,
        **posterior.composition_options,
    }


def common(args, inference, train_seconds) -> dict:
    return {
        "groups": args.groups,
        "trials": args.trials,
        "num_simulations": args.num_simulations,
        "max_num_steps": args.max_num_steps,
        "groups_per_simulation": args.groups_per_simulation,
        "global_ensemble_size": args.global_ensemble_size,
        "train_seconds": train_seconds,
        "seed": args.seed,
        "training": inference.global_inference.resolved_training,
    }


def sbc_row(args, inference, train_seconds, cache: Path, out: Path) -> None:
    if any(r["kind"] == "sbc" and same_model(r, args) for r in read_rows(out)):
        return
    posterior = inference.build_posterior()
    # per data set results, saved after each one so that a stopped run resumes
    partial_path = cache / (
        f"ddm_sbc_{args.num_simulations}_{args.max_num_steps}_"
        f"{args.sbc_datasets}_{args.sbc_samples}.pt"
    )
    partial = (
        torch.load(partial_path, weights_only=False)
        if partial_path.exists()
        else {"rows": [], "seconds": 0.0}
    )
    for index in range(len(partial["rows"]), args.sbc_datasets):
        torch.manual_seed(20_000 + index)
        start = time.time()
        g_true = ddm.global_prior().sample()
        _, l_true, x = ddm.simulate(args.groups, args.trials, global_theta=g_true)
        g, loc = posterior.sample_joint((args.sbc_samples,), x=features(x))
        partial["seconds"] += time.time() - start
        partial["rows"].append(
            {
                "rank": (g < g_true).sum(0),
                "truth": g_true,
                "mean": g.mean(0),
                "local_truth": l_true,
                "local_mean": loc.mean(0),
            }
        )
        torch.save(partial, partial_path)
        print(f"SBC data set {index + 1}/{args.sbc_datasets}", flush=True)

    def column(key: str, join=torch.stack) -> Tensor:
        return join([r[key] for r in partial["rows"]])

    ranks, truth, means = column("rank"), column("truth"), column("mean")
    local_truth = column("local_truth", torch.cat)
    local_means = column("local_mean", torch.cat)
    seconds = partial["seconds"] / args.sbc_datasets
    append_row(
        out,
        {
            "kind": "sbc",
            "datasets": args.sbc_datasets,
            "num_samples": args.sbc_samples,
            **rank_statistics(ranks, args.sbc_samples, 10),
            "recovery_r2": r_squared(means, truth),
            "local_recovery_r2": r_squared(local_means, local_truth),
            "seconds_per_dataset": seconds,
            "resolved": resolved(posterior),
            "ranks": ranks.tolist(),
            **common(args, inference, train_seconds),
        },
    )


def r_squared(estimate: Tensor, truth: Tensor) -> list[float]:
    """``1 - sum (estimate - truth)^2 / sum (truth - mean truth)^2`` per column."""
    residual = ((estimate - truth) ** 2).sum(0)
    total = ((truth - truth.mean(0)) ** 2).sum(0)
    return (1 - residual / total).tolist()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--out", default="benchmarks/hierarchical/drift_diffusion.jsonl"
    )
    parser.add_argument("--cache", default="benchmarks/hierarchical/cache")
    parser.add_argument("--num-simulations", type=int, default=20_000)
    parser.add_argument("--max-num-steps", type=int, default=3000)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--reference-datasets", type=int, default=2)
    parser.add_argument("--nuts-warmup", type=int, default=500)
    parser.add_argument("--nuts-samples", type=int, default=1000)
    parser.add_argument("--sbc-datasets", type=int, default=100)
    parser.add_argument("--sbc-samples", type=int, default=99)
    parser.add_argument("--single-subjects", type=int, default=5)
    parser.add_argument("--subset-groups", type=int, nargs="+", default=[10, 30])
    parser.add_argument(
        "--phases",
        nargs="+",
        default=["reference", "sbc"],
        help="of train, reference, single, subsets, sbc",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--groups-per-simulation",
        type=int,
        default=1,
        help="k: train the global model on data sets of k subjects "
        "(--num-simulations counts subjects)",
    )
    parser.add_argument(
        "--global-ensemble-size",
        type=int,
        default=1,
        help="K: compose the mean of K global models trained on the same "
        "simulations (HierarchicalNPE.train(global_ensemble_size=K))",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(CONFIGS),
        choices=list(CONFIGS),
        help="sampling configurations of the reference rows",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    inference, train_seconds = trained_model(args, cache)
    if "reference" in args.phases:
        reference_rows(args, inference, train_seconds, cache, out)
    if "single" in args.phases:
        single_rows(args, inference, train_seconds, cache, out)
    if "subsets" in args.phases:
        subset_rows(args, inference, train_seconds, cache, out)
    if "sbc" in args.phases:
        sbc_row(args, inference, train_seconds, cache, out)


if __name__ == "__main__":
    main()
