"""Lazy public names for a package: each name is imported from its private module on first use.

The root and every public subpackage declare ``{public name: defining module}`` and get
``__getattr__``/``__dir__`` from here, so ``import spikeprune.search`` (or ``spikeprune --help``)
loads no torch, Ray or Optuna until a name that needs them is used.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, api: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` exporting ``api``."""

    def __getattr__(name: str) -> Any:
        module = api.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(api)

    return __getattr__, __dir__
