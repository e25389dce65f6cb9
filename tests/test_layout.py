"""The package's layout: module size, import graph, deprecated import paths."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "sbi_diffusion"
MAX_MODULE_LINES = 600

#: old module path -> a public name it must still provide
DEPRECATED_MODULES = {
    "sbi_diffusion.denoiser": "Denoiser",
    "sbi_diffusion.schedules": "EDMVPSchedule",
    "sbi_diffusion.parameterizations": "get_parameterization",
    "sbi_diffusion.weightings": "loss_weight",
    "sbi_diffusion.vector_field": "DenoiseFn",
    "sbi_diffusion.gaussian": "GaussianDenoiser",
    "sbi_diffusion.training": "ExponentialMovingAverage",
    "sbi_diffusion.nets.noise_bands": "NoiseBandNet",
    "sbi_diffusion.inference.consistency": "ConsistencyNPE",
    "sbi_diffusion.inference.joint": "JointDiffusion",
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (functions
    included), except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    type_only = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
        for node in ast.walk(branch)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules}


def test_no_module_is_longer_than_the_limit():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_import_cycles():
    """No chain of imports leads from a module back to itself. A module that
    imports its own package (which imports the module) is not counted."""
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("module, name", sorted(DEPRECATED_MODULES.items()))
def test_old_import_paths_warn_and_still_work(module, name):
    sys.modules.pop(module, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module(module)
    assert any(issubclass(w.category, DeprecationWarning) for w in caught), module
    assert getattr(old, name) is not None


def test_the_package_does_not_import_its_deprecated_paths():
    modules = _modules()
    for name, path in modules.items():
        if name in DEPRECATED_MODULES:
            continue
        used = _imports(path, modules) & set(DEPRECATED_MODULES)
        assert not used, f"{name} imports deprecated {sorted(used)}"


@pytest.mark.parametrize(
    "module, name",
    [
        ("sbi_diffusion.inference.posterior", "LARGE_BATCH_HEUN_STEPS"),
        ("sbi_diffusion.inference.posterior", "ADAPTIVE_LOG_PROB_ROWS"),
        ("sbi_diffusion.nets.mlp", "build_net"),
        ("sbi_diffusion.nets.mlp", "NETS"),
        ("sbi_diffusion.inference.truncation", "get_density_thresholder"),
        ("sbi_diffusion.inference.truncation", "posterior_covariance_basis"),
    ],
)
def test_moved_names_warn_and_still_work(module, name):
    with pytest.warns(DeprecationWarning, match=name):
        value = getattr(importlib.import_module(module), name)
    assert value is not None
