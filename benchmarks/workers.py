"""Benchmark: workers that divide one study (issue 13). Distinct trained configs per hour, one worker against two.

On the digits default (this machine's CPU table, the cached digits model), runs the same search three ways, each a
fresh study on the journal file: one worker with every core (torch's default threads), one worker with one thread,
and two worker processes sharing the study, one thread each (a core each: what this 2-core machine allows). Each
search stops at ``--trials`` trained candidates across its workers; the baselines are trained too (the space's,
one each across workers). Reports wall time, trained candidates, distinct canonical configs, configs trained more
than once (target: none), baselines evaluated more than once (target: none) and distinct trained configs per
hour. The ratio two workers / one worker (all cores) is the figure the issue asks for; it cannot exceed the core
count, and on 2 cores a one-thread worker is already more than half as fast as a two-thread one.

    .venv/bin/python benchmarks/workers.py [--trials 8] [--steps 40]

Writes its section of benchmarks/RESULTS.md, prints a summary and a last JSON line.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
from optuna.storages import JournalStorage  # noqa: E402
from optuna.storages.journal import JournalFileBackend  # noqa: E402

from benchmarks.common import ROOT, wait_for_quiet, write_section  # noqa: E402

RUNS = (("one worker, all cores", 1, None), ("one worker, one thread", 1, 1), ("two workers, one thread each", 2, 1))


def run(reports: Path, study: str, workers: int, threads: int | None, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if threads is not None:  # torch reads these at start: one intra-op thread per worker
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "vitsearch", "-q", "search", "--budget", args.budget, "--trials", str(args.trials),
           "--steps", str(args.steps), "--study", study, "--reports", str(reports), "--tables", args.tables]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(workers)]
    errors = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - start
    for p, err in zip(procs, errors):
        if p.returncode != 0:
            raise SystemExit(f"a worker of {study} failed ({p.returncode}):\n{err[-3000:]}")
    s = optuna.load_study(study_name=study, storage=JournalStorage(JournalFileBackend(str(reports / study / "journal.log"))))
    done = [t for t in s.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("accuracy") is not None]
    keys = collections.Counter(t.user_attrs.get("key", t.user_attrs["config"]) for t in done)
    baseline_trials = collections.Counter(t.user_attrs["key"] for t in s.get_trials(deepcopy=False)
                                          if str(t.user_attrs.get("key", "")).startswith("baseline:")
                                          and t.user_attrs.get("owns"))
    workers_seen = {t.user_attrs.get("worker") for t in done}
    return {"workers": workers, "threads": threads or os.cpu_count(), "seconds": round(seconds, 1),
            "trained": len(done), "distinct": len(keys), "trained_twice": sum(n - 1 for n in keys.values()),
            "baselines": len(baseline_trials), "baselines_twice": sum(n - 1 for n in baseline_trials.values()),
            "workers_that_trained": len(workers_seen),
            "distinct_per_hour": round(3600 * len(keys) / seconds, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--budget", default="60%")
    ap.add_argument("--tables", default=str(ROOT / "latency_tables"))
    ap.add_argument("--wait", type=float, default=120)
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    load0 = wait_for_quiet(1.0, args.wait)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitsearch-workers-") as tmp:
        for i, (label, workers, threads) in enumerate(RUNS):
            row = run(Path(tmp), f"w{i}", workers, threads, args)
            rows.append({"label": label, **row})
            print(json.dumps(rows[-1]), flush=True)
    load1 = os.getloadavg()[0]
    ref = rows[0]["distinct_per_hour"]
    lines = ["## Workers that divide one study (issue 13)", "",
             f"`.venv/bin/python benchmarks/workers.py {' '.join(sys.argv[1:])}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: digits default space, `--budget {args.budget}`, "
             f"{args.trials} trained candidates per study ({args.steps} steps each) plus its baselines, journal file, "
             f"{os.cpu_count()} cores, 1-min load {load0:.2f} -> {load1:.2f}.", "",
             "| run | wall s | trained | distinct configs | trained twice | baselines (twice) | workers that trained | "
             "distinct / hour | vs one worker, all cores |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['seconds']} | {r['trained']} | {r['distinct']} | {r['trained_twice']} | "
                     f"{r['baselines']} ({r['baselines_twice']}) | {r['workers_that_trained']} | "
                     f"{r['distinct_per_hour']} | {r['distinct_per_hour'] / ref:.2f}x |")
    text = "\n".join(lines)
    if not args.no_results:
        write_section("workers", text)
    print(text)
    print(json.dumps({"benchmark": "workers", "load": [load0, load1], "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
