"""Benchmark: how the runner keeps one graph's timing free of other sessions' threads (issue 18).

Times the dense DeiT-S and a few pruned variants in one process, interleaved (``runner.time_interleaved``, the
code every profile and validation runs), under four policies: onnxruntime's intra-op spinning on or off, and
one live session at a time (the runner's way: each pass builds a session and drops it) or every session kept
alive (what a script that builds its sessions up front does). Each policy is run twice, the runs of all
policies interleaved; a policy measures reproducibly when its two runs agree on every model's latency ratio to
the dense model, and honestly when its dense time matches the one-session baseline.

    .venv/bin/python benchmarks/thread_isolation.py [--threads 1 2] [--rounds 2]

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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import wait_for_quiet, write_section  # noqa: E402
from vitsearch.latency import runner  # noqa: E402

CONFIGS = ("none", "spvit:3=0.7,6=0.7,9=0.7", "evovit:3=0.7,6=0.7,9=0.7", "spvit:2=0.5,5=0.5",
           "evovit:4=0.4", "spvit:6=0.3")
POLICIES = {"spinning on, one live session": (True, False), "spinning off, one live session": (False, False),
            "spinning on, all sessions live": (True, True), "spinning off, all sessions live": (False, True)}
logger = logging.getLogger("benchmark")


def export(model: str, folder: Path) -> list[tuple[str, str]]:
    import torch

    from vitsearch.export import export_onnx
    from vitsearch.models import create_model, geometry
    from vitsearch.pruning import apply

    torch.manual_seed(0)
    net = create_model(model)
    g = geometry(net)
    x = torch.randn(1, g.in_chans, *g.img_size)
    items = []
    for i, config in enumerate(CONFIGS):
        apply(net, config)
        items.append((config, str(export_onnx(net, (x,), folder / f"m{i}.onnx", check=False))))
    return items


def run_policy(items: list[tuple[str, str]], threads: int, spinning: bool, all_live: bool) -> dict[str, float]:
    """Median ms per model under one policy (3 interleaved passes, as a profile times them)."""
    cfg = {"threads": threads, "spinning": spinning, "warmup": 3, "min_repeats": 5, "max_repeats": 60,
           "max_seconds": 2.4, "rel_tol": 0.01, "passes": 3}
    live = {path: runner.session_call(path, cfg) for _, path in items} if all_live else {}
    make_call = live.__getitem__ if all_live else (lambda path: runner.session_call(path, cfg))
    out = {e["name"]: e["median_ms"] for e in runner.time_interleaved(items, make_call, cfg)}
    live.clear()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    load0 = wait_for_quiet(1.0, 120)
    with tempfile.TemporaryDirectory(prefix="vitsearch-isolation-") as tmp:
        items = export(args.model, Path(tmp))
        runs: dict[tuple[int, str], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            for threads in args.threads:
                for name, (spinning, all_live) in POLICIES.items():
                    runs.setdefault((threads, name), []).append(run_policy(items, threads, spinning, all_live))
                    logger.info("round %d, %d threads, %s: dense %.1f ms", r + 1, threads, name,
                                runs[(threads, name)][-1]["none"])
    load1 = os.getloadavg()[0]
    dense = CONFIGS[0]
    lines = ["## Thread isolation in the runner (issue 18)", "",
             f"`.venv/bin/python benchmarks/thread_isolation.py {' '.join(sys.argv[1:])}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.model} (random weights), batch 1, dense "
             f"and {len(CONFIGS) - 1} pruned configs timed interleaved in one process, {args.rounds} runs per policy "
             f"(runs of all policies interleaved), {os.cpu_count()} cores, 1-min load {load0:.2f} -> {load1:.2f}.",
             "", "| threads | policy | dense ms (per run) | ratio to dense: largest run-to-run difference | "
             "ratio range over the models |", "|---|---|---|---|---|"]
    record = []
    for (threads, name), per_run in runs.items():
        ratios = [{c: run[c] / run[dense] for c in CONFIGS[1:]} for run in per_run]
        diff = max(max(r[c] for r in ratios) - min(r[c] for r in ratios) for c in CONFIGS[1:])
        all_ratios = [v for r in ratios for v in r.values()]
        lines.append(f"| {threads} | {name} | {' / '.join(f'{run[dense]:.1f}' for run in per_run)} | {diff:.3f} | "
                     f"{min(all_ratios):.3f}-{max(all_ratios):.3f} |")
        record.append({"threads": threads, "policy": name, "dense_ms": [round(run[dense], 2) for run in per_run],
                       "ratio_max_diff": round(diff, 4),
                       "ratios": [{c: round(v, 4) for c, v in r.items()} for r in ratios]})
    text = "\n".join(lines)
    if not args.no_results:
        write_section("thread_isolation", text)
    print(text)
    print(json.dumps({"benchmark": "thread_isolation", "load": [load0, load1], "runs": record}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
