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
