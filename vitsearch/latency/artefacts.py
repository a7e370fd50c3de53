"""ONNX artefacts for profiling: one export per component kind, specialised to every grid point.

Exporting with the dynamo exporter takes seconds per graph on a small CPU, and a table has a hundred-odd grid
points; the full DeiT-S table must profile in minutes. So each kind is exported once with its token axes
dynamic, and every grid point gets a copy of that graph whose input shapes are fixed. The copies are small:
the weights live once per kind in an external-data file beside them. With static input shapes onnxruntime
folds the shape arithmetic into constants, so a specialised graph runs like a statically exported one.

In another precision than fp32 (:mod:`.precision`), the kind's template is converted once (int8: quantized,
calibrated on the kind's own example inputs at a few grid points) before it is specialised, so every grid point
times the same quantized graph.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Sequence

import onnx
import torch

from ..errors import VitsearchError
from ..export import DEFAULT_OPSET
from . import precision as precision_mod
from .components import ComponentGraph, Point
from .devices import Artefact

logger = logging.getLogger(__name__)


def _quiet_export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, **kwargs: object) -> None:
    """torch.onnx.export with the exporter and opset :func:`vitsearch.export.export_onnx` uses for whole models
    (TorchScript, opset DEFAULT_OPSET), so a component graph is made of the same ONNX ops as the model it
    predicts; its chatter on stdout and warnings kept out of our output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=DEFAULT_OPSET,
                              do_constant_folding=True, **kwargs)
        except Exception as e:  # the exporter raises many types; the user needs to know which graph failed
            raise VitsearchError(f"could not export {path.stem} to ONNX: {type(e).__name__}: {e}") from e


def export_kind(graph: ComponentGraph, reference: Point, directory: Path) -> Path:
    """Export ``graph`` once with its token axes dynamic; returns the template's path. The weights are moved
    to an external-data file beside it, which every specialised copy shares."""
    args = graph.example(reference)
    names = [f"input_{i}" for i in range(len(args))]
    dynamic_axes = {name: {axis: dim for axis, dim in axes} for name, axes in zip(names, graph.dynamic) if axes}
    path = directory / f"{graph.kind}.onnx"
    _quiet_export(graph.module, args, path, input_names=names, dynamic_axes=dynamic_axes or None)
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{graph.kind}.weights", size_threshold=1024)
    logger.debug("exported %s (dynamic axes %s)", path, dynamic_axes)
    return path


def specialise(template: onnx.ModelProto, shapes: Sequence[Sequence[int]], path: Path) -> Path:
    """Save a copy of ``template`` (loaded without its external data) with every input dim fixed."""
    model = onnx.ModelProto()
    model.CopyFrom(template)
    inputs = list(model.graph.input)
    if len(inputs) != len(shapes):
        raise ValueError(f"{path.name}: graph has {len(inputs)} inputs, got {len(shapes)} shapes")
    for vi, shape in zip(inputs, shapes):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ValueError(f"{path.name}: input {vi.name} has rank {len(dims)}, got shape {tuple(shape)}")
        for d, size in zip(dims, shape):
            d.Clear()
            d.dim_value = int(size)
    # Symbolic output and intermediate shapes would contradict the now static inputs: let the runtime infer them.
    del model.graph.value_info[:]
    for vi in model.graph.output:
        vi.type.tensor_type.ClearField("shape")
    onnx.save(model, str(path))
    return path


def load_template(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


def point_name(p: Point) -> str:
    return f"{p.kind}-n{p.n}-k{p.k}"


def for_points(needs: str, graph: ComponentGraph, points: Sequence[Point], folder: Path,
               precision: str = precision_mod.DEFAULT) -> list[Artefact]:
    """What a device of kind ``needs`` ("onnx" or "torch") times for ``graph`` at each of ``points``: one
    export of the kind into ``folder`` (in ``precision``), specialised per point; or the module itself with its
    inputs (fp32 only: :func:`.precision.check_runs` refuses the rest before anything is exported)."""
    if needs == "torch":
        return [Artefact(point_name(p), module=graph.module, inputs=graph.example(p)) for p in points]
    template_path = export_kind(graph, points[len(points) // 2], folder)
    weights_name = f"{graph.kind}.weights"
    if precision != precision_mod.DEFAULT:
        template_path = convert_kind(graph, points, template_path, precision)
        weights_name = f"{graph.kind}-{precision}.weights"
    weights = tuple(sorted(folder.glob(weights_name)))
    template = load_template(template_path)
    return [Artefact(point_name(p), onnx=specialise(template, [t.shape for t in graph.example(p)],
                                                    folder / f"{point_name(p)}.onnx"), files=weights)
            for p in points]


CALIBRATION_POINTS = 4  # grid points whose example inputs calibrate a kind's int8 graph


def convert_kind(graph: ComponentGraph, points: Sequence[Point], template_path: Path, precision: str) -> Path:
    """The kind's exported fp32 template in ``precision``, beside it with its own weights file; the fp32 one
    is removed. int8 calibrates on the example inputs of up to :data:`CALIBRATION_POINTS` of ``points``,
    spread over them, so the ranges cover the token counts timed."""
    step = max(1, len(points) // CALIBRATION_POINTS)
    feeds = [{f"input_{i}": t.numpy() for i, t in enumerate(graph.example(p))} for p in list(points)[::step]]
    folder, kind = template_path.parent, graph.kind
    converted = precision_mod.convert(template_path, folder / f"{kind}-{precision}.onnx", precision, feeds)
    model = onnx.load(str(converted))
    onnx.save(model, str(converted), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{kind}-{precision}.weights", size_threshold=1024)
    for old in (template_path, folder / f"{kind}.weights"):
        old.unlink(missing_ok=True)
    return converted


def export_model(model: torch.nn.Module, batch: int, path: Path) -> Path:
    """A whole (pruned) model as static-shape ONNX, as it would be deployed."""
    g_in = model.patch_embed
    img = torch.randn(batch, g_in.proj.in_channels, *g_in.img_size)
    _quiet_export(model, (img,), path)
    return path
