"""Benchmark: how well a latency table predicts whole pruned ViTs on this machine (issue 3).

Profiles the full table for DeiT-S geometry (random weights) at batch 1 with onnxruntime on the local CPU,
then measures at least 30 random SPViT and Evo-ViT configs end to end and compares them with the table's
prediction. Targets: profile <= 5 min; median |error| <= 5%, >= 90% of configs within 10%, Kendall tau >= 0.85.
Then measures the same models a second time: how well two measurements agree is the floor under any
prediction's error on this machine. Also reports what token selection (SPViT selectors with packaging, Evo-ViT
stage bookkeeping and its class-attention recording) costs in a pruned model.

The machine is shared: before each phase the script waits (up to --wait seconds) for the 1-minute load
average to drop below --quiet-load, and records the load it actually ran under.

    .venv/bin/python benchmarks/latency_prediction.py [--configs 30] [--threads 1] [--tables DIR]

One intra-op thread by default. The runner times each graph with one live session and intra-op spinning off
(``vitsearch/latency/runner.py``), so no other session's threads compete at any count; but on two cores shared
with other processes, two threads still stall whenever anything else runs on either core, while one thread
leaves a core to everything else (RESULTS.md, issues 3 and 18).

Writes its section of benchmarks/RESULTS.md (replacing an earlier one), prints a summary and a last JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import wait_for_quiet, write_section  # noqa: E402
from vitsearch import __version__  # noqa: E402
from vitsearch.latency import Point, Predictor, profile, validate  # noqa: E402
from vitsearch.stats import summarise  # noqa: E402

TARGETS = {"profile_seconds": 300.0, "median_abs_error_pct": 5.0, "within_10pct": 0.90, "kendall_tau": 0.85}
# Issue 29: a table of another precision meets the fp32 table's measured quality on this CPU (RESULTS.md claim-latency-quiet).
PRECISION_TARGETS = {"median_abs_error_pct": 3.0, "within_10pct": 0.95, "kendall_tau": 0.9}
logger = logging.getLogger("benchmark")


def recording_ms(predictor: Predictor, parts) -> float:
    """Extra cost of Evo-ViT's class-attention recording: each recording block minus the same block without."""
    extra = 0.0
    for p, ms in parts:
        if p.kind == "evo_block_cls":
            extra += ms - predictor.component(Point("evo_block", p.n, p.k))
        elif p.kind == "block_cls":
            extra += ms - predictor.component(Point("block", p.n))
    return extra


def paired_check(model_name: str, configs: list[str], threads: int, folder: Path) -> dict:
    """Additivity measured within one run: for each config, the whole model and the very component graphs the
    table sums, timed in one runner call (interleaved passes). Load on a shared machine
    drifts by 2x within minutes; timed together, whole and parts see the same load, so this measures the
    error of summing components itself, apart from the drift between profiling and validating."""
    import collections

    import torch

    from vitsearch.export import export_onnx
    from vitsearch.latency import artefacts as art
    from vitsearch.latency.components import component_graphs, components_of
    from vitsearch.latency.devices import Artefact, MeasureSettings, open_device
    from vitsearch.models import create_model, geometry
    from vitsearch.pruning import apply

    torch.manual_seed(0)
    net = create_model(model_name)
    g = geometry(net)
    graphs = component_graphs(net)
    device = open_device("cpu")
    settings = MeasureSettings(threads=threads, warmup=2, min_repeats=5, max_repeats=30, max_seconds=4.0)
    x = torch.randn(1, g.in_chans, *g.img_size)
    templates: dict = {}
    out = []
    for i, config in enumerate(configs):
        for f in folder.iterdir():
            if f.suffix == ".onnx" and not f.stem.endswith("template"):
                f.unlink()
        apply(net, config)
        uses = collections.Counter(components_of(config, g))
        arts = [Artefact("whole", onnx=export_onnx(net, (x,), folder / "whole.onnx", check=False))]
        for p in uses:
            if p.kind not in templates:
                path = art.export_kind(graphs[p.kind], p, folder)
                templates[p.kind] = art.load_template(path.rename(folder / f"{p.kind}.template.onnx"))
            name = f"{p.kind}-{p.n}-{p.k}"
            spec_path = art.specialise(templates[p.kind], [t.shape for t in graphs[p.kind].example(p)],
                                       folder / f"{name}.onnx")
            arts.append(Artefact(name, onnx=spec_path, files=tuple(folder.glob(f"{p.kind}.weights"))))
        runs = {e["name"]: e["median_ms"] for e in device.measure(arts, settings) if e["event"] == "result"}
        overhead = runs["overhead-%d-0" % g.num_tokens]
        total = overhead + sum(c * (runs[f"{p.kind}-{p.n}-{p.k}"] - overhead) / graphs[p.kind].steps
                               for p, c in uses.items() if p.kind != "overhead")
        out.append({"config": config, "sum_ms": total, "whole_ms": runs["whole"]})
        logger.info("paired %d/%d %s: parts %.1f ms, whole %.1f ms", i + 1, len(configs), config,
                    out[-1]["sum_ms"], out[-1]["whole_ms"])
    return {"rows": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--configs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                    help="precision of the table and of the measured models (issue 29); its own RESULTS section")
    ap.add_argument("--tables", type=Path, help="keep the table here (default: a temporary folder)")
    ap.add_argument("--quiet-load", type=float, default=1.0, help="wait for a 1-min load average below this")
    ap.add_argument("--wait", type=float, default=900, help="longest wait for a quiet machine, seconds")
    ap.add_argument("--paired", type=int, default=10, help="configs for the within-one-run additivity check")
    ap.add_argument("--no-repeat", action="store_true",
                    help="skip measuring the validation's models a second time (the machine's noise floor)")
    ap.add_argument("--no-results", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = ap.parse_args()
    targets = TARGETS if args.precision == "fp32" else {**TARGETS, **PRECISION_TARGETS}
    section = "latency_prediction" + ("" if args.precision == "fp32" else f"_{args.precision}")
    if args.precision != "fp32" and args.paired:
        logger.warning("the additivity check times fp32 component graphs only: skipped for %s", args.precision)
        args.paired = 0
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    if args.configs < 30:
        logger.warning("the issue's targets are stated over at least 30 configs; running %d", args.configs)
    tables = args.tables or Path(tempfile.mkdtemp(prefix="vitsearch-bench-"))
    # Measurement hygiene on a shared machine: the highest CPU priority we may take (children inherit it).
    # It wins CPU time from other processes, not cache or memory bandwidth, so the load is recorded too.
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -20)
    except PermissionError:
        logger.warning("cannot raise the CPU priority (not root): other processes may inflate the timings")
    niceness = os.getpriority(os.PRIO_PROCESS, 0)

    load_profile = wait_for_quiet(args.quiet_load, args.wait)
    t0 = time.perf_counter()
    table = profile("cpu", model=args.model, threads=args.threads, tables=tables, restart=True, progress=False,
                    precision=args.precision)
    profile_seconds = time.perf_counter() - t0
    load_after_profile = os.getloadavg()[0]

    load_validate = wait_for_quiet(args.quiet_load, args.wait)
    t0 = time.perf_counter()
    result = validate(table, args.configs, seed=args.seed, tables=str(tables), progress=False)
    validate_seconds = time.perf_counter() - t0
    load_after_validate = os.getloadavg()[0]
    scatter = result.paths["png"].read_bytes()  # a second validation below writes over the file
    raw = result.summary
    s = raw["drift_corrected"]  # the machine's own speed change since profiling taken out (latency/reference.py)

    # The noise floor: the very same models measured again, minutes later. No table can predict a measurement
    # better than a second measurement of the same model agrees with the first.
    repeat = None
    if not args.no_repeat:
        again = {r["config"]: r for r in validate(table, args.configs, seed=args.seed, tables=str(tables),
                                                   progress=False).rows}
        firsts = [r for r in result.rows if r["config"] in again]
        repeat = {"as measured": summarise([r["measured_ms"] for r in firsts],
                                           [again[r["config"]]["measured_ms"] for r in firsts]),
                  "at the table's speed": summarise([r["measured_at_table_speed_ms"] for r in firsts],
                                                    [again[r["config"]]["measured_at_table_speed_ms"] for r in firsts])}

    paired_rows = []
    if args.paired:
        with tempfile.TemporaryDirectory(prefix="vitsearch-paired-") as tmp:
            paired_rows = paired_check(args.model, [r["config"] for r in result.rows[:args.paired]], args.threads,
                                       Path(tmp))["rows"]
    paired = summarise([r["sum_ms"] for r in paired_rows], [r["whole_ms"] for r in paired_rows]) if paired_rows else None

    predictor = Predictor(table)
    shares: dict[str, list[float]] = defaultdict(list)
    rec_shares: list[float] = []
    for row in result.rows:
        pred = predictor.predict(row["config"])
        shares[row["method"]].append(pred.selection_ms / pred.total_ms)
        if row["method"] == "evovit":
            rec_shares.append(recording_ms(predictor, pred.parts) / pred.total_ms)
    dense = predictor.predict("none").total_ms
    overhead = next(r.median_ms for p, r in table.rows.items() if p.kind == "overhead")
    rt = table.meta["runtime"]

    checks = {"profile_seconds": profile_seconds <= targets["profile_seconds"],
              "median_abs_error_pct": s["median_abs_error_pct"] <= targets["median_abs_error_pct"],
              "within_10pct": s["within_10pct"] >= targets["within_10pct"],
              "kendall_tau": s["kendall_tau"] >= targets["kendall_tau"]}
    mark = {True: "met", False: "**missed**"}
    for r in result.rows:
        r["corrected_error_pct"] = 100 * (r["predicted_ms"] - r["measured_at_table_speed_ms"]) / r[
            "measured_at_table_speed_ms"]
    worst = sorted(result.rows, key=lambda r: -abs(r["corrected_error_pct"]))[:3]
    refs = [r["reference_ms"] for r in result.rows]
    lines = [
        "## Latency prediction from per-device tables (issue 3)" if args.precision == "fp32" else
        f"## Latency prediction from an {args.precision} table (issue 29)",
        "",
        f"`{' '.join(['.venv/bin/python', 'benchmarks/latency_prediction.py', *sys.argv[1:]])}` "
        f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.model} (random weights), {args.precision}, batch 1, "
        f"onnxruntime {rt.get('version')} CPU, {args.threads} intra-op threads, {os.cpu_count()} cores "
        f"({rt.get('processor') or rt.get('machine')}), vitsearch {__version__}.",
        f"The machine is shared (niceness {niceness}): 1-min load average {load_profile:.2f} -> {load_after_profile:.2f} while profiling, "
        f"{load_validate:.2f} -> {load_after_validate:.2f} while validating.",
        "",
        "Every runner call also times the drift reference (the dense block chain), so every measurement is given "
        "as measured and at the table's speed (scaled by the table's reference over the one timed in its call, "
        f"`vitsearch/latency/reference.py`). The reference took {predictor.reference_ms:.2f} ms at the table's "
        f"speed and {min(refs):.2f}-{max(refs):.2f} ms in the validation's calls. Targets are judged at the table's "
        "speed: that asks whether the table predicts the whole model on the machine it was profiled on, which is "
        "what a table can know; the as-measured column adds how far this shared machine's speed moved since.",
        "",
        "| metric | at the table's speed | as measured | target | |",
        "|---|---|---|---|---|",
        f"| full table profile ({len(table.rows)} components) | {profile_seconds:.0f} s | | <= 300 s | "
        f"{mark[checks['profile_seconds']]} |",
        f"| median abs error ({s['count']} configs of every method) | {s['median_abs_error_pct']:.2f}% | "
        f"{raw['median_abs_error_pct']:.2f}% | <= {targets['median_abs_error_pct']:g}% | {mark[checks['median_abs_error_pct']]} |",
        f"| configs within 10% | {100 * s['within_10pct']:.0f}% | {100 * raw['within_10pct']:.0f}% | >= {100 * targets['within_10pct']:.0f}% | "
        f"{mark[checks['within_10pct']]} |",
        f"| Kendall tau (predicted vs measured) | {s['kendall_tau']:.3f} | {raw['kendall_tau']:.3f} | >= {targets['kendall_tau']:g} | "
        f"{mark[checks['kendall_tau']]} |",
        f"| p95 abs error | {s['p95_abs_error_pct']:.2f}% | {raw['p95_abs_error_pct']:.2f}% | | |",
        f"| mean signed error (bias) | {s['mean_error_pct']:+.2f}% | {raw['mean_error_pct']:+.2f}% | | |",
        "",
        ("Noise floor: the same models measured a second time, minutes later, against the first measurement: "
         + "; ".join(f"{k}: median abs difference {v['median_abs_error_pct']:.2f}%, {100 * v['within_10pct']:.0f}% "
                     f"within 10%, Kendall tau {v['kendall_tau']:.3f}" for k, v in repeat.items())
         + ". A prediction cannot agree with a measurement better than two measurements agree." if repeat else ""),
        "",
        ("Additivity within one run (whole model and the component graphs the table sums for it, timed back to "
         f"back in one runner call, {paired['count']} configs): median abs error {paired['median_abs_error_pct']:.2f}%, "
         f"{100 * paired['within_10pct']:.0f}% within 10%, Kendall tau {paired['kendall_tau']:.3f}, bias "
         f"{paired['mean_error_pct']:+.2f}%: the error of summing components, with no time between them." if paired else ""),
        "",
        f"Measured latencies ranged {min(r['measured_ms'] for r in result.rows):.1f}-"
        f"{max(r['measured_ms'] for r in result.rows):.1f} ms (dense model predicted at {dense:.1f} ms); "
        f"validation took {validate_seconds:.0f} s. Largest errors: "
        + ", ".join(f"`{r['config']}` {r['corrected_error_pct']:+.1f}%" for r in worst) + " (at the table's speed).",
        f"The per-call runtime overhead (an Identity graph) was {1000 * overhead:.1f} µs; it is subtracted from "
        "every component and counted once per model.",
        "",
        "**What token selection costs** (share of the predicted latency of the pruned models above):",
        "; ".join(f"{m}: median {100 * np.median(v):.1f}% (range {100 * min(v):.1f}-{100 * max(v):.1f}%)"
                  for m, v in sorted(shares.items()))
        + (f"; Evo-ViT also {100 * np.median(rec_shares):.1f}% for recording the class-token attention that ranks "
           "the tokens." if rec_shares else "."),
        "",
        f"Scatter plot: `{Path('benchmarks') / f'{section}_scatter.png'}`.",
    ]
    if not all(checks.values()):
        lines += ["", (
            f"**Targets missed.** This run shared the 2 cores with other processes (load average up to "
            f"{max(load_profile, load_after_profile, load_validate, load_after_validate):.1f}). The drift reference "
            "takes out speed changes between calls, not those within one: a call's graphs are timed in three "
            "interleaved passes, but a burst of load during one graph's turn still inflates it alone.")]
    text = "\n".join(lines)
    if not args.no_results:
        (ROOT / "benchmarks" / f"{section}_scatter.png").write_bytes(scatter)
        write_section(section, text)
    print(text)
    record = {"benchmark": section, "model": args.model, "precision": args.precision, "threads": args.threads,
              "profile_seconds": round(profile_seconds, 1), "components": len(table.rows),
              "configs": s["count"], "median_abs_error_pct": round(s["median_abs_error_pct"], 3),
              "p95_abs_error_pct": round(s["p95_abs_error_pct"], 3), "within_10pct": s["within_10pct"],
              "kendall_tau": round(s["kendall_tau"], 4), "mean_error_pct": round(s["mean_error_pct"], 3),
              "selection_share_median": {m: round(float(np.median(v)), 4) for m, v in shares.items()},
              "evovit_recording_share_median": round(float(np.median(rec_shares)), 4) if rec_shares else None,
              "load": [round(load_profile, 2), round(load_after_profile, 2), round(load_validate, 2),
                       round(load_after_validate, 2)],
              "as_measured": {k: round(raw[k], 4) for k in s},
              "reference_ms": {"table": predictor.reference_ms, "validation_calls": sorted(set(refs))},
              "paired": {k: round(v, 4) for k, v in paired.items()} if paired else None,
              "repeat": {k: {m: round(x, 4) for m, x in v.items()} for k, v in repeat.items()} if repeat else None,
              "targets_met": checks}
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
