"""Does the clutter task tell token choices apart (issue 25 item 2)?

Loads (or pretrains, once, into the cache) the embedded clutter model, then for each config: its accuracy
untrained (the base with the config's pruning, SPViT's selectors as initialised), and after a brief training
(the search's default TrainSettings: 40 steps of 32), on val and on test, with the candidate's CPU seconds
(process time of one thread: on a loaded machine, closer to the unloaded wall time than the wall clock).

    .venv/bin/python benchmarks/clutter_task.py [CONFIG ...]   # default: mild and aggressive, both methods

Prints one JSON line for the base model and one per config.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vitsearch.data import load_dataset  # noqa: E402
from vitsearch.models import CLUTTER  # noqa: E402
from vitsearch.pretrain import base_model, recipe  # noqa: E402
from vitsearch.pruning import PruneConfig  # noqa: E402
from vitsearch.training import TrainSettings, accuracy, fresh_model, train_candidate  # noqa: E402

CONFIGS = ["spvit:3=0.8", "spvit:3=0.2,6=0.2", "evovit:3=0.8", "evovit:3=0.2,6=0.2"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="*", default=CONFIGS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base, meta = base_model(recipe(CLUTTER))
    print(json.dumps({"base_val": meta["val_accuracy"], "base_test": meta["test_accuracy"],
                      "pretrain_s": meta["train_seconds"], "settings_key": meta["settings_key"]}), flush=True)
    splits = load_dataset(CLUTTER, base)
    for text in args.configs:
        model = fresh_model(base, PruneConfig.parse(text))
        untrained = accuracy(model, splits)
        cpu, wall = time.process_time(), time.perf_counter()
        train_candidate(model, base, splits, TrainSettings())
        val = accuracy(model, splits)  # a brief candidate is trained and ranked on val
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        test = accuracy(model, splits, split="test")
        print(json.dumps({"config": text, "untrained_val": round(untrained, 4), "brief_val": round(val, 4),
                          "brief_test": round(test, 4), "brief_cpu_s": round(cpu, 1), "brief_wall_s": round(wall, 1)}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
