"""Synthetic study folders for the report tests: the files ``vitsearch search`` writes, with the fields of
``Candidate.to_dict``, small enough to read at a glance."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any, NoReturn, Sequence

import pytest

from vitsearch.pruning import PruneConfig, token_schedule
from vitsearch.pareto import pareto_front

DEPTH, PATCHES = 8, 64


def candidate(config: str, predicted_ms: float, accuracy: float | None, *, kind: str = "search",
              trial: int | None = None, budget_ms: float = 1.6, gmacs: float | None = None) -> dict[str, Any]:
    c = PruneConfig.parse(config)
    tokens = token_schedule(c, depth=DEPTH, num_patches=PATCHES).block_tokens
    feasible = predicted_ms <= budget_ms
    return {"config": str(c), "method": c.method, "blocks": list(c.keep), "keep": list(c.keep.values()), "kind": kind,
            "predicted_ms": predicted_ms, "accuracy": accuracy,
            "gmacs": gmacs if gmacs is not None or accuracy is None else round(sum(tokens) * 1e-3, 6),
            "train_seconds": 1.0, "trial": trial, "feasible": feasible,
            "status": "trained" if accuracy is not None else "rejected before training: over budget",
            "block_tokens": list(tokens), "selection_ms": 0.05, "checkpoint": None}


# (config, predicted ms, accuracy): three on the front, one dominated, two rejected over the 1.6 ms budget.
TRIALS = [("spvit:3=0.5", 1.20, 0.80), ("spvit:3=0.7,6=0.7", 1.40, 0.88), ("evovit:4=0.8", 1.55, 0.90),
          ("evovit:3=0.6", 1.50, 0.85), ("spvit:6=0.9", 1.90, None), ("evovit:7=0.95", 2.10, None)]


def write_study(reports: Path, name: str, *, trials: Sequence[tuple[str, float, float | None]] = TRIALS,
                metric: str = "top1", device: str = "cpu", budget_ms: float = 1.6, validation: bool = True,
                with_results: bool = True, finalized: Sequence[dict[str, Any]] = (), precision: str = "fp32") -> Path:
    folder = reports / name
    folder.mkdir(parents=True)
    table = reports.parent / "tables" / device / f"d64-h4-l8-m4-p4-i32-c1-b1-{precision}.csv"
    meta = {
        "study": name, "settings": {"budget": "80%", "trials": len(trials), "sampler": "tpe", "seed": 0,
                                    "storage": "postgresql://user:secret@db.example:5432/vs",
                                    "train": {"steps": 5, "batch_size": 64}},
        "model": "digits", "checkpoint": "/cache/model.pt", "sha256": "ab" * 32, "dataset": "digits",
        "dataset_description": "digits: 1438 train / 359 val", "device": device, "batch": 1,
        "latency_table": str(table),
        "latency_table_meta": {"device": {"name": device, "description": "a test CPU", "runtime": "onnxruntime"},
                               "runtime": {"runtime": "onnxruntime", "version": "1.0", "cpus": 2, "host": "vm"},
                               "threads": 0, "batch": 1, "precision": precision, "date": "2026-01-01",
                               "geometry": {"key": "d64-h4-l8-m4-p4-i32-c1", "depth": DEPTH, "num_patches": PATCHES,
                                            "num_prefix_tokens": 1}},
        "budget": "80%", "budget_ms": budget_ms, "unpruned_ms": 2.0, "fastest": {"config": "evovit:3=0.3", "ms": 1.1},
        "space": {"methods": ["spvit", "evovit"], "blocks": [3, 4, 5, 6, 7], "max_selectors": 3, "keep_min": 0.3,
                  "keep_max": 0.95, "keep_step": 0.05, "baseline_blocks": [3, 5, 7], "baseline_keep": [0.7]},
        "strategy": "brief", "versions": {"vitsearch": "0.1.0", "torch": "2.x"},
        "objectives": ["accuracy (maximise)", "predicted latency ms (minimise)"], "metric": metric,
        "created": "2026-01-01T00:00:00",
    }
    (folder / "study.json").write_text(json.dumps(meta))
    if with_results:
        records = [candidate(c, ms, acc, trial=i, budget_ms=budget_ms) for i, (c, ms, acc) in enumerate(trials)]
        trained = [r for r in records if r["feasible"] and r["accuracy"] is not None]
        front = [trained[i] for i in pareto_front([(r["accuracy"], r["predicted_ms"]) for r in trained])]
        baselines = [candidate("none", 2.0, 0.91, kind="unpruned", budget_ms=budget_ms),
                     candidate("spvit:3=0.7,5=0.7,7=0.7", 1.45, 0.84, kind="uniform", budget_ms=budget_ms),
                     candidate("evovit:3=0.7,5=0.7,7=0.7", 1.30, 0.89, kind="uniform", budget_ms=budget_ms)]
        for file, rows in (("trials", records), ("front", front), ("baselines", baselines)):
            (folder / f"{file}.json").write_text(json.dumps(rows))
    if finalized:
        (folder / "finalized.json").write_text(json.dumps(list(finalized)))
    if validation:
        write_validation(table)
    return folder


def write_validation(table: Path) -> None:
    """The files ``vitsearch profile --validate`` writes beside a table (one config matches a trial)."""
    table.parent.mkdir(parents=True, exist_ok=True)
    stem = table.with_suffix("")
    rows = [{"config": "spvit:3=0.7,6=0.7", "method": "spvit", "predicted_ms": 1.40, "measured_ms": 1.47,
             "reference_ms": 1.05, "measured_at_table_speed_ms": 1.40},
            {"config": "evovit:2=0.41", "method": "evovit", "predicted_ms": 1.62, "measured_ms": 1.55,
             "reference_ms": 0.95, "measured_at_table_speed_ms": 1.63},
            {"config": "spvit:1=0.33,5=0.8", "method": "spvit", "predicted_ms": 1.10, "measured_ms": 1.18,
             "reference_ms": 1.05, "measured_at_table_speed_ms": 1.12}]
    with open(stem.with_name(stem.name + ".validation.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = {"count": 3, "median_abs_error_pct": 5.0, "p95_abs_error_pct": 7.0, "within_10pct": 1.0,
               "mean_error_pct": -1.2, "kendall_tau": 1.0, "device": {"name": "cpu"},
               "reference_ms": 1.0,
               "drift_corrected": {"count": 3, "median_abs_error_pct": 1.5, "p95_abs_error_pct": 3.6,
                                   "within_10pct": 1.0, "mean_error_pct": -1.7, "kendall_tau": 1.0},
               "date": "2026-01-01"}
    stem.with_name(stem.name + ".validation.json").write_text(json.dumps(summary))


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    return tmp_path / "reports"


@pytest.fixture
def study_folder(reports: Path) -> Path:
    return write_study(reports, "digits-cpu-80pct-brief")


def require_chromium() -> str:
    """Debian's chromium; skips with a reason when it is missing, but fails in CI, where .ci/run installs it."""
    found = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    return found or missing("chromium is missing: apt-get install chromium")


def missing(message: str) -> NoReturn:
    """A tool a test needs is not installed: skip with ``message`` here, fail in CI (where .ci/run installs it)."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
