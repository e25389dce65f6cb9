"""JSON-lines result store with atomic appends, resume and a protocol check.

Every finished (task, budget, method, seed, observation) is one line. A line is
written with a single ``write`` on a file opened in append mode under an exclusive
``flock``, followed by ``fsync``: concurrent writers (process pool workers, Slurm
jobs) never interleave, and a crash leaves at most one incomplete last line.
Readers skip such a line with a warning, and the next append starts on a fresh
line, so the file always stays readable.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

try:  # POSIX only; on other systems appends are still single writes.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

REQUIRED_FIELDS: tuple[str, ...] = (
    "task",
    "num_simulations",
    "method",
    "options",
    "seed",
    "num_observation",
    "c2st",
    "train_s",
    "sample_s",
    "nfe",
    "device",
    "versions",
    "protocol",
)

RowKey = tuple[str, int, str, str, int, int]


def row_key(row: dict[str, Any]) -> RowKey:
    """Identity of a row: task, budget, method, options, seed and observation."""
    return (
        str(row["task"]),
        int(row["num_simulations"]),
        str(row["method"]),
        json.dumps(row.get("options", {}), sort_keys=True),
        int(row["seed"]),
        int(row["num_observation"]),
    )


def iter_json_lines(
    path: str | os.PathLike[str],
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, value)`` for each complete line of a JSONL file.

    A missing file yields nothing; an incomplete line (an interrupted write) is
    skipped with a warning, so a run that was stopped can resume from the file.
    """
    path = Path(path)
    if not path.exists():
        return
    with path.open("r", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(
                f"{path}:{number}: skipping an incomplete line (interrupted write).",
                stacklevel=2,
            )


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read all complete rows of a results file.

    Args:
        path: The JSONL file. A missing file has no rows.

    Returns:
        The rows, in file order. Incomplete lines (an interrupted write) are
        skipped with a warning.

    Raises:
        ValueError: If a complete line is not a result row of this benchmark.
    """
    rows = []
    for number, row in iter_json_lines(path):
        if not isinstance(row, dict) or not set(REQUIRED_FIELDS) <= set(row):
            missing = (
                sorted(set(REQUIRED_FIELDS) - set(row))
                if isinstance(row, dict)
                else REQUIRED_FIELDS
            )
            raise ValueError(
                f"{path}:{number} is not a result row of sbi-diffusion-bench "
                f"(missing {', '.join(missing)}); pass a new --output file."
            )
        rows.append(row)
    return rows


def check_protocol(
    rows: Iterable[dict[str, Any]],
    protocol: dict[str, Any],
    path: str | os.PathLike[str],
) -> None:
    """Make sure existing rows were produced under the same protocol.

    Args:
        rows: Rows already in the file.
        protocol: The protocol of the current run.
        path: The file, for the message.

    Raises:
        ValueError: If any row has another protocol.
    """
    for row in rows:
        if row["protocol"] != protocol:
            raise ValueError(
                f"{path} holds results of another protocol ({row['protocol']}), this "
                f"run uses {protocol}; pass a new --output file so that numbers of "
                "different protocols are never mixed."
            )


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail early if results cannot be written to ``path``.

    Args:
        path: The JSONL file to append to (created if missing).

    Raises:
        ValueError: If the path is a directory or cannot be created or appended to.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"Output {path} is a directory; pass a file path like {path / 'r.jsonl'}."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as err:
        raise ValueError(
            f"Cannot write results to {path} ({err.strerror}); pass an --output path "
            "in a writable directory."
        ) from err


def append_row(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append one row atomically.

    Args:
        path: The JSONL file.
        row: The row; must be JSON-serialisable.
    """
    line = json.dumps(row, sort_keys=True) + "\n"
    data = line.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size > 0:
                with open(path, "rb") as reader:
                    reader.seek(size - 1)
                    if reader.read(1) != b"\n":
                        # The previous writer died mid-line: start on a new line.
                        data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
