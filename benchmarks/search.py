"""Benchmark of the search on the digits default (issue 4).

Runs, on this machine's CPU table and the built-in digits model, one search per strategy at the same budget:
- ``brief``: every candidate trained briefly with the computation-aware loss;
- ``shared``: weight sharing, one supernet, candidates evaluated from it.
Reports the wall time of each search (setup excluded: the base model and the table are made first), trials per
hour, the hypervolume of each front and of the uniform keep-ratio baselines (reference: the unpruned latency and
accuracy 0), whether the front dominates every uniform baseline, and the best accuracy under the budget against
the unpruned model. Targets (issue 4): front dominates the baselines; at 60% of the unpruned latency accuracy
within 1 point of the unpruned model; shared reaches the brief hypervolume within 2% in at most a third of the time.

    .venv/bin/python benchmarks/search.py [--trials 24] [--budget 60%]

Writes its section of benchmarks/RESULTS.md, prints a summary and a last JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, wait_for_quiet, write_section  # noqa: E402
from vitsearch import __version__  # noqa: E402
from vitsearch.pareto import dominated_by_front, hypervolume  # noqa: E402
from vitsearch.search import SearchSettings, prepare, run_search  # noqa: E402

TARGETS = {"accuracy_drop_points": 1.0, "shared_hv_gap": 0.02, "shared_time_ratio": 1 / 3}


def run(strategy: str, args: argparse.Namespace) -> dict:
    settings = SearchSettings(budget=args.budget, trials=args.trials, strategy=strategy, study=f"bench-{strategy}",
                              reports=str(args.reports), tables=args.tables)
    shutil.rmtree(Path(args.reports) / settings.name(), ignore_errors=True)
    start = time.perf_counter()
    result = run_search(settings, progress=not args.quiet)
    seconds = time.perf_counter() - start
    ref = result.unpruned_ms
    front = [(c.accuracy, c.predicted_ms) for c in result.front]
    uniform = [b for b in result.baselines if b.kind == "uniform"]
    unpruned = next(b for b in result.baselines if b.kind == "unpruned")
    undominated = [str(b.config) for b in uniform if b.predicted_ms < ref
                   and not dominated_by_front(front, (b.accuracy, b.predicted_ms))]
    best = result.best
    trained = sum(c.accuracy is not None for c in result.trials)
    return {
        "strategy": strategy, "seconds": round(seconds, 1), "trials": len(result.trials), "trained": trained,
        "trials_per_hour": round(3600 * trained / seconds, 1),
        "hypervolume": hypervolume(front, ref_latency=ref),
        "baseline_hypervolume": hypervolume([(b.accuracy, b.predicted_ms) for b in uniform], ref_latency=ref),
        "baselines_not_dominated": undominated,
        "unpruned_accuracy": unpruned.accuracy, "unpruned_ms": ref, "budget_ms": result.budget_ms,
        "best": None if best is None else {"config": str(best.config), "accuracy": best.accuracy,
                                           "predicted_ms": best.predicted_ms,
                                           "drop_points": 100 * (unpruned.accuracy - best.accuracy)},
        "front": [{"config": str(c.config), "accuracy": c.accuracy, "ms": round(c.predicted_ms, 4)} for c in result.front],
        "folder": str(result.folder),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--budget", default="60%")
    ap.add_argument("--reports", default=str(ROOT / "reports" / "benchmarks"))
    ap.add_argument("--tables", default=str(ROOT / "latency_tables"))
    ap.add_argument("--strategies", default="brief,shared")
    ap.add_argument("--wait", type=float, default=300, help="seconds to wait for a quiet machine first")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--no-results", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    prepare(SearchSettings(budget=args.budget, tables=args.tables), progress=not args.quiet)  # base model + table
    load = wait_for_quiet(1.0, args.wait)
    runs = {s: run(s, args) for s in args.strategies.split(",")}
    brief, shared = runs.get("brief"), runs.get("shared")
    verdict = {}
    if brief:
        verdict["front_dominates_uniform"] = not brief["baselines_not_dominated"]
        verdict["hv_front_over_uniform"] = brief["hypervolume"] / max(brief["baseline_hypervolume"], 1e-12)
        if brief["best"]:
            verdict["accuracy_within_1_point"] = brief["best"]["drop_points"] <= TARGETS["accuracy_drop_points"]
    if brief and shared:
        verdict["shared_hv_gap"] = 1 - shared["hypervolume"] / max(brief["hypervolume"], 1e-12)
        verdict["shared_time_ratio"] = shared["seconds"] / brief["seconds"]
        verdict["shared_meets_targets"] = (verdict["shared_hv_gap"] <= TARGETS["shared_hv_gap"]
                                           and verdict["shared_time_ratio"] <= TARGETS["shared_time_ratio"])

    lines = ["## Search on the digits default (issue 4)",
             "", f"`.venv/bin/python benchmarks/search.py --trials {args.trials} --budget {args.budget}` — "
             f"vitsearch {__version__}, {platform.processor() or platform.machine()}, load average {load:.2f} at start, "
             f"{time.strftime('%Y-%m-%d')}.", "",
             "| strategy | wall s | candidates | trained | trained/h | front HV | uniform HV | best under budget | acc | drop (pts) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs.values():
        b = r["best"] or {}
        lines.append(f"| {r['strategy']} | {r['seconds']} | {r['trials']} | {r['trained']} | {r['trials_per_hour']} | "
                     f"{r['hypervolume']:.4f} | {r['baseline_hypervolume']:.4f} | `{b.get('config', '-')}` | "
                     f"{100 * b.get('accuracy', float('nan')):.2f}% | {b.get('drop_points', float('nan')):.2f} |")
    first = next(iter(runs.values()))
    lines += ["", f"Unpruned: {100 * first['unpruned_accuracy']:.2f}% at {first['unpruned_ms']:.3f} ms (predicted); "
              f"budget {args.budget} = {first['budget_ms']:.3f} ms. HV: area under the accuracy-latency front up to the "
              "unpruned latency (accuracy x ms).", ""]
    for r in runs.values():
        lines.append(f"- {r['strategy']}: uniform baselines the front does not dominate: "
                     f"{', '.join(r['baselines_not_dominated']) or 'none'}")
    lines += ["", "Verdict: " + ", ".join(f"{k} = {v:.3f}" if isinstance(v, float) else f"{k} = {v}"
                                         for k, v in verdict.items())]
    text = "\n".join(lines)
    print(text)
    if not args.no_results:
        write_section("search", text)
    print(json.dumps({"runs": runs, "verdict": verdict, "load": load}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
