"""The one table: current-default rows only, published columns, bold best."""

from importlib.metadata import version
from pathlib import Path

from sbi_diffusion.benchmark import results
from sbi_diffusion.benchmark.methods import defaults_fingerprint, parse
from sbi_diffusion.benchmark.overview import current_defaults, load_all, overview_table
from sbi_diffusion.benchmark.published import SBIBM_NLE, SBIBM_SNLE, SIMFORMER
from sbi_diffusion.benchmark.report import EARLIER_DEFAULTS, load_results
from sbi_diffusion.benchmark.runner import protocol_for


def row(method: str, observation: int, c2st: float, **changes: object) -> dict:
    out = {
        "task": "slcp",
        "num_simulations": 10_000,
        "method": method,
        "options": {},
        "seed": 0,
        "num_observation": observation,
        "c2st": c2st,
        "train_s": 1.0,
        "sample_s": 0.1,
        "nfe": 1.0,
        "device": "cpu",
        "versions": {"sbi": version("sbi")},
        "protocol": protocol_for(10_000),
        "resolved": {"sampler": "dpm++2m", "sampler_options": {"steps": 20}},
    }
    out.update(changes)
    return out


def test_overview_keeps_current_default_rows_and_marks_the_best(tmp_path: Path) -> None:
    current = defaults_fingerprint(parse("diffusion"))
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for item in (
        row("diffusion", 1, 0.70, defaults=current),
        row("diffusion", 2, 0.72, defaults=current),
        row("diffusion", 3, 0.50),  # no fingerprint: earlier defaults, left out
        row("diffusion", 4, 0.50, defaults=current, options={"steps": 5}),
        row("nle", 1, 0.76),
        row("nle", 2, 0.74),
        row("flow_matching", 1, 0.60),  # earlier defaults only: named, not shown
    ):
        results.append_row(first, item)
    results.append_row(second, row("nle", 1, 0.10))  # a duplicate: the first wins
    results.append_row(second, row("npe", 1, 0.95, protocol=protocol_for(100)))

    frame = current_defaults(load_all([first, second]))
    assert sorted(zip(frame["method"], frame["num_observation"], strict=True)) == [
        ("diffusion", 1),
        ("diffusion", 2),
        ("nle", 1),
        ("nle", 2),
    ]
    labels = set(load_results(first)["label"])
    assert "diffusion" + EARLIER_DEFAULTS in labels and "nle" in labels

    text = overview_table(load_all([first, second]))
    assert "no rows at the current defaults yet" in text  # 10^3 and 10^5
    line = next(x for x in text.splitlines() if x.startswith("| slcp |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    header = next(x for x in text.splitlines() if x.startswith("| task |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    by_column = dict(zip(columns, cells, strict=True))
    assert by_column["DiffusionNPE"] == "0.710 ± 0.014 (2)"
    assert by_column["sbi NLE"] == "0.750 ± 0.014 (2)"
    assert "sbi NPE" not in by_column  # its only row used another protocol
    assert by_column[SBIBM_NLE.label] == "0.77"
    # The best single-round method is bold; sequential ones are not ranked.
    assert by_column[SIMFORMER.label] == "**0.65**"
    assert by_column[SBIBM_SNLE.label] == "*0.71*"
    assert "FlowMatchingNPE" not in header
    assert "earlier defaults or with options at this budget: FlowMatchingNPE" in text
    assert "Resolved in these rows:" in text and 'dpm++2m {"steps": 20}' in text


def test_published_numbers_lookup() -> None:
    from sbi_diffusion.benchmark.published import PUBLISHED, SBIBM_NPE
    from sbi_diffusion.benchmark.tasks import TASKS

    for method in PUBLISHED:
        assert set(method.c2st) <= set(TASKS)
        if "sbibm" in method.label:
            assert set(method.c2st) == set(TASKS)
    assert SBIBM_NPE.c2st["lotka_volterra"] == (1.0, 1.0, 0.98)
    assert SBIBM_NLE.at("slcp", 10_000) == 0.77
    assert SIMFORMER.at("sir", 10_000) is None
    assert SBIBM_NLE.at("slcp", 5_000) is None


def test_overview_command(tmp_path: Path) -> None:
    from sbi_diffusion.benchmark.cli import main

    results_file, table = tmp_path / "r.jsonl", tmp_path / "overview.md"
    results.append_row(results_file, row("nle", 1, 0.76))
    assert main(["overview", str(results_file), "--output", str(table)]) == 0
    assert "| slcp | 0.760 ± 0.000 (1) |" in table.read_text()
    assert main(["overview", str(tmp_path / "absent.jsonl")]) == 2
