"""Benchmark: does SPViT's token selection cost what its FLOPs say? (issue 18)

Exports three variants of one SPViT config on DeiT-S (random weights) with the same per-block token counts:
- ``spvit``: the model as vitsearch builds it (one scorer shared by the heads as 2-D Gemms, top-k, gathers, package);
- ``static``: selection that costs nothing: the first k patches kept and the next one as the "package" (slices);
- ``per_head``: the selector as it was before (per-head weights as batched 3-D matmuls over heads), for comparison.
Then times them in one onnxruntime process (the runner's sessions: spinning off, inputs bound once),
interleaved: every pass builds each variant's session and times it, and each pass gives one ratio per variant
to ``static``, so the ratios see the same machine. At batch 1 and 16, one and two intra-op threads.

Target: ``spvit`` within 1.5% of ``static``. The selector + packaging share is (spvit - static) / spvit.

    .venv/bin/python benchmarks/selector_cost.py [--config spvit:3=0.7,6=0.7,9=0.7] [--passes 7]

Prints a table and one JSON line; writes its section of benchmarks/RESULTS.md unless --no-results.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import wait_for_quiet, write_section  # noqa: E402
from vitsearch.export import export_onnx  # noqa: E402
from vitsearch.latency import runner  # noqa: E402
from vitsearch.models import create_model, geometry  # noqa: E402
from vitsearch.pruning import apply, spvit  # noqa: E402

TARGET = 0.015
logger = logging.getLogger("benchmark")


def static_prune(selector: spvit.MultiHeadTokenSelector, patches: torch.Tensor, n_keep: int):
    """Selection that costs nothing: the first ``n_keep`` patches, and the next one as the package (B, 1, C)."""
    return patches[:, :n_keep], patches[:, n_keep:n_keep + 1]


def per_head_forward(self: spvit.MultiHeadTokenSelector, x: torch.Tensor, mask: torch.Tensor | None = None):
    """The selector between issues 18 and 14's shared scorer: per-head weights (here every head given the shared
    ones), head-major (H, B * N, d), each projection a batched 3-D matmul plus a bias add."""
    H, hd = self.num_heads, self.head_dim

    def grouped(layer: torch.nn.Linear, t: torch.Tensor) -> torch.Tensor:  # (H, M, i) -> (H, M, o)
        return torch.matmul(t, layer.weight.T.expand(H, -1, -1).contiguous()) + layer.bias.expand(H, 1, -1)

    B, N, C = x.shape
    xh = x.reshape(B, N, H, hd)
    w = self.head_gate(xh.mean(dim=-1))
    w = (w / w.sum(dim=-1, keepdim=True)).permute(2, 0, 1)  # (H, B, N)
    xh = xh.permute(2, 0, 1, 3).reshape(H, -1, hd)
    h = F.gelu(grouped(self.in_proj, self.norm(xh))).reshape(H, B, N, hd)
    split = hd // 2
    h = torch.cat([h[..., :split], h[..., split:].mean(dim=2, keepdim=True).expand(-1, -1, N, -1)], dim=-1)
    h = h.reshape(H, -1, hd)
    for layer in self.out[:-1]:
        h = F.gelu(grouped(layer, h))
    d = grouped(self.out[-1], h).reshape(H, B, N)
    return (w * d).sum(dim=0), (w * torch.sigmoid(d)).sum(dim=0)


@contextmanager
def variant(name: str) -> Iterator[None]:
    if name == "static":
        with mock.patch.object(spvit, "prune_hard", static_prune):
            yield
    elif name == "per_head":
        with mock.patch.object(spvit.MultiHeadTokenSelector, "forward", per_head_forward):
            yield
    else:
        yield


def export_variants(model: str, config: str, batch: int, folder: Path) -> dict[str, str]:
    torch.manual_seed(0)
    net = apply(create_model(model), config)
    g = geometry(net)
    x = torch.randn(batch, g.in_chans, *g.img_size)
    paths = {}
    for name in ("spvit", "static", "per_head"):
        with variant(name):
            paths[name] = str(export_onnx(net, (x,), folder / f"{name}-b{batch}.onnx", check=False))
    return paths


def time_interleaved(paths: dict[str, str], threads: int, passes: int, seconds: float) -> dict[str, list[float]]:
    """Per-pass medians (ms) of each variant, the variants taking turns within every pass."""
    cfg = {"threads": threads, "spinning": False}
    medians: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(passes):
        for name, path in paths.items():
            samples, _ = runner.sample_calls(runner.session_call(path, cfg), warmup=2, min_repeats=3,
                                             max_repeats=200, max_seconds=seconds, rel_tol=0.0)
            medians[name].append(float(np.median(samples)))
    return medians


def verdict(row: dict) -> str:
    over = row["ratio"]["spvit"] - 1 - TARGET
    return "met" if over <= 0 else f"**missed** by {100 * over:.1f} points"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--config", default="spvit:3=0.7,6=0.7,9=0.7")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.5, help="timing budget of one variant in one pass")
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    load0 = wait_for_quiet(1.0, 120)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitsearch-selector-") as tmp:
        for batch in args.batches:
            paths = export_variants(args.model, args.config, batch, Path(tmp))
            for threads in args.threads:
                m = time_interleaved(paths, threads, args.passes, args.seconds * (1 + batch / 4))
                ratio = {n: [a / b for a, b in zip(m[n], m["static"])] for n in ("spvit", "per_head")}
                row = {"batch": batch, "threads": threads, "ms": {n: float(np.median(v)) for n, v in m.items()},
                       "ratio": {n: float(np.median(v)) for n, v in ratio.items()},
                       "ratio_range": {n: [min(v), max(v)] for n, v in ratio.items()}}
                row["share"] = {n: 1 - 1 / row["ratio"][n] for n in ratio}
                rows.append(row)
                logger.info("batch %d, %d threads: %s", batch, threads, json.dumps(row))
    load1 = os.getloadavg()[0]
    lines = ["## SPViT selector cost against free selection (issue 18)", "",
             f"`.venv/bin/python benchmarks/selector_cost.py {' '.join(sys.argv[1:])}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.model} (random weights), `{args.config}`, "
             f"onnxruntime {runner.ort.__version__} CPU (spinning off), {os.cpu_count()} cores, 1-min load "
             f"{load0:.2f} -> {load1:.2f}. {args.passes} interleaved passes per batch and thread count; each ratio is "
             "the median over passes of the pass's variant median over its `static` median (range in brackets).",
             "", "| batch | threads | static ms | spvit ms | spvit / static | selector + packaging share | "
             "per-head batched matmuls (before) / static | its share | target <= 1.015 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ratio_range"]["spvit"]
        elo, ehi = r["ratio_range"]["per_head"]
        lines.append(f"| {r['batch']} | {r['threads']} | {r['ms']['static']:.1f} | {r['ms']['spvit']:.1f} | "
                     f"{r['ratio']['spvit']:.3f} [{lo:.3f}-{hi:.3f}] | {100 * r['share']['spvit']:.1f}% | "
                     f"{r['ratio']['per_head']:.3f} [{elo:.3f}-{ehi:.3f}] | {100 * r['share']['per_head']:.1f}% | "
                     f"{verdict(r)} |")
    text = "\n".join(lines)
    if not args.no_results:
        write_section("selector_cost", text)
    print(text)
    print(json.dumps({"benchmark": "selector_cost", "config": args.config, "load": [load0, load1], "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
