"""The benchmark runner: validation, job planning, training and evaluation.

One job trains one method on one task at one budget with one seed, then samples
and scores every requested observation that is not in the results file yet. All
methods are amortized over observations (NLE through its MCMC posterior), so a
single training serves the ten observations; ``train_s`` of each row is the time of
that shared training.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbi_diffusion.benchmark import methods as method_registry
from sbi_diffusion.benchmark.results import (
    append_row,
)
from sbi_diffusion.benchmark.tasks import (
    distribution_to,
    load_task,
)

PROTOCOL_NUM_SAMPLES = 10_000
"""Posterior samples per observation under the published protocol."""


def protocol_for(num_posterior_samples: int) -> dict[str, Any]:
    """The protocol record stored with every row.

    Args:
        num_posterior_samples: Posterior samples scored against the reference.

    Returns:
        ``{"name": "sbibm", ...}`` for the published protocol (10,000 samples
        against sbibm's 10,000 reference samples with ``sbibm.metrics.c2st``
        defaults) and ``{"name": "test", ...}`` for anything smaller.
    """
    standard = num_posterior_samples == PROTOCOL_NUM_SAMPLES
    return {
        "name": "sbibm" if standard else "test",
        "metric": "sbibm.metrics.c2st",
        "num_posterior_samples": int(num_posterior_samples),
        "num_reference_samples": int(num_posterior_samples),
    }


def package_versions() -> dict[str, str]:
    """Versions of python, torch, sbi, sbibm and sbi_diffusion."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("sbi", "sbibm", "sbi-diffusion"):
        try:
            versions[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist.replace("-", "_")] = "not installed"
    return versions


@dataclass(frozen=True)
class Job:
    """Train one method once and score a list of observations.

    Attributes:
        task: sbibm task name.
        num_simulations: Simulation budget.
        method: Method spec string (``name:key=value,...``).
        seed: Seed of the simulations and the training.
        observations: Observation numbers to score.
        device: Torch device.
        output: Results file the rows are appended to.
        num_posterior_samples: Samples scored per observation.
        torch_threads: Intra-op threads for this job (0 leaves torch's default).
        model_cache: Folder of trained estimators (see :func:`train_or_load`);
            ``None`` trains every time.
    """

    task: str
    num_simulations: int
    method: str
    seed: int
    observations: tuple[int, ...]
    device: str
    output: str
    num_posterior_samples: int = PROTOCOL_NUM_SAMPLES
    torch_threads: int = 1
    model_cache: str | None = None

    @property
    def name(self) -> str:
        """Short description for logs."""
        obs = ",".join(map(str, self.observations))
        return (
            f"{self.task} n={self.num_simulations} {self.method} "
            f"seed={self.seed} obs={obs}"
        )


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sampling_seed(seed: int, num_observation: int) -> int:
    """Seed of the sampling for one row, derived from seed and observation."""
    return seed * 1_000 + num_observation


def _sample(
    spec: method_registry.MethodSpec,
    inference: Any,
    posterior: Any,
    routed: method_registry.RoutedOptions,
    x_o: torch.Tensor,
    num_samples: int,
) -> tuple[torch.Tensor, float, float | None]:
    kwargs: dict[str, Any] = dict(routed.sample)
    with method_registry.count_network_evaluations(spec, inference, posterior) as cnt:
        start = time.perf_counter()
        samples = posterior.sample(
            (num_samples,), x=x_o, show_progress_bars=False, **kwargs
        )
        if samples.is_cuda:
            torch.cuda.synchronize()
        sample_s = time.perf_counter() - start
    nfe: float | None
    last = getattr(posterior, "last_nfe", None)
    if spec.definition.family == "sbi_diffusion" and last is not None:
        nfe = float(last)
    elif spec.name == "npe":
        nfe = 1.0
    else:
        nfe = cnt["rows"] / num_samples if cnt["rows"] else None
    return samples.detach().cpu(), sample_s, nfe


@dataclass
class TrainedMethod:
    """A trained method with the times its training took.

    Attributes:
        inference: The trainer (untrained when the estimator came from the cache).
        posterior: The sbi posterior.
        routed: The method's options, routed.
        train_s: Wall-clock training time in seconds.
        train_cpu_s: CPU time of the training process in seconds (None for a
            model file written before it was recorded).
        simulate_s: Time to simulate the training data in seconds (None as
            for ``train_cpu_s``).
        train_device: The device the estimator was trained on, as in the rows'
            ``device`` field (it differs from the sampling device when a model
            trained on a GPU is scored on a CPU, or the reverse).
    """

    inference: Any
    posterior: Any
    routed: method_registry.RoutedOptions
    train_s: float
    train_cpu_s: float | None
    simulate_s: float | None
    train_device: str
    resolved_training: dict[str, Any] = field(default_factory=dict)


def rounded_seconds(value: float | None) -> float | None:
    """A duration rounded to milliseconds; None where it was not measured (a
    missing or NaN value), so rows stay valid JSON."""
    if value is None or math.isnan(float(value)):
        return None
    return round(float(value), 3)


def model_cache_path(
    cache: Path,
    task_name: str,
    spec: method_registry.MethodSpec,
    num_simulations: int,
    seed: int,
    device: str,
) -> Path:
    """File of a trained estimator in a model cache.

    Sampling options do not change the trained model, so specs that differ only
    in them share one file: the name holds the task, the method, the budget, the
    seed, the device type and a hash of the options that reach the trainer and,
    for this package's trainers, of their ``training_recipe()`` (their
    defaults), so a changed default trains anew instead of loading a model
    trained under the old one.

    Args:
        cache: The cache folder.
        task_name: sbibm task name.
        spec: The method spec.
        num_simulations: Simulation budget.
        seed: Training seed.
        device: Torch device.

    Returns:
        The path (it may not exist yet).
    """
    routed = method_registry.route_options(spec)
    trained_by: dict[str, Any] = {"init": routed.init, "train": routed.train}
    if routed.teacher is not None:
        trained_by["teacher"] = routed.teacher.to_string()
    if routed.ensemble_size > 1:
        trained_by["ensemble_size"] = routed.ensemble_size
    recipe = getattr(spec.definition.load_class(), "training_recipe", None)
    if recipe is not None:
        trained_by["recipe"] = recipe()
    name = f"{task_name}_{spec.name}_{num_simulations}_{seed}"
    if trained_by.get("recipe") or routed.init or routed.train or routed.teacher:
        digest = hashlib.sha1(
            json.dumps(trained_by, sort_keys=True, default=str).encode()
        ).hexdigest()[:10]
        name += f"_{digest}"
    device_type = torch.device(device).type
    if device_type != "cpu":
        name += f"_{device_type}"
    return cache / f"{name}.pt"


def train_or_load(
    task_name: str,
    task: Any,
    spec: method_registry.MethodSpec,
    num_simulations: int,
    seed: int,
    device: str,
    cache: Path | None = None,
) -> TrainedMethod:
    """Simulate, train and build the posterior of a method, or load it from a cache.

    With a cache, a finished training is saved (atomically) as the trained
    estimator with its timings, so a rerun after an interruption, or a later sweep
    over sampling options, does not train again. The posterior is always built
    anew, so it follows the current sampling defaults. A model trained on the
    requested device type is preferred; otherwise one trained on another device
    type (a GPU node, say) is loaded onto ``device``, and ``train_device`` says
    where it was trained.

    A spec with a teacher (``consistency:teacher=diffusion``) first trains or
    loads the teacher the same way, then distils it on the same simulations;
    the training time reported is the distillation's alone.

    Args:
        task_name: sbibm task name.
        task: The loaded task.
        spec: The method spec.
        num_simulations: Simulation budget.
        seed: Seed of the simulations and the training.
        device: Torch device.
        cache: Cache folder, or ``None`` to always train.

    Returns:
        The trained method.
    """
    prior = distribution_to(task.prior, device)
    inference, routed = method_registry.build_inference(spec, prior, device)
    path = None
    if cache is not None:
        # the file trained on this device's type, else one from another type
        path, *others = (
            model_cache_path(cache, task_name, spec, num_simulations, seed, kind)
            for kind in (device, "cpu", "cuda")
        )
        found = next((file for file in (path, *others) if file.exists()), None)
        if found is not None:
            saved = torch.load(found, weights_only=False, map_location=device)
            print(f"loaded the trained estimator from {found}", file=sys.stderr)
            estimator = saved.get("estimator")
            if estimator is None:  # files that hold a whole posterior of ours
                estimator = saved["posterior"].estimator
            # The posterior is rebuilt, so it takes today's sampling defaults.
            posterior = method_registry.build_posterior(
                spec, inference, routed, estimator
            )
            return TrainedMethod(
                inference=inference,
                posterior=posterior,
                routed=routed,
                train_s=float(saved["train_s"]),
                # None: a file written before the field existed (not measured)
                train_cpu_s=rounded_seconds(saved.get("train_cpu_s")),
                simulate_s=rounded_seconds(saved.get("simulate_s")),
                # files written before the field existed were trained on a CPU
                train_device=saved.get("train_device", device_name("cpu")),
                resolved_training=saved.get("resolved_training", {}),
            )

    teacher = None
    if routed.teacher is not None:
        teacher = train_or_load(
            task_name, task, routed.teacher, num_simulations, seed, device, cache
        )
    # Same seed, same simulations: a student sees its teacher's training data.
    seed_everything(seed)
    start = time.perf_counter()
    theta = task.sample_prior(num_simulations)
    x = task.simulate(theta)
    simulate_s = time.perf_counter() - start

    start, cpu_start = time.perf_counter(), time.process_time()
    inference.append_simulations(theta, x)
    if teacher is None and routed.ensemble_size > 1:
        estimator = inference.train_ensemble(
            routed.ensemble_size, show_train_summary=False, **routed.train
        )
    elif teacher is None:
        estimator = inference.train(show_train_summary=False, **routed.train)
    else:
        inference.distill(teacher.posterior, show_train_summary=False, **routed.train)
        estimator = inference._trained_estimator
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    train_s = time.perf_counter() - start
    train_cpu_s = time.process_time() - cpu_start
    posterior = method_registry.build_posterior(spec, inference, routed, estimator)
    if path is not None:
        saved = {
            "estimator": estimator,
            "train_s": train_s,
            "train_cpu_s": train_cpu_s,
            "simulate_s": simulate_s,
            "train_device": device_name(device),
            "resolved_training": _resolved_training(inference),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".partial{os.getpid()}")
            torch.save(saved, partial)
            os.replace(partial, path)
        except Exception as err:  # noqa: BLE001 - caching is an optimisation
            print(f"could not cache the trained estimator: {err}", file=sys.stderr)
    return TrainedMethod(
        inference,
        posterior,
        routed,
        train_s,
        train_cpu_s,
        simulate_s,
        train_device=device_name(device),
        resolved_training=_resolved_training(inference),
    )


def _resolved_training(inference: Any) -> dict[str, Any]:
    """The trainer's ``resolved_training`` (this package's trainers), else {}."""
    return dict(getattr(inference, "resolved_training", {}) or {})


_MCMC_SETTINGS = ("method", "thin", "warmup_steps", "num_chains", "init_strategy")
_SDE_SETTINGS = ("predictor", "corrector", "steps")


def sbi_sampling(posterior: Any, sample_options: dict[str, Any]) -> dict[str, Any]:
    """The sampler of one of sbi's posteriors with the settings it will use.

    ``DirectPosterior`` (NPE) samples the flow directly (``"direct"``);
    ``MCMCPosterior`` (NLE) records its MCMC method, chains, thinning, warm-up
    and initialisation; ``VectorFieldPosterior`` (NPSE, FMPE) its
    ``sample_with`` (``"sde"`` or ``"ode"``) and, for ``"sde"``, the predictor,
    corrector and steps of its ``sample()`` defaults. Options passed to
    ``sample()`` by the spec override these.

    Args:
        posterior: The built sbi posterior.
        sample_options: The spec's options that go to ``sample()``.

    Returns:
        ``{"sampler": ..., "sampler_options": {...}}``.
    """
    kind = type(posterior).__name__
    options: dict[str, Any] = {}
    if kind == "DirectPosterior":
        sampler = "direct"
    elif kind == "MCMCPosterior":
        sampler = "mcmc"
        options = {
            k: getattr(posterior, k) for k in _MCMC_SETTINGS if hasattr(posterior, k)
        }
    elif kind == "VectorFieldPosterior":
        sampler = str(getattr(posterior, "sample_with", "sde"))
        if sampler == "sde":
            parameters = inspect.signature(type(posterior).sample).parameters
            options = {
                k: parameters[k].default for k in _SDE_SETTINGS if k in parameters
            }
    else:
        sampler = kind
    options.update(sample_options)
    return {"sampler": sampler, "sampler_options": options}


def resolved_options(
    spec: method_registry.MethodSpec,
    posterior: Any,
    routed: method_registry.RoutedOptions,
    resolved_training: dict[str, Any],
) -> dict[str, Any]:
    """What a row's method ran with once defaults are filled in: for this
    package's estimators the sampler and its options (the posterior's defaults
    updated by the spec's sampling options) and the resolved training; for
    sbi's methods the sampler as their posterior runs it
    (:func:`sbi_sampling`)."""
    if spec.definition.family != "sbi_diffusion":
        return sbi_sampling(posterior, routed.sample)
    sample = dict(routed.sample)
    sampler = sample.pop("sampler", getattr(posterior, "sampler", None))
    options = dict(getattr(posterior, "sampler_options", {}) or {})
    if sampler != getattr(posterior, "sampler", None):
        options = {}
    options.update(sample)
    return {"sampler": sampler, "sampler_options": options, **resolved_training}


def run_job(job: Job) -> list[dict[str, Any]]:
    """Run one job and append its rows to ``job.output``.

    Args:
        job: The job.

    Returns:
        The rows written.
    """
    from sbibm.metrics import c2st

    print(f"start {job.name}", file=sys.stderr, flush=True)
    if job.torch_threads > 0:
        torch.set_num_threads(job.torch_threads)
    spec = method_registry.parse(job.method)
    task = load_task(job.task)
    protocol = protocol_for(job.num_posterior_samples)
    versions = package_versions()
    defaults = method_registry.defaults_fingerprint(spec)

    trained = train_or_load(
        task_name=job.task,
        task=task,
        spec=spec,
        num_simulations=job.num_simulations,
        seed=job.seed,
        device=job.device,
        cache=None if job.model_cache is None else Path(job.model_cache),
    )
    inference, posterior, routed = trained.inference, trained.posterior, trained.routed
    train_s, train_cpu_s = trained.train_s, trained.train_cpu_s
    simulate_s = trained.simulate_s

    rows = []
    for num_observation in job.observations:
        seed_everything(sampling_seed(job.seed, num_observation))
        x_o = task.get_observation(num_observation).to(job.device)
        error = None
        try:
            samples, sample_s, nfe = _sample(
                spec, inference, posterior, routed, x_o, job.num_posterior_samples
            )
        except Exception as err:  # noqa: BLE001 - a failed sample is a result
            # The shared training is kept for the other observations; the row
            # records the failure (no C2ST) and counts as failed in reports.
            error = f"sampling failed: {type(err).__name__}: {err}"
            samples, sample_s, nfe = torch.empty(0, task.dim_parameters), None, None
        reference = task.get_reference_posterior_samples(num_observation)
        reference = reference[: job.num_posterior_samples]
        row: dict[str, Any] = {
            "task": job.task,
            "num_simulations": job.num_simulations,
            "method": spec.name,
            "options": dict(spec.options),
            "defaults": defaults,
            "resolved": resolved_options(
                spec, posterior, routed, trained.resolved_training
            ),
            "seed": job.seed,
            "num_observation": num_observation,
            "c2st": None,
            "train_s": round(train_s, 3),
            "train_cpu_s": rounded_seconds(train_cpu_s),
            "sample_s": None if sample_s is None else round(sample_s, 4),
            "simulate_s": rounded_seconds(simulate_s),
            "nfe": nfe,
            "device": device_name(job.device),
            "train_device": trained.train_device,
            "versions": versions,
            "protocol": protocol,
        }
        finite = torch.isfinite(samples).all(dim=1)
        if error is not None:
            row["error"] = error
        elif not finite.all():
            row["error"] = f"{int((~finite).sum())} non-finite posterior samples"
        else:
            row["c2st"] = float(c2st(reference, samples)[0])
        append_row(job.output, row)
        rows.append(row)
        print(format_row(row), file=sys.stderr, flush=True)
    return rows


def format_row(row: dict[str, Any]) -> str:
    """One log line for a finished row."""
    c2st = row["c2st"]
    score = "n/a" if c2st is None else f"{c2st:.3f}"
    nfe = "n/a" if row["nfe"] is None else f"{row['nfe']:.1f}"
    sample = "n/a" if row["sample_s"] is None else f"{row['sample_s']:.2f}s"
    line = (
        f"{row['task']} n={row['num_simulations']} {row['method']} "
        f"seed={row['seed']} obs={row['num_observation']}: c2st={score} "
        f"train={row['train_s']:.1f}s sample={sample} nfe={nfe}"
    )
    return line + (f" ({row['error']})" if row.get("error") else "")


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return f"{device} ({torch.cuda.get_device_name(index)})"
    return f"{device} ({platform.processor() or platform.machine()})"
