"""Deprecation shims for names that moved to another module.

:func:`moved_names` builds the module-level ``__getattr__`` (PEP 562) of a
module whose names moved: accessing one still works, with a
``DeprecationWarning`` that says where to import it from now.

This module imports nothing of the package (the new location is imported on
first access), so any module can use it without an import cycle.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["moved_names"]


def moved_names(
    module: str,
    names: Iterable[str],
    new_module: str,
    source: str | None = None,
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``names`` that moved out of ``module``.

    Use it as ``__getattr__ = moved_names(__name__, ("OLD",), "pkg.new")``.

    Args:
        module: the old module's name (its ``__name__``).
        names: the names that moved.
        new_module: where to import them from now (named in the warning).
        source: the module the names are taken from, if not ``new_module``
            (e.g. the submodule that defines them).

    Returns:
        ``__getattr__(name)``: the moved name's value, after a
        ``DeprecationWarning`` pointing at the caller; ``AttributeError`` for
        any other name.
    """
    moved = frozenset(names)
    source = new_module if source is None else source

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(
            f"{module}.{name} is deprecated; import it from {new_module}.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(source), name)

    return __getattr__
