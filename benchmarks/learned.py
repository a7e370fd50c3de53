"""Benchmark of the learned strategy against the Optuna front at equal training compute (issue 14, item 3).

One study on the digits default (this machine's CPU table): the Optuna brief search (``--trials`` candidates of
``--steps`` steps) and, with ``learned=True``, the learned strategy with the same number of training steps
(trials x steps: rate learning, then the merged config's own brief training). Reports, for each: the best accuracy
within the budget, the hypervolume within the budget (reference: the budget and accuracy ``--ref-accuracy``), training
steps and seconds; and the hypervolume of the Optuna front with the learned point added. With ``--finalize`` the best
Optuna trial and the learned trial are also finalized (the full recipe), exported and measured on the device, since
the brief accuracies are only a proxy.

    .venv/bin/python benchmarks/learned.py [--budget 60%] [--trials 24] [--steps 40] [--finalize]

Writes its section of benchmarks/RESULTS.md, prints a summary and a last JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, write_section  # noqa: E402
from vitsearch.pareto import hypervolume  # noqa: E402
from vitsearch.search import SearchSettings, run_search  # noqa: E402
from vitsearch.training import TrainSettings  # noqa: E402


def summarise(points: list, budget_ms: float, ref_accuracy: float) -> dict:
    within = [c for c in points if c.feasible and c.accuracy is not None and c.predicted_ms <= budget_ms]
    best = max(within, key=lambda c: (c.accuracy, -c.predicted_ms), default=None)
    return {
        "within_budget": len(within),
        "hypervolume": hypervolume([(c.accuracy, c.predicted_ms) for c in within], ref_latency=budget_ms,
                                   ref_accuracy=ref_accuracy),
        "best": None if best is None else {"trial": best.trial, "config": str(best.config), "accuracy": best.accuracy,
                                           "predicted_ms": round(best.predicted_ms, 4)},
        "train_seconds": round(sum(c.train_seconds for c in points), 1),
    }


def finalized(study: Path, trial: int, reports: Path) -> dict:
    from vitsearch.finalize import finalize

    row = finalize(study.name, [trial], reports=reports, progress=False)[0].record
    return {k: row.get(k) for k in ("trial", "config", "accuracy", "accuracy_brief", "predicted_ms", "measured_ms",
                                    "measured_at_table_speed_ms", "seconds")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="60%")
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--steps", type=int, default=TrainSettings().steps)
    p.add_argument("--ref-accuracy", type=float, default=0.8, help="hypervolume reference accuracy (default 0.8)")
    p.add_argument("--finalize", action="store_true", help="also finalize the best Optuna trial and the learned one")
    p.add_argument("--reports", type=Path, default=ROOT / "benchmarks" / "out" / "learned")
    p.add_argument("--tables", default=str(ROOT / "latency_tables"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")

    settings = SearchSettings(budget=args.budget, trials=args.trials, train=TrainSettings(steps=args.steps, seed=args.seed),
                              seed=args.seed, learned=True, study=f"bench-learned-{args.seed}", reports=str(args.reports),
                              tables=args.tables)
    shutil.rmtree(args.reports / settings.name(), ignore_errors=True)
    start = time.perf_counter()
    result = run_search(settings, progress=False)
    seconds = time.perf_counter() - start
    optuna_trials = [c for c in result.trials if c.kind == "search"]
    learned = next(c for c in result.trials if c.kind == "learned")
    budget = result.budget_ms
    out = {
        "budget": args.budget, "budget_ms": round(budget, 4), "unpruned_ms": round(result.unpruned_ms, 4),
        "unpruned_accuracy": next(b.accuracy for b in result.baselines if b.kind == "unpruned"),
        "steps_each": args.trials * args.steps, "seconds_total": round(seconds, 1), "ref_accuracy": args.ref_accuracy,
        "optuna": summarise(optuna_trials, budget, args.ref_accuracy),
        "learned": summarise([learned], budget, args.ref_accuracy) | {
            "config": str(learned.config), "status": learned.status, "accuracy": learned.accuracy,
            "predicted_ms": round(learned.predicted_ms, 4)},
        "together": summarise(optuna_trials + [learned], budget, args.ref_accuracy),
    }
    if args.finalize:
        study = result.folder
        out["finalized"] = {"optuna": finalized(study, out["optuna"]["best"]["trial"], args.reports)
                            if out["optuna"]["best"] else None,
                            "learned": finalized(study, learned.trial, args.reports)}
    o, l, t = out["optuna"], out["learned"], out["together"]
    ob = o["best"] or {}
    lines = [
        f"Digits default, budget {args.budget} = {budget:.3f} ms (unpruned {result.unpruned_ms:.3f} ms, "
        f"{100 * out['unpruned_accuracy']:.2f}%), seed {args.seed}, equal training compute: "
        f"{out['steps_each']} steps each (Optuna: {args.trials} trials x {args.steps}; learned: rate learning + "
        f"{args.steps} on the merged config). `.venv/bin/python benchmarks/learned.py"
        f"{' --finalize' if args.finalize else ''}`, {seconds / 60:.1f} min in all.",
        "",
        "| | best accuracy within budget | config | predicted ms | hypervolume (ref budget, acc "
        f"{args.ref_accuracy}) | training s |",
        "|---|---|---|---|---|---|",
        f"| Optuna front ({o['within_budget']} within budget) | {100 * ob.get('accuracy', 0):.2f}% | "
        f"`{ob.get('config', '-')}` | {ob.get('predicted_ms', '-')} | {o['hypervolume']:.5f} | {o['train_seconds']} |",
        f"| learned rates | {100 * l['accuracy']:.2f}% | `{l['config']}` | {l['predicted_ms']} | "
        f"{l['hypervolume']:.5f} | {l['train_seconds']} |",
        f"| both on one front | | | | {t['hypervolume']:.5f} | |",
    ]
    if "finalized" in out:
        lines += ["", "Finalized (600 steps, the method's schedule, exported and measured on this CPU):", "",
                  "| | config | brief | finalized | predicted ms | measured ms | measured at the table's speed |",
                  "|---|---|---|---|---|---|---|"]

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        for name, row in out["finalized"].items():
            if row:
                lines.append(f"| {name} | `{row['config']}` | {100 * (row['accuracy_brief'] or 0):.2f}% | "
                             f"{100 * row['accuracy']:.2f}% | {ms(row['predicted_ms'])} | {ms(row['measured_ms'])} | "
                             f"{ms(row['measured_at_table_speed_ms'])} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("learned", "## learned: learned keep rates vs the Optuna front (issue 14, item 3)\n\n" + text)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
