"""What SPViT's brief training costs, and whether removing the pruned tokens after the selector's block loses
accuracy (issue 25 item 2: a brief candidate of the clutter model within 20 s).

For each config, the search's brief training (the default TrainSettings: 40 steps of 32) in two ways:
- ``removed`` (the default since issue 25): the block at a selector masks the pruned tokens as keys, then they are
  removed, so later blocks compute on what inference keeps;
- ``masked`` (the recipe before, DynamicViT's): every token stays in every block, the pruned masked as keys
  (``SPViT._train_masked`` with the same top-k draws).
Evo-ViT configs run once, for reference. Reports val accuracy, the training's CPU seconds (process time: with one
thread, on a loaded machine closer to the unloaded wall time than the wall clock) and the candidate's wall seconds,
training and val evaluation (what a search waits for), with the load.

    .venv/bin/python benchmarks/spvit_train_cost.py [--model clutter] [--seeds 0] [--threads 1] [CONFIG ...]

Writes its section of benchmarks/RESULTS.md (``--no-results``: not) and prints one JSON line per run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import ROOT, write_section  # noqa: E402
from vitsearch.data import load_dataset  # noqa: E402
from vitsearch.models import CLUTTER  # noqa: E402
from vitsearch.pretrain import base_model, recipe  # noqa: E402
from vitsearch.pruning import PruneConfig  # noqa: E402
from vitsearch.pruning.methods.spvit import SPViT  # noqa: E402
from vitsearch.training import TrainSettings, accuracy, fresh_model, train_candidate  # noqa: E402

CONFIGS = ["spvit:3=0.5", "spvit:3=0.3,6=0.5", "spvit:4=0.7,8=0.5", "spvit:2=0.25", "evovit:3=0.5",
           "evovit:4=0.5,8=0.5"]
TARGET_S = 20.0


def brief(base, splits, config: PruneConfig, seed: int, mode: str) -> dict:
    default = SPViT.__dict__["_train"]  # the staticmethod itself
    if mode == "masked":  # the recipe before: every token in every block
        SPViT._train = staticmethod(SPViT._train_masked)
    try:
        model = fresh_model(base, config, seed)
        cpu, wall = time.process_time(), time.perf_counter()
        train_candidate(model, base, splits, TrainSettings(seed=seed))
        cpu, train_wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        SPViT._train = default
    val = accuracy(model, splits)
    return {"config": str(config), "mode": mode, "seed": seed, "val": round(val, 4), "train_cpu_s": round(cpu, 1),
            "train_wall_s": round(train_wall, 1), "candidate_wall_s": round(time.perf_counter() - wall, 1),
            "load": round(os.getloadavg()[0], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="*", default=CONFIGS)
    parser.add_argument("--model", default=CLUTTER)
    parser.add_argument("--seeds", default="0", help="comma-separated brief-training seeds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the search uses every core)")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base, _ = base_model(recipe(args.model))
    splits = load_dataset(args.model, base)
    started, load0 = time.strftime("%Y-%m-%d %H:%M", time.gmtime()), os.getloadavg()[0]
    rows = []
    for text in args.configs:
        config = PruneConfig.parse(text)
        for seed in (int(s) for s in args.seeds.split(",")):
            for mode in (("removed", "masked") if config.method == "spvit" else ("-",)):
                rows.append(brief(base, splits, config, seed, mode))
                print(json.dumps(rows[-1]), flush=True)
    if not args.no_results:
        write_section("spvit-train-cost", report(args, rows, started, load0))
    return 0


def report(args: argparse.Namespace, rows: list[dict], started: str, load0: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [
        "## SPViT's brief training: pruned tokens removed after the selector's block (issue 25 item 2)", "",
        f"`benchmarks/spvit_train_cost.py --model {args.model} --seeds {args.seeds} --threads {args.threads}` on "
        f"{started} UTC, commit {commit}: the search's brief training (40 steps of 32), {args.threads} thread(s), val "
        f"accuracy of the inference model; CPU seconds are the process's own for the training; a candidate's wall "
        f"seconds are its training and val evaluation. "
        f"Load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.", "",
        "| config | removed: val | removed: CPU s | removed: candidate wall s | masked: val | masked: CPU s | "
        "cost ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["config"], r["mode"], r["seed"]): r for r in rows}
    ratios = []
    for config in dict.fromkeys(r["config"] for r in rows):
        seeds = sorted({r["seed"] for r in rows if r["config"] == config})
        if (config, "-", seeds[0]) in by:
            rs = [by[config, "-", s] for s in seeds]
            lines.append(f"| `{config}` | {statistics.mean(r['val'] for r in rs):.2%} | "
                         f"{statistics.mean(r['train_cpu_s'] for r in rs):.1f} | "
                         f"{statistics.mean(r['candidate_wall_s'] for r in rs):.1f} | | | |")
            continue
        rem = [by[config, "removed", s] for s in seeds]
        msk = [by[config, "masked", s] for s in seeds]
        cr, cm = (statistics.mean(r["train_cpu_s"] for r in rs) for rs in (rem, msk))
        ratios.append(cm / cr)
        lines.append(f"| `{config}` | {statistics.mean(r['val'] for r in rem):.2%} | {cr:.1f} | "
                     f"{statistics.mean(r['candidate_wall_s'] for r in rem):.1f} | "
                     f"{statistics.mean(r['val'] for r in msk):.2%} | {cm:.1f} | {cm / cr:.2f}x |")
    spvit = [r for r in rows if r["mode"] == "removed"]
    worst = max(r["candidate_wall_s"] for r in spvit) if spvit else float("nan")
    lines += ["", f"Masked over removed, CPU time: median {statistics.median(ratios):.2f}x. The slowest SPViT "
              f"candidate, training and evaluation: {worst:.1f} s wall (target: within {TARGET_S:.0f} s)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
