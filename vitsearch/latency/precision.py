"""The numeric precision a latency table is measured in and a model is shipped in: fp32, fp16 or int8.

Phones and boards run ViTs quantized (int8, QDQ) or in half precision, and quantization changes what token
pruning saves: the big matmuls get cheaper while the selection (top-k, gathers, packaging, fast
updates), which stays in float, does not. So a table is measured with graphs in the precision the model will
ship in, and one table never holds another precision's rows (the precision is in its file name and metadata).

**int8** graphs are the fp32 ONNX graphs quantized by onnxruntime's own tooling (``quantize_static``), QDQ format
(QuantizeLinear/DequantizeLinear pairs around each quantized op, which every onnxruntime execution provider and
the mobile builds fuse into their int8 kernels), static calibration (MinMax). The choices, each by measurement
(DeiT-S chain of 12 blocks at 197 tokens, one thread, AMD EPYC with AVX-512 VNNI, onnxruntime 1.32, under load
from other work; see benchmarks/RESULTS.md ``precision``):

- **Ops: the transformer's MatMul and Gemm only** (:data:`QUANTIZED_OPS` in the nodes :func:`quantized_nodes`
  picks: those of the blocks' attention and MLP, both attention matmuls included, and the classifier head), i.e.
  nearly all of a ViT's arithmetic. Everything else stays float: the patch embedding, LayerNorm, softmax, GELU,
  the residual adds, and all of token selection: a selector's MLP, TopK, Gather/GatherElements, ArgSort,
  Concat, Slice, package and representative tokens, fast updates. Selection ranks and moves
  tokens: an int8 score can reorder them, and its small matmuls gain nothing from int8 (on the tiny test model
  the quantized selector ran slower than the float one, its Q/DQ pairs costing more than they saved).
- **Activations unsigned (uint8, asymmetric), weights signed (int8, symmetric)**: the u8 x s8 pair is the one
  x86 VNNI and the Arm dot-product kernels run natively; with int8 activations the same chain took 126 ms
  against 111 ms.
- **Per-channel weight scales**: 81 ms against 111 ms per-tensor in the same run (noise on a shared machine is
  tens of percent, so: not slower), and half the output error (max |diff| 0.11 against 0.20 on outputs of
  magnitude 5), so per-channel it is.

Calibration: a latency table calibrates each component graph on its own timing inputs (the inputs the runner
feeds it), because latency does not depend on the values of scales and zero points, only on which ops are
quantized. A model shipped in int8 (finalize, export) calibrates on training images (:func:`quantize_model`).

**fp16** graphs are the fp32 graphs with every float tensor converted to float16 (onnxruntime's converter).
onnxruntime's CPU execution provider on x86 has no float16 kernel for MatMul and Gemm: it silently wraps them in
Casts to float32, so an "fp16" table would time fp32 arithmetic plus casts. :func:`check_runs` finds this out
by building a one-MatMul fp16 graph and reading what onnxruntime made of it, and refuses with one message.
"""
from __future__ import annotations

import contextlib
import re
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import VitsearchError

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT = "fp32"
QUANTIZED_OPS = ("MatMul", "Gemm")
# Node names of the ops quantized: the exporter names each node after its module path (/blocks.3/attn/qkv/MatMul,
# /head/Gemm); selection code runs outside blocks.N.attn/mlp and the head, so it never matches.
_QUANTIZED_SCOPE = re.compile(r"(^|/)blocks\.\d+/(attn|mlp)/|(^|/)head/")
# onnxruntime names the Casts it inserts around a float16 node that its execution provider has no kernel for.
_FALLBACK_CAST = "InsertedPrecisionFreeCast_"
# A static calibration needs enough samples for the activation ranges to settle (MinMax over fewer images reads
# the extremes of one or two): finalize and export refuse fewer training images than this.
MIN_CALIBRATION_IMAGES = 32

logger = logging.getLogger(__name__)


def parse(text: str) -> str:
    """The one normaliser of a precision name: ``fp32``, ``fp16`` or ``int8`` (case and spaces ignored;
    ``float32``/``float16`` accepted). Anything else is refused naming the choices."""
    value = str(text).strip().lower()
    value = {"float32": "fp32", "float16": "fp16", "half": "fp16"}.get(value, value)
    if value not in PRECISIONS:
        raise VitsearchError(f"precision {text!r} is not one of {', '.join(PRECISIONS)}")
    return value


def table_precision(meta: Mapping[str, Any]) -> str:
    """A table's precision from its metadata; tables from before the option were all fp32."""
    return str(meta.get("precision", DEFAULT))


# fp16 ----------------------------------------------------------------------------------------------------------

def fp16_fallback_ops(providers: Sequence[str] = ("CPUExecutionProvider",)) -> list[str]:
    """The ops of :data:`QUANTIZED_OPS` that this onnxruntime runs in float32 behind inserted Casts when given
    float16 (empty: it has float16 kernels for them). Builds one tiny fp16 graph per op and reads back the graph
    onnxruntime optimised."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    missing = []
    with tempfile.TemporaryDirectory(prefix="vitsearch-fp16-") as tmp:
        for op in QUANTIZED_OPS:
            x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4, 8])
            y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4, 8])
            w = helper.make_tensor("w", TensorProto.FLOAT16, [8, 8], np.ones((8, 8), np.float16).tobytes(), raw=True)
            graph = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"])], op, [x], [y], [w])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            model.ir_version = 8
            src, opt = Path(tmp) / f"{op}.onnx", Path(tmp) / f"{op}-opt.onnx"
            onnx.save(model, str(src))
            so = ort.SessionOptions()
            so.optimized_model_filepath = str(opt)
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            so.log_severity_level = 3
            ort.InferenceSession(str(src), so, providers=list(providers))
            if any(n.name.startswith(_FALLBACK_CAST) for n in onnx.load(str(opt)).graph.node):
                missing.append(op)
    return missing


def check_runs(precision: str, spec: Any) -> None:
    """Refuse a precision the device's runtime cannot run (:class:`VitsearchError`, naming what it does run).

    ``spec`` is the device's :class:`~vitsearch.latency.registry.DeviceSpec`. The torch runtime times float32
    modules only. fp16 is checked on this machine's onnxruntime (the local CPU provider); a remote board's
    kernels cannot be checked from here, so fp16 there is refused rather than timed as something else."""
    if precision == "fp32":
        return
    if spec.runtime == "torch":
        raise VitsearchError(f"device {spec.name!r} times PyTorch eager modules, which vitsearch runs in fp32 only, "
                             f"not {precision}: profile {precision} on an onnxruntime device (cpu, or an ssh/adb "
                             "board), or use --precision fp32 here")
    if precision == "int8" or spec.get("provider", "cpu") == "cuda":
        return  # every onnxruntime provider runs QDQ int8 graphs; CUDA has float16 kernels
    if spec.transport != "local":
        raise VitsearchError(f"device {spec.name!r}: vitsearch cannot check from here whether its onnxruntime has "
                             "float16 kernels (x86 builds have none and time float32 behind casts), so it does not "
                             "measure fp16 there: use --precision int8 or fp32")
    import onnxruntime as ort

    missing = fp16_fallback_ops()
    if missing:
        raise VitsearchError(
            f"device {spec.name!r}: onnxruntime {ort.__version__}'s CPU execution provider on this machine has no "
            f"float16 kernel for {', '.join(missing)} (it would run them in float32 behind casts, so an fp16 table "
            "would time fp32 arithmetic): this device runs fp32 and int8, use --precision fp32 or --precision int8")


def to_fp16(src: Path, dst: Path) -> Path:
    """``src`` with every float tensor (weights, inputs, outputs) in float16, saved at ``dst``."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=False, disable_shape_infer=True)
    onnx.save(model, str(dst))
    return dst


# int8 ----------------------------------------------------------------------------------------------------------

class _Quiet(logging.Filter):
    """onnxruntime's quantizer logs on the root logger that it was not given pre-processed graphs (a symbolic
    shape inference pass we skip: the graphs are exported with their shapes, and specialised afterwards)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage() and "pre-process" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    root, quiet = logging.getLogger(), _Quiet()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


# Ops only a quantized graph holds: QDQ pairs (what :func:`quantize` writes), and the fused or dynamic int8 ops of
# other tools' quantized graphs (QLinearMatMul, MatMulInteger, ...).
def quantized_nodes(model: Any) -> list[str]:
    """The names of the nodes of ``model`` (an ``onnx.ModelProto``) that int8 quantizes: MatMul and Gemm of the
    blocks' attention and MLP and of the head (module docstring)."""
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and _QUANTIZED_SCOPE.search(n.name)]


def quantize(src: Path, dst: Path, calibration: Iterable[Mapping[str, np.ndarray]]) -> Path:
    """``src`` (an fp32 ONNX graph, external weights beside it allowed) quantized to int8 QDQ at ``dst`` (weights
    inside), calibrated on the feeds of ``calibration``; the choices are the module docstring's. A graph with no
    op to quantize (selection alone, the embedding) is saved at ``dst`` as it is: in an int8 model it runs in
    float too. Sets onnxruntime's default log level to errors: the calibration session warns about every
    initializer it drops."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    nodes = quantized_nodes(onnx.load(str(src), load_external_data=False))
    if not nodes:
        onnx.save(onnx.load(str(src)), str(dst))
        return dst
    ort.set_default_logger_severity(3)

    feeds = iter([{k: np.ascontiguousarray(v) for k, v in f.items()} for f in calibration])

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(feeds, None)

    with _quiet_quantizer():
        try:
            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=nodes, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, extra_options={"WeightSymmetric": True},
                            calibration_providers=["CPUExecutionProvider"])
        except Exception as e:  # the quantizer raises many types; say which graph failed
            raise VitsearchError(f"could not quantize {src.name} to int8: {type(e).__name__}: {e}") from e
    logger.debug("quantized %s -> %s", src, dst)
    return dst


def convert(src: Path, dst: Path, precision: str, calibration: Iterable[Mapping[str, np.ndarray]] = ()) -> Path:
    """``src`` in ``precision`` at ``dst``: a copy of the path for fp32, :func:`to_fp16`, or :func:`quantize`."""
    if precision == "int8":
        return quantize(src, dst, calibration)
    if precision == "fp16":
        return to_fp16(src, dst)
    return src
