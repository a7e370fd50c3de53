"""Held-out accuracy along a finalize run (issue 6): where longer training helps and where it stops helping.

Trains one trial of a study with ``finalize.train_schedule`` (the finalize loop itself, nothing saved to the
study) and counts the held-out images it gets right every ``--every`` steps, with the whole config applied.

    .venv/bin/python benchmarks/finalize_trajectory.py --study bench-brief --reports reports/benchmarks \\
        --trial 39 [--steps 600] [--lr 1e-4] [--aux-weight 0.5] [--every 100]

Prints one JSON line: images correct (of the held-out split) by step.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitsearch import finalize as fin  # noqa: E402
from vitsearch.pruning import PruneConfig  # noqa: E402
from vitsearch.pruning import apply, prune_state  # noqa: E402
from vitsearch.training import LossWeights, accuracy, fresh_model, progressive  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True)
    ap.add_argument("--reports", default="reports")
    ap.add_argument("--trial", type=int, required=True)
    ap.add_argument("--steps", type=int, default=fin.FinalizeSettings().steps)
    ap.add_argument("--lr", type=float, default=fin.FinalizeSettings().lr)
    ap.add_argument("--aux-weight", type=float, default=LossWeights().aux)
    ap.add_argument("--schedule", choices=fin.SCHEDULES, default="progressive")
    ap.add_argument("--every", type=int, default=100)
    args = ap.parse_args()

    ctx = fin.load_context(args.study, args.reports)
    config = PruneConfig.parse(fin.choose_trial(ctx, args.trial)["config"])
    settings = fin.FinalizeSettings(steps=args.steps, lr=args.lr, weights=LossWeights(aux=args.aux_weight),
                                    schedule=args.schedule)
    model = fresh_model(ctx.base, config, settings.seed)
    held_out = len(ctx.splits.val)
    correct: dict[int, int] = {}

    def count(m) -> int:
        m = copy.deepcopy(m)
        prune_state(m).reset()
        return round(accuracy(apply(m, config), ctx.splits) * held_out)

    def on_step(step: int, phase: progressive.Phase) -> None:
        if step and step % args.every == 0:
            correct[step] = count(model)  # the loop re-applies its phase's config before the step

    with tempfile.TemporaryDirectory() as tmp:
        phases = progressive.plan(config, settings, args.steps)
        progressive.train_schedule(model, ctx.base, ctx.splits, config, phases, settings, latency=ctx.latency,
                                   state_path=Path(tmp) / "state.pt", on_step=on_step, progress=False)
    correct[args.steps] = count(model)
    print(json.dumps({"trial": args.trial, "config": str(config), "lr": args.lr, "aux_weight": args.aux_weight,
                      "schedule": args.schedule, "held_out": held_out, "correct_by_step": correct}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
