"""Benchmark: does the search cover its space? (issue 25, item 1)

Runs the README's main job (``vitsearch search --budget 60%``, 24 candidates, brief training; ``--model clutter``
for the task where token choices matter, its own section of RESULTS.md) with the default
sampler (TPE) and with ``--sampler random``, for several seeds, and reports per search: the trials the sampler made
(baselines aside), how many of them were repeats of a trained model or over the budget, the candidates trained,
their methods and selector counts, and the hypervolume of the front at equal trained candidates (reference: the
unpruned latency and accuracy 0). Targets: 24 trained; at most 20% of the sampled trials repeats or over budget;
both methods and 1, 2 and 3 selectors among the trained; TPE's mean hypervolume over the seeds at least random's.

``--methods all,spvit,evovit,tome,evit`` adds, per seed, a TPE search of the built-in space restricted to each one
method (issue 26): the four-method search's mean front hypervolume should be at least every single-method search's,
at the same number of trained candidates. Baselines are not trained (``--baselines none`` by default): they never
enter the front, so the hypervolumes do not depend on them.

Each search is a study folder under ``--reports``; one already complete is read back, not run again, so an
interrupted benchmark resumes (``--fresh`` starts over).

    .venv/bin/python benchmarks/coverage.py [--seeds 0,1,2] [--samplers tpe,random] [--steps 40] [--methods all,spvit]

Writes its section of benchmarks/RESULTS.md, prints a summary and a last JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, wait_for_quiet, write_section  # noqa: E402
from vitsearch import __version__  # noqa: E402
from vitsearch.errors import VitsearchError  # noqa: E402
from vitsearch.pareto import hypervolume  # noqa: E402
from vitsearch.search import SearchSettings, prepare, run_search  # noqa: E402
from vitsearch.search.space import default_space_file  # noqa: E402
from vitsearch.training import TrainSettings  # noqa: E402

MAX_WASTED = 0.20  # repeats and over-budget trials, as a share of the trials the sampler made


def sampled_trials(folder: Path, name: str) -> list[dict]:
    """The study's trials that ran a sampled config (baselines aside): status and config of each."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(folder / "journal.log"))))
    return [{"status": t.user_attrs.get("status", ""), "config": t.user_attrs.get("config")}
            for t in study.get_trials(deepcopy=False) if "config" in t.user_attrs]


def method_space(model: str, method: str, folder: Path) -> str | None:
    """``model``'s built-in space with ``method`` alone (None for "all": the built-in file itself), every other
    setting as it is there."""
    if method == "all":
        return None
    text, n = re.subn(r"(?m)^methods = \[.*\]$", f'methods = ["{method}"]', default_space_file(model).read_text())
    if n != 1:
        raise SystemExit(f"the built-in {model} space has no one-line methods list to restrict")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"space-{model}-{method}.toml"
    path.write_text(text)
    return str(path)


def prefix(model: str) -> str:
    """Study names of the digits runs stay as they were; another model's are named after it."""
    return "" if model == "digits" else f"{model}-"


def run(sampler: str, seed: int, args: argparse.Namespace, method: str = "all") -> dict:
    train = TrainSettings() if args.steps is None else TrainSettings(steps=args.steps)
    settings = SearchSettings(model=args.model, budget=args.budget, trials=args.trials, sampler=sampler, seed=seed,
                              train=train, study=f"coverage-{prefix(args.model)}{sampler}-{seed}"
                              + ("" if method == "all" else f"-{method}"),
                              reports=str(args.reports), tables=args.tables, baselines=args.baselines,
                              space=method_space(args.model, method, Path(args.reports)))
    folder = Path(args.reports) / settings.name()
    if args.fresh:
        shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    try:
        result = run_search(settings, progress=not args.quiet)
    except VitsearchError as e:  # a method alone may have no config within the budget: an empty front, said why
        if method == "all":
            raise
        return {"sampler": sampler, "seed": seed, "methods": method, "seconds": round(time.perf_counter() - start, 1),
                "sampled": 0, "repeats": 0, "over_budget": 0, "wasted_share": 0.0, "trained": 0,
                "strata": {}, "hypervolume": 0.0, "best": None, "folder": str(folder), "refused": str(e)}
    seconds = time.perf_counter() - start
    trials = sampled_trials(result.folder, settings.name())
    repeats = sum(t["status"].startswith("same model") for t in trials)
    over = sum(t["status"].startswith("rejected") for t in trials)
    trained = [c for c in result.trials if c.accuracy is not None]
    strata = Counter(f"{c.config.method}/{len(c.config.keep)}" for c in trained)
    return {
        "sampler": sampler, "seed": seed, "methods": method, "seconds": round(seconds, 1), "sampled": len(trials), "repeats": repeats,
        "over_budget": over, "wasted_share": (repeats + over) / max(len(trials), 1), "trained": len(trained),
        "strata": dict(sorted(strata.items())),
        "hypervolume": hypervolume([(c.val_accuracy, c.predicted_ms) for c in result.front], ref_latency=result.unpruned_ms),
        "best": None if result.best is None else {"config": str(result.best.config), "accuracy": result.best.accuracy},
        "folder": str(result.folder),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--budget", default="60%")
    ap.add_argument("--model", default="digits", help="embedded model (clutter: where token choices matter)")
    ap.add_argument("--steps", type=int, default=None, help="brief training steps per candidate (default: the search's)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--samplers", default="tpe,random")
    ap.add_argument("--methods", default="all",
                    help="method sets: all (the built-in space), or single methods searched alone with TPE (issue 26)")
    ap.add_argument("--baselines", default="none", help="the search's --baselines (none: they never enter the front)")
    ap.add_argument("--reports", default=str(ROOT / "reports" / "benchmarks"))
    ap.add_argument("--tables", default=str(ROOT / "latency_tables"))
    ap.add_argument("--fresh", action="store_true", help="run every search again instead of resuming its study")
    ap.add_argument("--wait", type=float, default=300, help="seconds to wait for a quiet machine first")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--no-results", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # the base model and the table, before any timing
    prepare(SearchSettings(model=args.model, budget=args.budget, tables=args.tables), progress=not args.quiet)
    load = wait_for_quiet(1.0, args.wait)
    seeds = [int(s) for s in args.seeds.split(",")]
    singles = [m for m in args.methods.split(",") if m != "all"]
    runs = [run(sampler, seed, args) for seed in seeds for sampler in args.samplers.split(",")]  # interleaved
    alone = [run("tpe", seed, args, method) for seed in seeds for method in singles]

    mean_hv = {s: statistics.mean(r["hypervolume"] for r in runs if r["sampler"] == s) for s in args.samplers.split(",")}
    tpe = [r for r in runs if r["sampler"] == "tpe"]
    verdict = {
        "all_trained": all(r["trained"] == args.trials for r in runs),
        "wasted_at_most_20pct": all(r["wasted_share"] <= MAX_WASTED for r in tpe),
        "both_methods_and_1_2_3_selectors": all({k.split("/")[0] for k in r["strata"]} >= {"spvit", "evovit"}
                                                and {k.split("/")[1] for k in r["strata"]} >= {"1", "2", "3"}
                                                for r in tpe),
    }
    if "tpe" in mean_hv and "random" in mean_hv:
        verdict["tpe_hv_at_least_random"] = mean_hv["tpe"] >= mean_hv["random"]

    lines = [f"## Coverage of the search (issue 25, item 1){'' if args.model == 'digits' else f': {args.model}'}", "",
             f"`.venv/bin/python benchmarks/coverage.py{'' if args.model == 'digits' else f' --model {args.model}'} "
             f"--seeds {args.seeds} --samplers {args.samplers}"
             f"{f' --methods {args.methods}' if singles else ''} --baselines {args.baselines}"
             f"{f' --steps {args.steps}' if args.steps else ''}` — vitsearch {__version__}, "
             f"{platform.processor() or platform.machine()}, load average {load:.2f} at start, {time.strftime('%Y-%m-%d')}; "
             f"budget {args.budget}, {args.trials} candidates.", "",
             "| sampler | seed | sampled | repeats | over budget | trained | method/selectors trained | front HV | best | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        best = r["best"] or {}
        lines.append(f"| {r['sampler']} | {r['seed']} | {r['sampled']} | {r['repeats']} | {r['over_budget']} | "
                     f"{r['trained']} | {', '.join(f'{k}: {v}' for k, v in r['strata'].items())} | "
                     f"{r['hypervolume']:.5f} | `{best.get('config', '-')}` {100 * best.get('accuracy', float('nan')):.2f}% | "
                     f"{r['seconds']} |")
    lines += ["", "Mean front hypervolume: " + ", ".join(f"{s} {v:.5f}" for s, v in mean_hv.items()), "",
              "Verdict: " + ", ".join(f"{k} = {v}" for k, v in verdict.items())]
    mean_alone = {}
    if alone and "tpe" in mean_hv:
        mean_alone = {m: statistics.mean(r["hypervolume"] for r in alone if r["methods"] == m) for m in singles}
        verdict["four_methods_hv_at_least_every_single"] = all(mean_hv["tpe"] >= v for v in mean_alone.values())
        lines += ["", "### Four methods against one (issue 26)", "",
                  "TPE, the same seeds, budget and candidates; the built-in space with one method alone.", "",
                  "| methods | seed | trained | method/selectors trained | front HV | best | wall s |",
                  "|---|---|---|---|---|---|---|"]
        for r in [r for r in runs if r["sampler"] == "tpe"] + alone:
            best = r["best"] or {"config": "no config fits the budget" if "refused" in r else "-"}
            lines.append(f"| {r['methods']} | {r['seed']} | {r['trained']} | "
                         f"{', '.join(f'{k}: {v}' for k, v in r['strata'].items())} | {r['hypervolume']:.5f} | "
                         f"`{best.get('config', '-')}` {100 * best.get('accuracy', float('nan')):.2f}% | {r['seconds']} |")
        lines += ["", "Mean front hypervolume: all four " + f"{mean_hv['tpe']:.5f}; "
                  + ", ".join(f"{m} alone {v:.5f}" for m, v in mean_alone.items()),
                  f"Verdict: four_methods_hv_at_least_every_single = {verdict['four_methods_hv_at_least_every_single']}"]
    text = "\n".join(lines)
    print(text)
    if not args.no_results:
        write_section("coverage" if args.model == "digits" else f"coverage-{args.model}", text)
    print(json.dumps({"runs": runs + alone, "mean_hypervolume": mean_hv, "mean_hypervolume_alone": mean_alone,
                      "verdict": verdict, "load": load}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
