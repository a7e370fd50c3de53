"""vitsearch: hardware-aware token-pruning search for timm ViTs.

``import vitsearch`` stays light: each stage of the pipeline (``vitsearch.pruning``, ``vitsearch.latency``,
``vitsearch.search``, ``vitsearch.report``, ...) is imported the first time it is used as an attribute, so
``vitsearch.pruning.apply(model, "spvit:3=0.7")`` works after a plain ``import vitsearch``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """The package versions an artefact records as its provenance (study.json, the digits base model)."""
    import platform

    import numpy
    import onnxruntime
    import optuna
    import sklearn
    import timm
    import torch

    return {"vitsearch": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "optuna": optuna.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}


def __getattr__(name: str) -> ModuleType:
    if name.startswith("_"):  # dunder probes (copy, inspect, pickle) are not submodules
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":  # a dependency of the submodule is missing: that is the error to show
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
