"""Benchmark: which head Evo-ViT classifies with on a class-token model (issue 14 item 4).

The official DeiT Evo-ViT classifies from the mean of all patch tokens at inference (so the fast-updated
placeholders reach the logits) and trains the class token with an assisted head. Keeping the stock class-token head
instead makes the last stage's placeholders dead computation. Both are trained here on the digits model the way a
user gets them, interleaved config by config: training-free, the search's brief training (seed 0) and finalize's
layer-to-stage schedule (``--steps``), all scored on the base model's held-out split. The default
(``EvoViT.head_pooling``) is chosen by the finalized accuracy.

    .venv/bin/python benchmarks/evovit_head.py [--steps 600] [--configs evovit:4=0.5,8=0.5 ...] [--no-results]

Writes its section of benchmarks/RESULTS.md unless --no-results; prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import wait_for_quiet, write_section  # noqa: E402
from vitsearch.pruning import METHODS, PruneConfig  # noqa: E402
from vitsearch.search import SearchSettings, load_base, load_splits  # noqa: E402
from vitsearch.training import accuracy, fresh_model, progressive, train_candidate  # noqa: E402

CONFIGS = ["evovit:4=0.5,8=0.5", "evovit:3=0.3,6=0.3", "evovit:2=0.5"]
HEADS = {"mean": "avg", "class token": None}  # label -> EvoViT.head_pooling
logger = logging.getLogger("benchmark")


@contextmanager
def head(pooling: str | None) -> Iterator[None]:
    method = METHODS["evovit"]
    before = method.head_pooling
    method.head_pooling = pooling
    try:
        yield
    finally:
        method.head_pooling = before


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    ap.add_argument("--steps", type=int, default=progressive.FinalizeSettings().steps)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    load0 = wait_for_quiet(1.5, 60)
    settings = SearchSettings()
    base, info = load_base(settings)
    splits = load_splits(settings, base, info["split"])
    final = progressive.FinalizeSettings(steps=args.steps)
    rows = []
    started = time.perf_counter()
    for spec in args.configs:
        config = PruneConfig.parse(spec)
        for label, pooling in HEADS.items():
            with head(pooling), tempfile.TemporaryDirectory() as tmp:
                free = accuracy(fresh_model(base, config, 0), splits)
                brief_model = fresh_model(base, config, 0)
                train_candidate(brief_model, base, splits, settings.train)
                brief = accuracy(brief_model, splits)
                model = fresh_model(base, config, final.seed)
                outcome = progressive.train_schedule(model, base, splits, config, progressive.plan(config, final, final.steps),
                                                     final, latency=None, state_path=Path(tmp) / "state.pt",
                                                     progress=False)
                row = {"config": spec, "head": label, "training_free": free, "brief": brief,
                       "finalized": accuracy(model, splits), "seconds": round(outcome.seconds, 1)}
            rows.append(row)
            logger.info("%s", json.dumps(row))
    unpruned = accuracy(base, splits)
    load1 = os.getloadavg()[0]
    by_head = {label: [r["finalized"] for r in rows if r["head"] == label] for label in HEADS}
    medians = {label: statistics.median(v) for label, v in by_head.items()}
    wins = sum(m > c for m, c in zip(by_head["mean"], by_head["class token"]))
    lines = [f"## Evo-ViT's head: mean of all tokens or the class token (issue 14 item 4)", "",
             f"`.venv/bin/python benchmarks/evovit_head.py {' '.join(sys.argv[1:])}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: digits ({len(splits.val)} held-out images, "
             f"unpruned {100 * unpruned:.2f}%), finalize {final.steps} steps (layer-to-stage), brief = the search's "
             f"{settings.train.steps} steps, seed 0, {args.threads} threads, 1-min load {load0:.2f} -> {load1:.2f}, "
             f"{(time.perf_counter() - started) / 60:.0f} min.", "",
             "| config | head | training-free | brief | finalized | train s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['config']}` | {r['head']} | {100 * r['training_free']:.2f}% | {100 * r['brief']:.2f}% | "
                     f"{100 * r['finalized']:.2f}% | {r['seconds']} |")
    lines += ["", f"Finalized median: mean head {100 * medians['mean']:.2f}%, class-token head "
              f"{100 * medians['class token']:.2f}%; the mean head is ahead on {wins} of {len(args.configs)} configs."]
    text = "\n".join(lines)
    if not args.no_results:
        write_section("evovit_head", text)
    print(text)
    print(json.dumps({"benchmark": "evovit_head", "rows": rows, "unpruned": unpruned, "medians": medians,
                      "load": [load0, load1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
