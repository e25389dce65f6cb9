"""Execute the tutorial notebooks so they never go stale (small budget).

The notebooks assert what they show (closed-form agreement, C2ST bounds,
calibration), so executing them checks their claims; the cheap structural tests
below check that every notebook asserts something, that the stored notebooks are
the ones ``tutorials/make_notebooks.py`` writes, and that their stored outputs
(from a full run) hold no error.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
IDS = [p.name for p in TUTORIALS]


def code_cells(path: Path) -> list[nbformat.NotebookNode]:
    """The code cells of the notebook at ``path``."""
    notebook = nbformat.read(path, as_version=4)
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("path", TUTORIALS, ids=IDS)
def test_notebook_asserts(path):
    """Every notebook checks at least one of its claims with an ``assert``."""
    asserts = [
        node
        for cell in code_cells(path)
        for node in ast.walk(ast.parse(cell.source))
        if isinstance(node, ast.Assert)
    ]
    assert asserts, f"{path.name} has no assert in a code cell"


def test_notebooks_match_generator():
    """The stored notebooks hold the code cells ``make_notebooks.py`` writes."""
    spec = importlib.util.spec_from_file_location(
        "make_notebooks", ROOT / "tutorials" / "make_notebooks.py"
    )
    make_notebooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_notebooks)
    generated = dict(make_notebooks.NOTEBOOKS)
    assert sorted(generated) == IDS
    for path in TUTORIALS:
        expected = [c.source for c in generated[path.name] if c.cell_type == "code"]
        stored = [c.source for c in code_cells(path)]
        assert stored == expected, (
            f"{path.name} is stale: run python tutorials/make_notebooks.py"
        )


@pytest.mark.parametrize("path", TUTORIALS, ids=IDS)
def test_stored_outputs_hold_no_error(path):
    """The stored outputs (of a full run) show every cell, asserts included,
    passing."""
    errors = [
        output
        for cell in code_cells(path)
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]


@pytest.mark.parametrize("path", TUTORIALS, ids=IDS)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("SBI_DIFFUSION_TUTORIAL_SIMULATIONS", "1000")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel imports the sbi_diffusion of this checkout, not an installed one
    python_path = os.environ.get("PYTHONPATH")
    paths = [str(ROOT)] + ([python_path] if python_path else [])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=None,  # a slow or busy machine must not fail the test
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
