"""Benchmark: vitsearch's ToMe and EViT against the official implementations, each as a latency ratio to its own dense DeiT-S (issue 26).

The official models come from ``benchmarks/official_export.py``, run with ``--official-python`` (an environment
with timm 0.4.12 and torchprofile, which EViT's helpers import; the repositories were written for that timm):
the official dense DeiT-S, ToMe r=8 and r=13 (``tome.patch.timm``), EViT's own dense model and EViT 0.7 at blocks
3/6/9 with fusion. vitsearch's are ``tome:r=8``, ``tome:r=13`` and ``evit:3=0.7,6=0.7,9=0.7`` on the stock timm
DeiT-S of this environment, and that model unpruned. Random weights (latency does not depend on them), batch 1
and 16, static ONNX (opset 18, the TorchScript exporter on both sides). All graphs of one thread count are timed in
one onnxruntime process, interleaved (the runner's sessions, spinning off): each pass times every graph in turn.

Targets: vitsearch's ratio (pruned / its dense) no higher than the official one + 0.01 in every row, and the
token counts equal per block (attention and MLP inputs), so the GMACs match the official token counts.

Setup, once (any folder):

    python -m venv off && off/bin/pip install --no-deps timm==0.4.12 torchprofile==0.0.4
    echo "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \\
        > off/lib/python3.11/site-packages/zz_vitsearch_env.pth   # torch, onnx from this environment, after timm 0.4.12
    git clone https://github.com/facebookresearch/ToMe; git clone https://github.com/youweiliang/evit

    .venv/bin/python benchmarks/official_latency.py --official-python off/bin/python --tome ToMe --evit evit \\
        [--threads 1 2] [--passes 3] [--no-results]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import wait_for_quiet, write_section  # noqa: E402
from vitsearch import __version__  # noqa: E402
from vitsearch.flops import analytic_vit_macs, count_macs  # noqa: E402
from vitsearch.latency import runner  # noqa: E402
from vitsearch.latency.artefacts import export_model  # noqa: E402
from vitsearch.models import create_model, geometry  # noqa: E402
from vitsearch.pruning import PruneConfig, apply  # noqa: E402

MODEL = "deit_small_patch16_224"
# vitsearch config -> (official pruned model, official dense model it is a ratio to)
PAIRS = {"tome:r=8": ("tome-r8", "dense"), "tome:r=13": ("tome-r13", "dense"),
         "evit:3=0.7,6=0.7,9=0.7": ("evit-0.7", "evit-dense")}
TOLERANCE = 0.01
logger = logging.getLogger("benchmark")


def official(args: argparse.Namespace, folder: Path) -> dict:
    out = subprocess.run([str(args.official_python), str(ROOT / "benchmarks" / "official_export.py"),
                          "--tome", str(args.tome), "--evit", str(args.evit), "--out", str(folder / "official"),
                          "--batches", *map(str, args.batches)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the official export failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ours(batches: list[int], folder: Path) -> dict:
    record = {}
    for config in ("none", *PAIRS):
        torch.manual_seed(0)
        model = apply(create_model(MODEL), PruneConfig.parse(config)).eval()
        s = getattr(model, "token_schedule", None)
        tokens = {"attn": list(s.block_tokens), "mlp": list(s.mlp_tokens or s.block_tokens)} if s else None
        files = {b: str(export_model(model, b, folder / "ours" / f"{config.split(':')[0]}-{len(record)}-b{b}.onnx"))
                 for b in batches}
        record[config] = {"tokens": tokens, "gmacs": count_macs(model).gmacs, "files": files}
    return record


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-python", type=Path, required=True, help="python of the timm 0.4.12 environment")
    ap.add_argument("--tome", type=Path, required=True, help="a checkout of facebookresearch/ToMe")
    ap.add_argument("--evit", type=Path, required=True, help="a checkout of youweiliang/evit")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="vitsearch-official-") as tmp:
        folder = Path(tmp)
        off = official(args, folder)
        logger.info("official models exported (timm %s)", off["timm"])
        mine = ours(args.batches, folder)
        logger.info("vitsearch models exported")
        g = geometry(create_model(MODEL))
        dense_gmacs = mine["none"]["gmacs"]
        counts = {}
        for config, (name, _) in PAIRS.items():
            o = off["models"][name]["tokens"]
            official_gmacs = analytic_vit_macs(g, o["attn"], mlp_tokens=o["mlp"]) / 1e9
            counts[config] = {"same_tokens": o == mine[config]["tokens"], "official_tokens": o,
                              "ours_tokens": mine[config]["tokens"], "official_gmacs": official_gmacs,
                              "ours_gmacs": mine[config]["gmacs"]}
        items = [(f"official|{n}|{b}", f) for n, m in off["models"].items() for b, f in m["files"].items()]
        items += [(f"ours|{c}|{b}", f) for c, m in mine.items() for b, f in m["files"].items()]
        loads, medians = [], {}
        for threads in args.threads:
            loads.append(wait_for_quiet(1.5, 120))
            cfg = {"threads": threads, "spinning": False, "provider": "cpu", "passes": args.passes, "warmup": 2,
                   "min_repeats": 5, "max_repeats": 20 * args.passes, "max_seconds": 10.0 * args.passes,
                   "rel_tol": 0.01}
            for e in runner.time_interleaved(items, lambda p: runner.session_call(p, cfg), cfg):
                if "median_ms" not in e:
                    raise SystemExit(f"timing {e.get('name')} failed: {e}")
                medians[(threads, e["name"])] = e["median_ms"]
            logger.info("timed at %d thread(s)", threads)
        loads.append(os.getloadavg()[0])
    rows = []
    for threads in args.threads:
        for batch in args.batches:
            for config, (name, dense) in PAIRS.items():
                mine_ratio = medians[(threads, f"ours|{config}|{batch}")] / medians[(threads, f"ours|none|{batch}")]
                off_ratio = (medians[(threads, f"official|{name}|{batch}")]
                             / medians[(threads, f"official|{dense}|{batch}")])
                rows.append({"threads": threads, "batch": batch, "config": config, "ours": round(mine_ratio, 4),
                             "official": round(off_ratio, 4), "met": mine_ratio <= off_ratio + TOLERANCE,
                             "ours_dense_ms": round(medians[(threads, f"ours|none|{batch}")], 2),
                             "official_dense_ms": round(medians[(threads, f"official|{dense}|{batch}")], 2)})
    record = {"benchmark": "official_latency", "timm_official": off["timm"], "torch": torch.__version__,
              "load": [round(x, 2) for x in loads], "seconds": round(time.time() - start), "rows": rows,
              "counts": counts, "dense_gmacs": dense_gmacs, "all_met": all(r["met"] for r in rows),
              "tokens_match": all(c["same_tokens"] for c in counts.values())}
    commit = os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()
    lines = [
        "## vitsearch's ToMe and EViT against the official code (issue 26)", "",
        f"`.venv/bin/python benchmarks/official_latency.py --official-python ... --threads "
        f"{' '.join(map(str, args.threads))} --passes {args.passes}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, vitsearch {__version__}: DeiT-S, "
        f"random weights, official code (facebookresearch/ToMe, youweiliang/evit) on timm {off['timm']}, ours on "
        f"timm of this environment, torch {torch.__version__}, static ONNX opset 18 on both sides, onnxruntime CPU, "
        f"{args.passes} interleaved passes per thread count; 1-min load average "
        f"{' -> '.join(f'{x:.2f}' for x in loads)}; {record['seconds']} s in all.", "",
        "| threads | batch | config | ours: ratio to our dense | official: ratio to its dense | target | |",
        "|---:|---:|---|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['batch']} | `{r['config']}` | {r['ours']:.3f} | {r['official']:.3f} | "
                     f"<= {r['official'] + TOLERANCE:.3f} | {'met' if r['met'] else '**missed**'} |")
    lines += ["", "Dense models, ms (ours / the official timm 0.4.12 DeiT-S / EViT's own at keep rate 1): " + "; ".join(
        f"{t} thread(s), batch {b}: {medians[(t, f'ours|none|{b}')]:.2f} / {medians[(t, f'official|dense|{b}')]:.2f}"
        f" / {medians[(t, f'official|evit-dense|{b}')]:.2f}" for t in args.threads for b in args.batches) + ".", "",
        "| config | tokens per block, the same as the official code's | GMACs (ours, fvcore count) | GMACs at the "
        "official token counts |", "|---|---|---:|---:|"]
    for config, c in counts.items():
        lines.append(f"| `{config}` | {'yes' if c['same_tokens'] else '**no**'}: attention "
                     f"{','.join(map(str, c['official_tokens']['attn']))}; MLP "
                     f"{','.join(map(str, c['official_tokens']['mlp']))} | {c['ours_gmacs']:.4f} | "
                     f"{c['official_gmacs']:.4f} |")
    lines.append(f"\nThe dense DeiT-S: {dense_gmacs:.4f} GMACs.")
    text = "\n".join(lines)
    print(text)
    print(json.dumps(record))
    if not args.no_results:
        write_section("official_latency", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
