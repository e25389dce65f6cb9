"""The runner end to end on a tiny budget: rows, resume, reports, executors, CLI."""

import functools
import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("sbibm")

from sbi_diffusion.benchmark import run_benchmark  # noqa: E402
from sbi_diffusion.benchmark.cli import main  # noqa: E402
from sbi_diffusion.benchmark.report import write_report  # noqa: E402
from sbi_diffusion.benchmark.results import REQUIRED_FIELDS, read_rows  # noqa: E402

TINY = {
    "tasks": ["two_moons"],
    "num_simulations": [200],
    "seeds": [0],
    "num_posterior_samples": 200,
}
NPE = "npe:max_num_epochs=3,training_batch_size=50"


def test_end_to_end_and_resume(tmp_path: Path) -> None:
    output = tmp_path / "r.jsonl"
    frame = run_benchmark(
        methods=[NPE], observations=[1], output=output, executor="inline", **TINY
    )
    assert len(frame) == 1
    row = read_rows(output)[0]
    assert set(REQUIRED_FIELDS) <= set(row)
    assert row["method"] == "npe" and row["options"]["max_num_epochs"] == 3
    assert 0.4 <= row["c2st"] <= 1.0
    assert row["nfe"] == 1.0 and row["protocol"]["name"] == "test"
    # sbi's NPE samples its flow directly
    assert row["resolved"] == {"sampler": "direct", "sampler_options": {}}
    assert set(row["versions"]) >= {"python", "torch", "sbi", "sbibm", "sbi_diffusion"}

    # Simulate an interruption: a half-written line after the finished row.
    with output.open("a") as handle:
        handle.write(json.dumps(row)[:30])
    with pytest.warns(UserWarning, match="incomplete"):
        frame = run_benchmark(
            methods=[NPE], observations=[1, 2], output=output, executor="inline", **TINY
        )
    with pytest.warns(UserWarning, match="incomplete"):
        rows = read_rows(output)
    assert sorted(r["num_observation"] for r in rows) == [1, 2]  # 1 was skipped
    assert len(frame) == 2

    table, png = write_report(output)
    text = table.read_text()
    assert "two_moons" in text and "npe[" in text
    assert png.stat().st_size > 1000


def test_model_cache_reuses_the_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sbi_diffusion.benchmark import methods, runner

    cache = tmp_path / "models"
    output = tmp_path / "r.jsonl"
    run_benchmark(
        methods=[NPE],
        observations=[1],
        output=output,
        executor="inline",
        model_cache=cache,
        **TINY,
    )
    (saved,) = cache.glob("*.pt")
    assert saved.name.startswith("two_moons_npe_200_0_")  # options are hashed in
    first = read_rows(output)[0]

    from sbi.inference import NPE_C

    @functools.wraps(NPE_C.train)  # keeps the signature the options are routed by
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached estimator should have been used")

    monkeypatch.setattr(NPE_C, "train", no_training)
    frame = run_benchmark(
        methods=[NPE],
        observations=[1, 2],
        output=output,
        executor="inline",
        model_cache=cache,
        **TINY,
    )
    assert len(frame) == 2
    second = [r for r in read_rows(output) if r["num_observation"] == 2][0]
    assert second["train_s"] == pytest.approx(first["train_s"], abs=1e-3)
    # Sampling options do not change the trained model, so they share the file.
    sampled_differently = methods.parse("diffusion:sampler=heun,steps=30")
    path = runner.model_cache_path(
        cache, "two_moons", sampled_differently, 200, 0, "cpu"
    )
    default = methods.parse("diffusion")
    assert path == runner.model_cache_path(cache, "two_moons", default, 200, 0, "cpu")
    # The trainer's defaults are hashed in: a changed default trains anew.
    assert path.name.startswith("two_moons_diffusion_200_0_")
    from sbi_diffusion import DiffusionNPE

    recipe = DiffusionNPE.training_recipe()
    monkeypatch.setattr(
        DiffusionNPE,
        "training_recipe",
        classmethod(lambda cls: {**recipe, "steps": [1]}),
    )
    assert runner.model_cache_path(cache, "two_moons", default, 200, 0, "cpu") != path

    # A model trained on another device type (a GPU node) is loaded onto this
    # one, and the rows say where it was trained.
    gpu_file = saved.with_name(saved.stem + "_cuda.pt")
    contents = torch.load(saved, weights_only=False)
    contents["train_device"] = "cuda (NVIDIA test GPU)"
    torch.save(contents, gpu_file)
    saved.unlink()
    run_benchmark(
        methods=[NPE],
        observations=[3],
        output=output,
        executor="inline",
        model_cache=cache,
        **TINY,
    )
    third = [r for r in read_rows(output) if r["num_observation"] == 3][0]
    assert third["train_device"] == "cuda (NVIDIA test GPU)"
    assert third["device"].startswith("cpu")
    assert first["train_device"] == first["device"]


def test_an_ensemble_row_trains_its_members_once(tmp_path: Path) -> None:
    from sbi_diffusion.benchmark import methods, runner
    from sbi_diffusion.model import DenoiserEnsemble

    output, cache = tmp_path / "r.jsonl", tmp_path / "models"
    spec = "diffusion:ensemble_size=2,max_num_steps=20"
    for observation in (1, 2):
        run_benchmark(
            methods=[spec],
            observations=[observation],
            output=output,
            executor="inline",
            model_cache=cache,
            **TINY,
        )
    rows = read_rows(output)
    assert [r["num_observation"] for r in rows] == [1, 2]
    assert rows[0]["options"] == {"ensemble_size": 2, "max_num_steps": 20}
    resolved = rows[0]["resolved"]
    assert resolved["ensemble_size"] == 2
    assert resolved["steps_trained_by_member"] == [20, 20]
    # one cached file, apart from the single model's, and the second row used it
    path = runner.model_cache_path(
        cache, "two_moons", methods.parse(spec), 200, 0, "cpu"
    )
    single = runner.model_cache_path(
        cache, "two_moons", methods.parse("diffusion:max_num_steps=20"), 200, 0, "cpu"
    )
    assert path != single
    assert [p.name for p in cache.iterdir()] == [path.name]
    saved = runner.torch.load(path, weights_only=False)
    assert isinstance(saved["estimator"], DenoiserEnsemble)
    assert rows[1]["train_s"] == pytest.approx(saved["train_s"], abs=1e-3)


def test_distillation_trains_the_teacher_once(tmp_path: Path) -> None:
    from sbi_diffusion.benchmark import methods, runner

    output, cache = tmp_path / "r.jsonl", tmp_path / "models"
    student = "consistency:teacher=diffusion,max_num_epochs=3,steps=1"
    run_benchmark(
        methods=[student, "diffusion"],
        observations=[1],
        output=output,
        executor="inline",
        model_cache=cache,
        **TINY,
    )
    rows = {r["method"]: r for r in read_rows(output)}
    assert rows["consistency"]["nfe"] == 1.0
    assert 0.4 <= rows["consistency"]["c2st"] <= 1.0
    assert rows["consistency"]["options"]["teacher"] == "diffusion"
    teacher = runner.model_cache_path(
        cache, "two_moons", methods.parse("diffusion"), 200, 0, "cpu"
    )
    student_path = runner.model_cache_path(
        cache, "two_moons", methods.parse(student), 200, 0, "cpu"
    )
    assert teacher.exists() and student_path.exists()
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [teacher.name, student_path.name]
    )
    # the diffusion row used the teacher's training, not a second one
    saved = runner.torch.load(teacher, weights_only=False)
    assert rows["diffusion"]["train_s"] == pytest.approx(saved["train_s"], abs=1e-3)
    # rows record what the defaults resolved to, also for a model from the cache
    resolved = rows["diffusion"]["resolved"]
    assert resolved["sampler"] == "dpm++2m"
    assert resolved["sampler_options"] == {"steps": 20}
    assert resolved["net_kwargs"] == {"width": 128, "depth": 2}
    assert resolved["steps_trained"] >= 1
    assert rows["consistency"]["resolved"]["sampler_options"]["steps"] == 1


def test_process_pool_and_submitit_local(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    output = tmp_path / "r.jsonl"
    frame = run_benchmark(
        methods=[NPE], observations=[1], output=output, executor="pool", **TINY
    )
    assert len(frame) == 1
    frame = run_benchmark(
        methods=[NPE],
        observations=[1, 2],
        output=output,
        executor="local",
        log_folder=tmp_path / "logs",
        **TINY,
    )
    assert sorted(frame["num_observation"]) == [1, 2]
    assert any((tmp_path / "logs").iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "nine_moons"], "Unknown task"),
        (["--budgets", "0"], "must be positive"),
        (["--methods", "magic"], "Unknown method"),
        (["--methods", "npe:nonsense=1"], "Unknown option"),
        (["--observations", "11"], "does not exist"),
        (["--device", "cuda:7"], "CUDA is not available"),
    ],
)
def test_bad_input_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    defaults = {
        "--tasks": ["two_moons"],
        "--budgets": ["100"],
        "--methods": ["npe"],
        "--output": [str(tmp_path / "r.jsonl")],
    }
    defaults[args[0]] = args[1:]
    argv = [item for key, value in defaults.items() for item in (key, *value)]
    if args[0] not in defaults:
        argv += args
    if "cuda" in message:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available")
    assert main(["run", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists() or not read_rows(tmp_path / "r.jsonl")


def test_other_protocol_and_unwritable_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "r.jsonl"
    run_benchmark(
        methods=[NPE], observations=[1], output=output, executor="inline", **TINY
    )
    base = ["--tasks", "two_moons", "--budgets", "200", "--methods", NPE]
    # Same file, but the published protocol (10,000 samples): refused.
    assert main([*base, "--observations", "2", "--output", str(output)]) == 2
    assert "another protocol" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_slurm_executor_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("submitit")
    import shutil

    from sbi_diffusion.benchmark.executors import SlurmOptions, make_submitit_executor

    options = SlurmOptions(partition="gpu", gpus_per_node=1, time_min=30)
    if shutil.which("srun") is None:
        with pytest.raises(ValueError, match="needs a Slurm cluster"):
            make_submitit_executor("slurm", tmp_path, options)
        # Pretend to be on a cluster: submitit only looks for srun on the PATH.
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "srun").write_text("#!/bin/sh\n")
        (fake / "srun").chmod(0o755)
        monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    executor = make_submitit_executor("slurm", tmp_path, options)
    params = executor._executor.parameters
    assert params["partition"] == "gpu" and params["time"] == 30
    assert params["gpus_per_node"] == 1


def test_quick_preset_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    import sbi_diffusion.benchmark.api as api

    seen: dict = {}

    def fake_run_benchmark(**kwargs: object) -> pd.DataFrame:
        seen.update(kwargs)
        return pd.DataFrame()

    monkeypatch.setattr(api, "run_benchmark", fake_run_benchmark)
    output = tmp_path / "q.jsonl"
    assert main(["--preset", "quick", "--output", str(output), "--no-report"]) == 0
    assert seen["tasks"] == ["two_moons"]
    assert seen["num_simulations"] == [1000, 10000]
    assert seen["methods"] == ["diffusion", "npe"]
    assert seen["observations"] == [1, 2]
    assert seen["num_posterior_samples"] == 10_000


def test_sampling_failure_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sbi_diffusion.benchmark.runner as runner

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no samples inside the prior")

    monkeypatch.setattr(runner, "_sample", broken)
    output = tmp_path / "r.jsonl"
    frame = run_benchmark(
        methods=[NPE], observations=[1], output=output, executor="inline", **TINY
    )
    row = frame.iloc[0]
    assert row["c2st"] is None and "no samples inside the prior" in row["error"]
    table, _ = write_report(output)
    assert "failed (1)" in table.read_text()


def test_sbi_rows_record_the_sampler_their_posterior_runs() -> None:
    from sbi.inference import FMPE, NLE, NPSE
    from sbi.utils import BoxUniform

    from sbi_diffusion.benchmark.runner import sbi_sampling

    torch.manual_seed(0)
    prior = BoxUniform(-torch.ones(2), torch.ones(2))
    theta = prior.sample((200,))
    x = theta + 0.1 * torch.randn_like(theta)

    def built(trainer: type, **posterior_options: object) -> object:
        inference = trainer(prior=prior, show_progress_bars=False)
        inference.append_simulations(theta, x).train(max_num_epochs=2)
        return inference.build_posterior(**posterior_options)

    nle = sbi_sampling(built(NLE, mcmc_method="slice_np_vectorized"), {})
    assert nle["sampler"] == "mcmc"
    assert nle["sampler_options"]["method"] == "slice_np_vectorized"
    assert {"num_chains", "thin", "warmup_steps"} <= set(nle["sampler_options"])
    npse = sbi_sampling(built(NPSE), {"steps": 50})
    assert npse["sampler"] == "sde"
    assert npse["sampler_options"]["steps"] == 50  # the spec's option wins
    assert npse["sampler_options"]["predictor"] == "euler_maruyama"
    assert sbi_sampling(built(FMPE), {})["sampler"] == "ode"
