"""ONNX export with static shapes and provenance: whole pruned models, and component graphs for profiling.

Exporter choice: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) by default. On a
DeiT-Ti-sized SPViT model (224 px, 2 CPU cores, torch 2.15) it took ~2.5 s against ~9-14 s for the
``torch.export``-based one (``dynamo=True``), and ~0.2 s against ~3 s for one block at 197 tokens; the
latency profiler exports dozens of component graphs, so that is the difference between seconds and minutes.
Both give graphs onnxruntime runs to within 1e-6 of PyTorch. Torch 2.15 still ships the TorchScript exporter
but marks it deprecated (so does fvcore's tracing): when it is removed, pass ``dynamo=True`` (tested too).

Shapes are static: a pruned model has a fixed token count per block at inference (``keep_k = ceil(r * N)``)
and the batch is fixed, so every latency-table entry is measured on the graph it predicts.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from . import __version__
from .errors import VitsearchError, naming
from .files import check_writable, write_bytes
from .onnx_metadata import METADATA_PREFIX, read_metadata

logger = logging.getLogger(__name__)

# Opset 18: LayerNormalization is native (>= 17) and onnxruntime >= 1.14 runs it, old enough for most devices.
DEFAULT_OPSET = 18
# Export check: onnxruntime must reproduce PyTorch's output within ATOL + RTOL * max|output|.
ATOL, RTOL = 1e-4, 1e-4


class _Positional(nn.Module):
    """Calls the wrapped module with exactly the given positional inputs.

    The TorchScript exporter fills unspecified defaulted arguments from ``forward``'s signature and turns them
    into traced inputs: timm's ``Block.forward(x, attn_mask=None, is_causal=False)`` then receives
    ``is_causal`` as a tensor and SDPA raises. ``*args`` has no defaults to fill.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.module(*inputs)


def _names(prefix: str, count: int) -> list[str]:
    return [prefix] if count == 1 else [f"{prefix}_{i}" for i in range(count)]


def model_provenance(module: nn.Module) -> dict[str, str]:
    """What a ViT artefact must carry: pruning config, token schedule, geometry and preprocessing (mean, std, input
    size, crop, interpolation: :func:`vitsearch.data.inference_inputs`), when the module has them."""
    from timm.models.vision_transformer import VisionTransformer

    meta: dict[str, str] = {}
    config, schedule = getattr(module, "prune_config", None), getattr(module, "token_schedule", None)
    if config is not None:
        meta["config"] = str(config)
    if schedule is not None:
        meta["block_tokens"] = json.dumps(list(schedule.block_tokens))
        meta["selectors"] = json.dumps([[s.block, s.n_in, s.n_keep] for s in schedule.selectors])
    if isinstance(module, VisionTransformer):
        from .data import inference_inputs  # deferred: models and data pull in timm's registry
        from .models import geometry

        meta["geometry"] = json.dumps(geometry(module).to_dict())
        meta["preprocessing"] = json.dumps(inference_inputs(module)["preprocessing"])
    return meta


def export_onnx(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    check: bool = True,
    dynamo: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Export ``module`` at the exact shapes of ``example_inputs`` (static batch and token counts) to ``path``.

    The module is exported in eval mode (and put back in its previous mode). The file is written atomically
    (temporary file in the same folder, then rename). ``check`` runs ``onnx.checker.check_model`` with full
    shape inference. The ONNX ``metadata_props`` carry ``vitsearch.*`` provenance: package and torch versions,
    exporter, opset, input shapes, and for a (pruned) ViT its config, token schedule and geometry; ``metadata``
    adds or overrides entries (values that are not strings are stored as JSON).
    """
    import onnx  # deferred: only export needs it

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not example_inputs or not all(isinstance(t, torch.Tensor) for t in example_inputs):
        raise VitsearchError("export_onnx needs example_inputs as a tuple of tensors, e.g. (torch.randn(1, 3, 224, 224),)")
    path = check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opset = DEFAULT_OPSET if opset is None else int(opset)
    was_training = module.training
    module.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            outputs = module(*example_inputs)
        n_out = len(outputs) if isinstance(outputs, (tuple, list)) else 1
        try:
            proto = _export_proto(module, example_inputs, opset, dynamo, n_out)
        except (torch.onnx.errors.OnnxExporterError, RuntimeError) as e:
            # Too old an opset lacks an operator the model uses (expand, attention: >= 14); too new a one is
            # beyond the exporter ("Unsupported onnx_opset_version"). Anything else is no opset matter.
            if not isinstance(e, torch.onnx.errors.OnnxExporterError) and "opset" not in str(e):
                raise
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise VitsearchError(f"the ONNX exporter cannot write {type(module).__name__} at opset {opset} "
                                 f"({reason}): use --opset {DEFAULT_OPSET} (vitsearch's default) or another "
                                 "opset from 14 on that your runtime supports") from e
    finally:
        module.train(was_training)
    seconds = time.perf_counter() - start

    meta = {"version": __version__, "torch_version": torch.__version__,
            "exporter": "torch.export (dynamo)" if dynamo else "torchscript", "opset": str(opset),
            "input_shapes": json.dumps([list(t.shape) for t in example_inputs]), **model_provenance(module)}
    for key, value in dict(metadata or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in meta.items():
        full = key if key.startswith(METADATA_PREFIX) else METADATA_PREFIX + key
        prop = existing.get(full) or proto.metadata_props.add()
        prop.key, prop.value = full, value
    if check:
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as e:
            raise VitsearchError(f"the exported ONNX graph for {type(module).__name__} is invalid: {e}") from e

    with naming(path):
        write_bytes(path, proto.SerializeToString())
    logger.info("exported %s to %s in %.2f s (%s, opset %d)", type(module).__name__, path, seconds,
                meta["exporter"], opset)
    return path


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """The ONNX file to write, refused where it is a folder or its folder cannot be written (before minutes of
    export are spent)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise VitsearchError(f"{path} is a folder, not an ONNX file to write: give a file name, "
                             f"e.g. -o {path / 'model.onnx'}")
    check_writable(path.parent, "the folder of the ONNX file", "pass -o with a path in a folder you can write")
    return path


def _export_proto(module: nn.Module, inputs: tuple[torch.Tensor, ...], opset: int, dynamo: bool, n_out: int) -> Any:
    """The exported ModelProto, in memory (so nothing half-written ever reaches the target path)."""
    import onnx

    input_names, output_names = _names("input", len(inputs)), _names("output", n_out)
    # Both exporters are chatty (progress lines on stdout, tracer and deprecation warnings): the library
    # logs one line per export instead.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(module, inputs, None, dynamo=True, opset_version=opset,
                                        input_names=input_names, output_names=output_names, external_data=False)
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(_Positional(module), inputs, buffer, dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names, do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


_NORM1 = re.compile(r"blocks\.(\d+)[./]norm1\b")


def onnx_block_tokens(path_or_model: str | os.PathLike[str] | Any) -> list[int]:
    """Token count entering every block of an exported ViT, as the graph really runs.

    A block's count is the sequence length of its ``norm1`` LayerNormalization input (B, N, C), found by the
    node's scope (node name for the TorchScript exporter, ``name_scopes`` metadata for the dynamo one). ONNX
    shape inference cannot follow the Shape -> Gather -> Expand chains of token selection, so those inputs are
    exposed as extra graph outputs and the graph is run once on onnxruntime with random inputs.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    proto = onnx.ModelProto()
    proto.CopyFrom(path_or_model if hasattr(path_or_model, "graph") else onnx.load(str(path_or_model)))
    norm1: dict[int, str] = {}
    for node in proto.graph.node:
        if node.op_type != "LayerNormalization":
            continue
        scope = node.name + " " + " ".join(p.value for p in node.metadata_props if p.key.endswith("name_scopes"))
        m = _NORM1.search(scope)
        if m is not None:
            norm1.setdefault(int(m.group(1)), node.input[0])
    if not norm1 or sorted(norm1) != list(range(len(norm1))):
        raise VitsearchError(f"could not find every block's norm1 in the ONNX graph (found blocks {sorted(norm1)})")
    outputs = {o.name for o in proto.graph.output}
    dtype = proto.graph.input[0].type.tensor_type.elem_type  # activations have the input's float type
    for name in sorted(set(norm1.values()) - outputs):
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, dtype, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {}
    for inp in proto.graph.input:
        shape = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        if None in shape:
            raise VitsearchError(f"ONNX input {inp.name!r} has a dynamic shape {shape}: expected a static export")
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        feed[inp.name] = rng.standard_normal(shape).astype(np_dtype)
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, feed)))
    return [int(values[norm1[i]].shape[1]) for i in range(len(norm1))]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    batch: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    max_abs_diff: float  # onnxruntime vs PyTorch eval output, same input
    tolerance: float  # ATOL + RTOL * max|PyTorch output|, what max_abs_diff was checked against
    export_seconds: float
    provenance: dict[str, str] = field(default_factory=dict)  # the vitsearch.* metadata written to the file

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "batch": self.batch, "input_shape": list(self.input_shape),
                "output_shape": list(self.output_shape), "max_abs_diff": self.max_abs_diff,
                "tolerance": self.tolerance, "export_seconds": round(self.export_seconds, 3),
                "provenance": dict(self.provenance)}


def example_input(model: nn.Module, batch: int = 1, *, seed: int = 0) -> torch.Tensor:
    """A seeded (batch, C, H, W) input at the size a timm ViT was built for."""
    from .models import geometry

    g = geometry(model)
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, g.in_chans, *g.img_size, generator=gen)
    return x.to(device=param.device, dtype=param.dtype)


def run_onnxruntime(path: str | os.PathLike[str], inputs: Sequence[torch.Tensor], *, threads: int = 1) -> list[Any]:
    """Run an exported graph once on onnxruntime's CPU provider; returns the outputs as numpy arrays."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feed)


def export_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    batch: int = 1,
    opset: int | None = None,
    dynamo: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Export a (pruned) timm ViT at a fixed batch and check that onnxruntime reproduces its eval output.

    Raises :class:`VitsearchError` (and leaves no file) when onnxruntime differs by more than
    ``ATOL + RTOL * max|output|``.
    """
    if batch < 1:
        raise VitsearchError(f"batch must be a positive integer, got {batch}")
    x = example_input(model, batch)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = model(x).float().cpu()  # (B, num_classes)
        if not bool(torch.isfinite(reference).all()):
            from .models import non_finite  # deferred: models pulls in timm's registry

            bad = non_finite(model.state_dict())
            raise VitsearchError(
                f"{type(model).__name__} gives NaN or infinite outputs, so no export could be checked: "
                + (f"its weights hold NaN or infinity (in {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''})"
                   ", from a training that diverged: export an earlier checkpoint, or train again with a lower "
                   "learning rate" if bad else "its weights are finite, so an operation overflows: report the config"))
        start = time.perf_counter()
        out_path = export_onnx(model, (x,), path, opset=opset, check=True, dynamo=dynamo, metadata=metadata)
        seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
    actual = torch.from_numpy(run_onnxruntime(out_path, [x])[0])
    diff = float((actual - reference).abs().max()) if actual.shape == reference.shape else float("inf")
    tolerance = ATOL + RTOL * float(reference.abs().max())
    if not diff <= tolerance:
        out_path.unlink(missing_ok=True)
        raise VitsearchError(
            f"onnxruntime's output differs from PyTorch's by {diff:.3g} (tolerance {tolerance:.3g}; shapes "
            f"{tuple(actual.shape)} vs {tuple(reference.shape)}): the exported graph of {type(model).__name__} is "
            "wrong. Try the other exporter (dynamo) and report the config")
    logger.info("onnxruntime matches PyTorch within %.3g (max abs diff %.3g)", tolerance, diff)
    return ExportResult(
        path=out_path, batch=batch, input_shape=tuple(x.shape), output_shape=tuple(reference.shape),
        max_abs_diff=diff, tolerance=tolerance, export_seconds=seconds, provenance=read_metadata(out_path))
