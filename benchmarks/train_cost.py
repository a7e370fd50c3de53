"""What a DeiT-S search costs on the training device (issue 13): a projection from measured steps.

DeiT-S at 224 with random weights (this measures cost, not accuracy) on a generated ImageFolder (>= 500 images,
3 classes). Measured, interleaved in one run: seconds per brief-training step of one candidate, per supernet step
(the largest, the smallest and a random config), and one held-out evaluation of the val split. Projected from
those (labelled a projection: a 90-minute search does not fit a shared CPU's time box): seconds per brief
candidate (40 steps + evaluation) and per shared candidate (2 steps + evaluation), trained candidates per hour,
the time of a 24-candidate search of each strategy with its baselines, and when the first trial's result
appears (unpruned baseline, then the first candidate; shared: the supernet first). Targets: a 24-candidate shared
search within 90 minutes, the first trial within 15 (CPU); on a GPU a brief candidate under 15 s and a
24-candidate brief search under 10 minutes.

    python benchmarks/train_cost.py [--train-device cpu] [--images 500] [--steps 3] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import write_section  # noqa: E402
from vitsearch.pruning import PruneConfig  # noqa: E402
from vitsearch.data import LoaderSettings, load_dataset  # noqa: E402
from vitsearch.models import create_model  # noqa: E402
from vitsearch.search import default_space_file, load_space  # noqa: E402
from vitsearch.search.evaluation import SupernetSampler  # noqa: E402
from vitsearch.training import Precision, TrainSettings, accuracy, fresh_model, train_candidate, train_supernet  # noqa: E402

BRIEF_STEPS, SHARED_STEPS, SHARED_FINETUNE, TRIALS = 40, 60, 2, 24  # the search's defaults


def make_folder(root: Path, images: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(images):
        c = root / f"class{i % 3}"
        c.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(c / f"{i}.jpg", quality=90)
    return root


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train-device", default="cpu")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--steps", type=int, default=3, help="measured steps per kind (after one warm-up step)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    precision = Precision.resolve(args.train_device)
    torch.manual_seed(0)
    base = create_model("deit_small_patch16_224", num_classes=3).to(precision.device)
    space = load_space(default_space_file("deit_small_patch16_224"), depth=12)
    with tempfile.TemporaryDirectory() as tmp:
        splits = load_dataset(make_folder(Path(tmp) / "data", args.images), base,
                              loading=LoaderSettings(args.workers, pin_memory=precision.device.type == "cuda"))
        config = PruneConfig.parse("evovit:3=0.7,6=0.5,9=0.5")
        train = TrainSettings(steps=args.steps + 1)
        times: dict[str, list[float]] = {"brief": [], "supernet": [], "eval": []}
        for _ in range(2):  # interleaved: brief, supernet, evaluation, twice
            model = fresh_model(base, config)
            r = train_candidate(model, base, splits, train, precision=precision)
            times["brief"].append(r.seconds / train.steps)
            everywhere = [PruneConfig(m, {b: space.keep_max for b in space.blocks}) for m in space.methods]
            net = base
            for c in everywhere:
                net = fresh_model(net, c)
            r = train_supernet(net, base, splits, SupernetSampler(space).step_configs, everywhere, train,
                               precision=precision)
            times["supernet"].append(r.seconds / train.steps)
            start = time.perf_counter()
            accuracy(model, splits, precision=precision)
            times["eval"].append(time.perf_counter() - start)
            del net, model
    baselines = len(space.baselines()) + 1
    brief_step, super_step, evaluation = (min(times[k]) for k in ("brief", "supernet", "eval"))
    brief_cand = BRIEF_STEPS * brief_step + evaluation
    shared_cand = SHARED_FINETUNE * brief_step + evaluation
    supernet = SHARED_STEPS * super_step
    record = {
        "device": str(precision.device), "precision": precision.name, "images": args.images, "baselines": baselines,
        "train": len(splits.train), "val": len(splits.val), "batch": train.batch_size,
        "s_per_brief_step": round(brief_step, 2), "s_per_supernet_step": round(super_step, 2),
        "s_per_evaluation": round(evaluation, 1),
        "projected_s_per_brief_candidate": round(brief_cand, 1),
        "projected_s_per_shared_candidate": round(shared_cand, 1),
        "projected_brief_candidates_per_hour": round(3600 / brief_cand, 1),
        "projected_shared_candidates_per_hour_after_supernet": round(3600 / shared_cand, 1),
        "projected_brief_search_min": round((TRIALS + baselines) * brief_cand / 60, 1),
        "projected_shared_search_min": round((supernet + (TRIALS + baselines) * shared_cand) / 60, 1),
        "projected_first_trial_brief_min": round(2 * brief_cand / 60, 1),
        "projected_first_trial_shared_min": round((shared_cand + supernet + shared_cand) / 60, 1),
        "measured": {k: [round(v, 2) for v in vs] for k, vs in times.items()},
    }
    print(json.dumps(record))
    if not args.no_write:
        write_section(f"DeiT-S training cost on {precision.device} ({precision.name}) — a projection",
                      "```\n" + json.dumps(record, indent=1) + "\n```\n")


if __name__ == "__main__":
    main()
