"""Precision (fp32, fp16, int8): int8 tables timed with real onnxruntime QDQ graphs, one table per precision, and
a table never applied in another precision than its own."""
from __future__ import annotations

import json
import platform
import re
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from vitsearch.cli import main
from vitsearch.errors import VitsearchError
from vitsearch.latency import grid, profile
from vitsearch.latency import table as T
from vitsearch.latency.artefacts import for_points
from vitsearch.latency.components import Point, component_graphs, grid
from vitsearch.latency.precision import check_runs, fp16_fallback_ops, parse
from vitsearch.latency.registry import resolve
from vitsearch.models import create_model, geometry

from .conftest import QUICK, TINY_GRID, TINY_KWARGS, TINY_MODEL


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory):
    """One real int8 profile of the tiny model on the local onnxruntime CPU (seconds)."""
    tables = tmp_path_factory.mktemp("tables")
    return profile("cpu", model=TINY_MODEL, model_kwargs=TINY_KWARGS, threads=1, tables=tables,
                   grid_spec=TINY_GRID, settings=QUICK, progress=False, precision="int8")


def test_an_int8_table_is_its_own_file_never_mixed_with_fp32(tiny_int8):
    assert tiny_int8.path.name.endswith("-b1-int8.csv") and tiny_int8.precision == "int8"
    assert tiny_int8.meta["precision"] == "int8" and tiny_int8.meta["complete"] is True
    assert set(tiny_int8.rows) == set(grid(tiny_int8.geometry, TINY_GRID))
    # the fp32 table of the same device, geometry and batch is another file, untouched by the int8 profile
    assert sorted(p.name for p in tiny_int8.path.parent.glob("*.csv")) == [tiny_int8.path.name]
    assert not T.table_path(tiny_int8.path.parents[1], "cpu", tiny_int8.geometry, 1).exists()


def _run(path, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so).run(None, feeds)


def test_int8_graphs_quantize_the_transformer_and_keep_selection_float(tmp_path):
    """The block chain times a QDQ graph whose every transformer matmul reads dequantized int8 and which
    computes what the fp32 graph does within quantization error; a selector's graph stays all float."""
    graphs = component_graphs(create_model(TINY_MODEL, **TINY_KWARGS), 1)
    point = Point("block", 17)
    (fp32,) = for_points("onnx", graphs["block"], [point], tmp_path / "fp32")
    (int8,) = for_points("onnx", graphs["block"], [point], tmp_path / "int8", "int8")
    model = onnx.load(str(int8.onnx))
    made_by = {out: n.op_type for n in model.graph.node for out in n.output}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2 * 6  # qkv, q@k, attn@v, proj, fc1, fc2 in each of 2 blocks
    assert all(made_by.get(i) == "DequantizeLinear" for n in matmuls for i in n.input), "a block matmul stays float"
    x = np.random.default_rng(0).standard_normal((1, 17, 192)).astype(np.float32)
    want, got = _run(fp32.onnx, {"input_0": x})[0], _run(int8.onnx, {"input_0": x})[0]
    error = np.abs(got - want).max() / np.abs(want).max()
    assert 0 < error < 0.05, f"int8 output off by {error:.3f} of the output's range"

    (select,) = for_points("onnx", graphs["spvit_select"], [Point("spvit_select", 9, 4)], tmp_path / "sel", "int8")
    ops = {n.op_type for n in onnx.load(str(select.onnx)).graph.node}
    assert "TopK" in ops and not ops & {"QuantizeLinear", "DequantizeLinear"}  # selection stays float


def test_every_kind_quantizes_the_block_matmuls_it_runs(tmp_path):
    """Each kind's int8 graph quantizes every matmul of a block's attention and MLP it runs, as the whole model's
    int8 graph does: a kind that runs a block half outside the block's own call (its nodes named /attn/qkv,
    not /blocks.0/attn/qkv) stayed float and its table over-predicted int8 ToMe and EViT models by 60-110%."""
    graphs = component_graphs(create_model(TINY_MODEL, **TINY_KWARGS), 1)
    points = {}
    for p in grid(geometry(create_model(TINY_MODEL, **TINY_KWARGS)), TINY_GRID):
        points.setdefault(p.kind, p)
    quantized = {}
    for kind, point in points.items():
        (art,) = for_points("onnx", graphs[kind], [point], tmp_path / kind, "int8")
        model = onnx.load(str(art.onnx))
        made_by = {out: n.op_type for n in model.graph.node for out in n.output}
        halves = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and re.search(r"/(attn|mlp)/", n.name)]
        assert all(made_by.get(n.input[0]) == "DequantizeLinear" for n in halves), (
            f"{kind}: float block matmuls " + ", ".join(n.name for n in halves
                                                         if made_by.get(n.input[0]) != "DequantizeLinear"))
        quantized[kind] = len(halves)
    # the attention half is 4 matmuls a block (qkv, q@k, attn@v, proj; EViT's class-attention row one more), the
    # MLP half 2 (fc1, fc2); 2 blocks
    assert quantized["tome_attn"] == 8 and quantized["evit_attn"] == 10
    assert quantized["tome_mlp"] == quantized["evit_mlp"] == 4 and quantized["block"] == 12


def test_a_table_is_refused_in_another_precision_naming_both(tiny_int8, tmp_path):
    """An int8 table put where the fp32 one belongs (renamed, copied) is refused, never applied as fp32."""
    fp32_path = T.table_path(tmp_path, "cpu", tiny_int8.geometry, 1, "fp32")
    fp32_path.parent.mkdir(parents=True)
    shutil.copy(tiny_int8.path, fp32_path)
    shutil.copy(T.meta_path(tiny_int8.path), T.meta_path(fp32_path))
    with pytest.raises(VitsearchError, match=r"holds int8 latencies, and this asks for fp32.*--precision fp32"):
        T.load(fp32_path, geometry=tiny_int8.geometry, batch=1, precision="fp32")
    assert T.load(tiny_int8.path, precision="int8").rows == tiny_int8.rows


def test_resuming_a_table_in_another_precision_is_refused(tiny_int8, tmp_path):
    """A precision that differs from the existing table's metadata is refused before anything is measured."""
    meta = dict(tiny_int8.meta, precision="fp32")
    target = T.table_path(tmp_path, "cpu", tiny_int8.geometry, 1, "int8")
    T.save(target, meta, tiny_int8.rows.values())
    before = target.read_bytes()
    with pytest.raises(VitsearchError, match="was profiled with precision fp32, not int8"):
        profile("cpu", model=TINY_MODEL, model_kwargs=TINY_KWARGS, threads=1, tables=tmp_path, grid_spec=TINY_GRID,
                settings=QUICK, progress=False, precision="int8")
    assert target.read_bytes() == before  # no row lost or replaced


def test_fp16_is_refused_where_onnxruntime_runs_it_as_fp32():
    """onnxruntime's x86 CPU provider has no float16 MatMul/Gemm kernel (its float16 GEMM is Arm64's): the probe
    finds the casts it inserts, and fp16 is refused, naming what the device runs."""
    missing = fp16_fallback_ops()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"the probe's expected answer is known for x86 only, not {platform.machine()}")
    assert missing == ["MatMul", "Gemm"]
    with pytest.raises(VitsearchError, match=r"no float16 kernel for MatMul.*runs fp32 and int8"):
        check_runs("fp16", resolve("cpu"))
    with pytest.raises(VitsearchError, match="PyTorch eager modules.*fp32 only, not int8"):
        check_runs("int8", resolve("torch-cpu"))


def test_parse_is_the_one_normaliser():
    assert [parse(x) for x in ("FP32", " int8 ", "float16")] == ["fp32", "int8", "fp16"]
    with pytest.raises(VitsearchError, match="precision 'int4' is not one of fp32, fp16, int8"):
        parse("int4")


def test_predict_reads_the_table_of_its_precision(table_writer, tmp_path, capsys):
    """The CLI: --precision picks the table; an int8 table is never read for an fp32 prediction."""
    table_writer(tmp_path, costs=lambda p: 0.5 if "block" in p.kind else 0.1, precision="int8")
    argv = ["predict", "--config", "spvit:3=0.7", "--tables", str(tmp_path)]
    assert main([*argv, "--precision", "int8"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert " in int8: " in out[0] and json.loads(out[-1])["precision"] == "int8"
    assert main(argv) == 2
    assert "no latency table of digits at batch 1 in fp32" in capsys.readouterr().err  # fp32 has its own file
    assert main([*argv, "--precision", "int4"]) == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_profile_refuses_fp16_here_before_measuring(tmp_path, capsys):
    if not fp16_fallback_ops():
        pytest.skip("this onnxruntime has float16 MatMul and Gemm kernels on the CPU")
    assert main(["profile", "--precision", "fp16", "--tables", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no float16 kernel" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.csv"))
