"""Benchmark: what int8 saves on dense and pruned DeiT-S, and how much of a pruned model is then its selection (issue 29).

DeiT-S with random weights (latency does not depend on them), dense, ``spvit:3=0.7,6=0.7,9=0.7`` and
``evovit:4=0.5,8=0.5``, exported to fp32 ONNX at batch 1 and 16 and quantized to int8 with vitsearch's own
quantizer (:func:`vitsearch.latency.precision.quantize`: QDQ, the transformer's MatMul/Gemm, per-channel symmetric
int8 weights, uint8 activations; selection in float), calibrated on random images. All twelve graphs are timed in
one onnxruntime process with the runner's sessions (spinning off, one intra-op thread by default), interleaved:
each pass times every graph in turn, and a graph's figure is the median of its samples over all passes.

The selection's share: one profiled run per graph (onnxruntime's node profiler) sums the time of the nodes outside
the blocks (``/blocks.N/``), the patch embedding, the final norm and the head: the selector MLPs, top-k, gathers,
packaging, Evo-ViT's stage entry/exit and fast update, plus the class-token concatenation and position-embedding
add every model has (so the dense model's share is the floor, shown beside).

    .venv/bin/python benchmarks/precision.py [--passes 5] [--threads 1] [--no-results]

Prints a table and one JSON line; writes the ``precision`` section of benchmarks/RESULTS.md unless --no-results.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import wait_for_quiet, write_section  # noqa: E402
from vitsearch.latency import runner  # noqa: E402
from vitsearch.latency.artefacts import export_model  # noqa: E402
from vitsearch.latency.precision import quantize  # noqa: E402
from vitsearch.models import create_model  # noqa: E402
from vitsearch.pruning import PruneConfig, apply  # noqa: E402

MODEL = "deit_small_patch16_224"
CONFIGS = ("none", "spvit:3=0.7,6=0.7,9=0.7", "evovit:4=0.5,8=0.5")
BATCHES = (1, 16)
# Nodes that are not selection: inside a block, the patch embedding, the final norm, the head (exporter names).
NOT_SELECTION = re.compile(r"(^|/)(blocks\.\d+|patch_embed|norm|fc_norm|head)(/|_|$)")


def cpu_flags() -> list[str]:
    """The CPU's SIMD flags int8 kernels use (avx2, avx512*, vnni)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in set(flags) if f == "avx2" or f.startswith("avx512") or "vnni" in f)


def build(folder: Path, config: str, batch: int, calibration: int, kwargs: dict) -> dict[str, Path]:
    import onnx

    torch.manual_seed(0)
    model = apply(create_model(MODEL, **kwargs), PruneConfig.parse(config)).eval()
    fp32 = export_model(model, batch, folder / f"{config.split(':')[0]}-b{batch}-fp32.onnx")
    (inp,) = onnx.load(str(fp32), load_external_data=False).graph.input
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    gen = np.random.default_rng(0)
    feeds = [{inp.name: gen.standard_normal(shape).astype(np.float32)} for _ in range(max(1, calibration // batch))]
    int8 = quantize(fp32, folder / f"{config.split(':')[0]}-b{batch}-int8.onnx", feeds)
    return {"fp32": fp32, "int8": int8}


def selection_share(path: Path, threads: int, runs: int = 3) -> float:
    """Share of the node time spent outside blocks, embedding, norm and head (one profiled session)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.log_severity_level = 3
    so.profile_file_prefix = str(path.with_suffix(""))
    so.add_session_config_entry(runner.SPINNING_KEY, "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = runner.inputs_for(sess)
    for _ in range(runs):
        sess.run(None, feeds)
    trace = json.loads(Path(sess.end_profiling()).read_text())
    total = sel = 0.0
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        total += e["dur"]
        if not NOT_SELECTION.search(node):
            sel += e["dur"]
    return sel / total if total else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calibration", type=int, default=32, help="random calibration images per graph")
    parser.add_argument("--no-results", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a 32 px DeiT-S in 8 px patches: checks the script runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.time()
    folder = Path(tempfile.mkdtemp(prefix="vitsearch-precision-"))
    try:
        return run(args, folder, start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(args: argparse.Namespace, folder: Path, start: float) -> int:
    import onnxruntime as ort

    graphs = {}
    for config in CONFIGS:
        for batch in BATCHES:
            kwargs = {"img_size": 32, "patch_size": 8} if args.smoke else {}
            for precision, path in build(folder, config, batch, args.calibration, kwargs).items():
                graphs[(config, batch, precision)] = path
    load_before = wait_for_quiet(2.5, 0 if args.smoke else 120)
    cfg = {"threads": args.threads, "spinning": False, "provider": "cpu", "passes": args.passes,
           "warmup": 2, "min_repeats": 3, "max_repeats": 10 * args.passes, "max_seconds": 12.0 * args.passes,
           "rel_tol": 0.01}
    items = [(f"{c}|{b}|{p}", path) for (c, b, p), path in graphs.items()]
    results = {e["name"]: e for e in runner.time_interleaved(items, lambda p: runner.session_call(p, cfg), cfg)}
    shares = {key: selection_share(path, args.threads) for key, path in graphs.items()}
    load_after = os.getloadavg()[0]
    rows = []
    for config in CONFIGS:
        for batch in BATCHES:
            row = {"config": config, "batch": batch}
            for precision in ("fp32", "int8"):
                r = results[f"{config}|{batch}|{precision}"]
                row[f"{precision}_ms"] = round(r["median_ms"], 3)
                row[f"{precision}_p10_ms"] = round(r["p10_ms"], 3)
                row[f"{precision}_p90_ms"] = round(r["p90_ms"], 3)
                row[f"{precision}_selection_share"] = round(shares[(config, batch, precision)], 4)
            row["int8_speedup"] = round(row["fp32_ms"] / row["int8_ms"], 3)
            rows.append(row)
    record = {"model": MODEL, "threads": args.threads, "passes": args.passes, "onnxruntime": ort.__version__,
              "cpu": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
              "load_before": round(load_before, 2), "load_after": round(load_after, 2),
              "seconds": round(time.time() - start), "rows": rows}
    lines = [f"{'config':<26} {'batch':>5} {'fp32 ms':>9} {'int8 ms':>9} {'speed-up':>8} {'sel fp32':>8} {'sel int8':>8}"]
    for r in rows:
        lines.append(f"{r['config']:<26} {r['batch']:>5} {r['fp32_ms']:>9.2f} {r['int8_ms']:>9.2f} "
                     f"{r['int8_speedup']:>7.2f}x {100 * r['fp32_selection_share']:>7.1f}% "
                     f"{100 * r['int8_selection_share']:>7.1f}%")
    print("\n".join(lines))
    print(json.dumps(record))
    if not args.no_results and not args.smoke:
        date = time.strftime("%Y-%m-%d", time.gmtime())
        commit = os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()
        table = ["| config | batch | fp32 ms (p10-p90) | int8 ms (p10-p90) | int8 speed-up | selection share fp32 | "
                 "selection share int8 |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            table.append(f"| `{r['config']}` | {r['batch']} | {r['fp32_ms']:.2f} ({r['fp32_p10_ms']:.2f}-"
                         f"{r['fp32_p90_ms']:.2f}) | {r['int8_ms']:.2f} ({r['int8_p10_ms']:.2f}-{r['int8_p90_ms']:.2f}) "
                         f"| {r['int8_speedup']:.2f}x | {100 * r['fp32_selection_share']:.1f}% | "
                         f"{100 * r['int8_selection_share']:.1f}% |")
        write_section("precision", "\n".join([
            "## precision: int8 vs fp32 on dense and pruned DeiT-S (issue 29)", "",
            f"`python benchmarks/precision.py --passes {args.passes} --threads {args.threads}`, {date}, commit "
            f"{commit}. DeiT-S, random weights, onnxruntime {ort.__version__} CPU provider, {args.threads} intra-op "
            f"thread(s), spinning off; {record['cpu']} with {', '.join(record['cpu_flags']) or 'no AVX flags read'}; "
            f"{record['cores']} cores shared with other work, load average {record['load_before']} before timing "
            f"and {record['load_after']} after. One process, {args.passes} interleaved passes, medians of the "
            "pooled samples. int8: vitsearch's quantizer (QDQ; transformer MatMul/Gemm, per-channel symmetric int8 "
            "weights, uint8 activations; selection in float), calibrated on random images.", "",
            *table, "",
            "Selection share: onnxruntime's node profiler, the node time outside the blocks, patch embedding, final "
            "norm and head (one profiled session of 3 runs per graph); the dense row is the floor every model has "
            "(class-token concatenation, position-embedding add).",
        ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
