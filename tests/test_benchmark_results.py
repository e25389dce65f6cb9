"""The JSONL store: atomic appends, interrupted writes, protocol checks."""

import json
from importlib.metadata import version
from pathlib import Path

import pytest

from sbi_diffusion.benchmark import results
from sbi_diffusion.benchmark.runner import protocol_for


def make_row(num_observation: int = 1, **changes: object) -> dict:
    row = {
        "task": "two_moons",
        "num_simulations": 100,
        "method": "npe",
        "options": {},
        "seed": 0,
        "num_observation": num_observation,
        "c2st": 0.7,
        "train_s": 1.0,
        "sample_s": 0.1,
        "nfe": 1.0,
        "device": "cpu",
        "versions": {"sbi": version("sbi")},
        "protocol": protocol_for(100),
    }
    row.update(changes)
    return row


def test_append_and_read(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    results.append_row(path, make_row(1))
    results.append_row(path, make_row(2))
    rows = results.read_rows(path)
    assert [r["num_observation"] for r in rows] == [1, 2]
    assert results.row_key(rows[0]) != results.row_key(rows[1])


def test_half_written_line_is_skipped_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    results.append_row(path, make_row(1))
    with path.open("a") as handle:
        handle.write(json.dumps(make_row(2))[:40])  # a crash mid-write
    with pytest.warns(UserWarning, match="incomplete"):
        assert len(results.read_rows(path)) == 1
    results.append_row(path, make_row(3))
    with pytest.warns(UserWarning, match="incomplete"):
        rows = results.read_rows(path)
    assert [r["num_observation"] for r in rows] == [1, 3]


def test_foreign_file_and_protocol(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match="not a result row"):
        results.read_rows(path)
    rows = [make_row(1)]
    with pytest.raises(ValueError, match="another protocol"):
        results.check_protocol(rows, protocol_for(10_000), path)
    results.check_protocol(rows, protocol_for(100), path)


def test_unwritable_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory"):
        results.check_writable(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="Cannot write"):
        results.check_writable(blocker / "sub" / "r.jsonl")


def test_comparison_table_matches_observations(tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    from sbi_diffusion.benchmark.methods import defaults_fingerprint, parse
    from sbi_diffusion.benchmark.report import comparison_table, load_results

    current = defaults_fingerprint(parse("diffusion"))
    grid, ours = tmp_path / "grid.jsonl", tmp_path / "ours.jsonl"
    for obs in (1, 2, 3):
        row = make_row(obs, method="diffusion", c2st=0.6, defaults=current)
        results.append_row(grid, row)
        results.append_row(grid, make_row(obs, method="npe", c2st=0.7))
    # observation 3 of the baselines must not count: ours ran on 1 and 2 only
    row = make_row(3, method="diffusion", c2st=0.9, seed=1, defaults=current)
    results.append_row(grid, row)
    for obs in (1, 2):
        row = make_row(obs, method="consistency", c2st=0.65, sample_s=0.5)
        row["defaults"] = defaults_fingerprint(parse("consistency"))
        row["options"] = {"steps": 2}
        results.append_row(ours, row)
    table = comparison_table(load_results(ours), load_results(grid))
    lines = [line for line in table.splitlines() if "two_moons" in line]
    assert [line.split(" | ")[2] for line in lines] == [
        "diffusion",
        "npe",
        "consistency[steps=2]",
    ]
    assert "0.600 (2)" in lines[0] and "0.700 (2)" in lines[1]
    assert "0.650 (2) | +0.050" in lines[2]


def test_resume_only_rows_made_under_the_current_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sbi_diffusion import DiffusionNPE
    from sbi_diffusion.benchmark.methods import defaults_fingerprint, parse
    from sbi_diffusion.benchmark.plan import plan

    current = defaults_fingerprint(parse("diffusion"))
    assert defaults_fingerprint(parse("npe")) == f"sbi {version('sbi')}"
    assert defaults_fingerprint(parse("consistency:teacher=diffusion")) != (
        defaults_fingerprint(parse("consistency"))
    )
    output = tmp_path / "r.jsonl"
    for row in (
        make_row(1),  # an sbi row without a fingerprint, same sbi: current
        make_row(2, versions={"sbi": "0.1.0"}),  # made with another sbi: stale
        make_row(1, method="diffusion"),  # ours without a fingerprint: stale
        make_row(2, method="diffusion", defaults=current),
        make_row(3, method="diffusion", defaults="0123456789"),
    ):
        results.append_row(output, row)

    def planned(method: str) -> tuple[list[int], list[int]]:
        grid = plan(
            tasks=["two_moons"],
            num_simulations=[100],
            methods=[method],
            observations=[1, 2, 3],
            seeds=[0],
            output=output,
            num_posterior_samples=100,
        )
        done = sorted(r["num_observation"] for r in grid.done)
        return done, [n for job in grid.jobs for n in job.observations]

    assert planned("npe") == ([1], [2, 3])
    assert planned("diffusion") == ([2], [1, 3])
    # A changed default (here the sampler's steps) reruns every row of ours.
    monkeypatch.setattr(DiffusionNPE, "default_sampler_options", {"steps": 7})
    assert defaults_fingerprint(parse("diffusion")) != current
    assert planned("diffusion") == ([], [1, 2, 3])
