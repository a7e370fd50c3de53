"""What an ONNX file says of itself: vitsearch's metadata (``metadata_props`` under one prefix, written by
:mod:`vitsearch.export`) and the precision its graph runs in."""
from __future__ import annotations

import os
from typing import Any

METADATA_PREFIX = "vitsearch."


def read_metadata(path_or_model: str | os.PathLike[str] | Any) -> dict[str, str]:
    """The ``vitsearch.*`` metadata of an ONNX file or ModelProto, prefix stripped."""
    import onnx

    proto = path_or_model if hasattr(path_or_model, "metadata_props") else onnx.load(
        str(path_or_model), load_external_data=False)
    return {p.key[len(METADATA_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(METADATA_PREFIX)}


INT8_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def graph_precision(model: Any) -> str:
    """The precision an ONNX graph (an ``onnx.ModelProto``) runs in, read from its ops and weights: "int8" when it
    quantizes anything, "fp16" when its weights are float16, else "fp32"."""
    import onnx

    ops = {n.op_type for n in model.graph.node}
    if ops & set(INT8_OPS) or any(op.startswith("QLinear") or op.endswith("Integer") for op in ops):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"
