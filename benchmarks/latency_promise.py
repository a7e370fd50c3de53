"""Does a search's pick measure within its budget? The latency promise of issue 25 item 6.

Profiles a fresh table for ``--model`` (random weights; latency does not depend on them) and validates it on
``--configs`` random pruned models (seed 0): the headroom a search then leaves under its budget
(``latency/validate.py`` ``measured_headroom``). Then measures ``--configs`` other random models (seed 1), exported
whole as finalize exports them, and reports on those held-out models: median |error| of the prediction at the
table's speed (target: <= 3%), and the share that would measure within the budget if a search had picked them at
its limit (prediction x (1 + headroom) <= measured: the promise the headroom makes, nine in ten by construction).

    .venv/bin/python benchmarks/latency_promise.py [--model digits] [--threads 1] [--configs 30]

Prints a summary and a last JSON line; with ``--results`` writes its section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_section  # noqa: E402
from vitsearch import __version__  # noqa: E402
from vitsearch.latency import profile, validate  # noqa: E402
from vitsearch.latency.validate import measured_headroom  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="digits")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--configs", type=int, default=30)
    ap.add_argument("--results", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="vitsearch-promise-"))
    started, loads = time.perf_counter(), [os.getloadavg()[0]]
    try:
        table = profile("cpu", model=args.model, threads=args.threads, tables=folder, progress=False)
        loads.append(os.getloadavg()[0])
        validate(table, args.configs, seed=0, tables=str(folder), progress=False)
        headroom = measured_headroom(table.path)
        loads.append(os.getloadavg()[0])
        held_out = validate(table, args.configs, seed=1, tables=str(folder), progress=False).rows
        loads.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    errors = [100 * (r["predicted_ms"] / r["measured_at_table_speed_ms"] - 1) for r in held_out]
    kept = sum(r["predicted_ms"] * (1 + headroom.fraction) >= r["measured_at_table_speed_ms"] for r in held_out)
    summary = {"model": args.model, "threads": args.threads, "configs": len(held_out),
               "median_abs_error_pct": statistics.median(abs(e) for e in errors),
               "median_error_pct": statistics.median(errors), "headroom_pct": 100 * headroom.fraction,
               "within_budget_at_limit": kept / len(held_out), "load": [round(x, 2) for x in loads],
               "minutes": round((time.perf_counter() - started) / 60, 1)}
    text = (f"`.venv/bin/python benchmarks/latency_promise.py --model {args.model} --threads {args.threads} --configs "
            f"{args.configs}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, vitsearch "
            f"{__version__}, 1-min load average {' -> '.join(f'{x:.2f}' for x in loads)} (profile, validation, "
            f"held-out), {summary['minutes']} min.\n\n"
            f"Held-out models ({len(held_out)}, seed 1): median |error| {summary['median_abs_error_pct']:.1f}% at the "
            f"table's speed (signed {summary['median_error_pct']:+.1f}%; target <= 3%). Headroom from the validation "
            f"(seed 0): {summary['headroom_pct']:.1f}%; {kept} of {len(held_out)} held-out models would measure within "
            f"the budget had a search picked them at its limit.\n")
    print(text)
    if args.results:
        write_section(f"latency_promise_{args.model}", f"## The latency promise on {args.model} (issue 25 item 6)\n\n"
                      + text)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
