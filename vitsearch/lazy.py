"""A package's public names imported from their submodule on first use (PEP 562), so that reading one light name
(settings, a budget parser) does not import torch and optuna with the rest."""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_names(package: str, submodule: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose name ``n`` lives in ``submodule[n]`` (relative)."""

    def __getattr__(name: str) -> Any:
        if name not in submodule:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(submodule[name], package), name)
        setattr(sys.modules[package], name, value)  # once: later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(submodule))

    return __getattr__, __dir__
