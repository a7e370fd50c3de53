"""Files passed where a float PyTorch checkpoint belongs that are not one: exported ONNX models and quantized
(int8) models, each refused with one message naming the float checkpoint to pass instead where it can be told."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import VitsearchError
from .onnx_metadata import graph_precision, read_metadata


def quantized_entries(state_dict: Mapping[str, Any]) -> list[str]:
    """Entries of a state_dict that only a quantized (int8) PyTorch model holds: quantized tensors, and the
    packed weights and their dtype of ``torch.ao`` quantized linear layers."""
    return [k for k, v in state_dict.items() if (isinstance(v, torch.Tensor) and v.is_quantized)
            or str(k).rsplit(".", 1)[-1] == "_packed_params" or isinstance(v, torch.dtype)]


def quantized_message(path: Path, what: str) -> str:
    """The one message for a quantized model passed as a float checkpoint, naming both files where it can."""
    return (f"checkpoint {str(path)!r} is a quantized (int8) model ({what}), not a float one: vitsearch prunes, "
            "trains and exports float weights, and quantizes only when it ships a model (finalize or export "
            f"--precision int8). Pass the float checkpoint it was quantized from{_float_beside(path)}")


def _float_beside(path: Path) -> str:
    """Where the float checkpoint of an exported or quantized file is, when it can be told: ``model.pt`` beside a
    finalized trial's ONNX files, or the checkpoint an exported file names in its metadata."""
    beside = path.parent / "model.pt"
    if beside.is_file() and beside.resolve() != path.resolve():
        return f": {beside}"
    if path.suffix != ".onnx":
        return ""
    try:
        named = json.loads(read_metadata(path).get("checkpoint", "{}")).get("path")
    except (ValueError, AttributeError, OSError):
        return ""
    return f": {named}" if named else ""


def refuse_onnx(path: Path) -> None:
    """Raise one message when ``path`` is an ONNX model (vitsearch's export or another): not a checkpoint, and
    an int8 one is said to be quantized. Returns when it is no ONNX model."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError):
        return
    if not proto.ir_version or not proto.graph.node:  # bytes that happened to parse: no model
        return
    precision = graph_precision(proto)
    if precision == "int8":
        raise VitsearchError(quantized_message(path, "an ONNX graph with int8 ops"))
    raise VitsearchError(f"checkpoint {str(path)!r} is an exported ONNX model ({precision}), not a PyTorch "
                         f"checkpoint: pass the checkpoint it was exported from{_float_beside(path)}")
