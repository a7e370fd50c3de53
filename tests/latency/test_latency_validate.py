"""Validation: whole pruned models measured end to end against the table's prediction, saved beside it."""
from __future__ import annotations

import json

import pytest

from vitsearch.latency import random_configs, validate
from vitsearch.latency.predict import Predictor
from vitsearch.stats import kendall_tau, scatter_info, summarise
from vitsearch.models import create_model, geometry

from .conftest import TINY_KWARGS


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def test_summary_metrics():
    s = summarise([10, 21, 30, 50], [10, 20, 33, 40])
    assert s["median_abs_error_pct"] == pytest.approx((5 + 100 / 11) / 2)
    assert s["within_10pct"] == 0.75 and s["kendall_tau"] == pytest.approx(1.0) and s["count"] == 4


def test_random_configs_are_distinct_and_cover_both_methods():
    g = geometry(create_model("deit_small_patch16_224"))
    configs = random_configs(30, g, seed=3)
    assert len({str(c) for c in configs}) == 30
    assert {c.method for c in configs} == {"spvit", "evovit", "tome", "evit"}
    assert all(0 not in c.keep and max(c.keep) < g.depth for c in configs)
    assert [str(c) for c in random_configs(30, g, seed=3)] == [str(c) for c in configs]


def test_validate_saves_results_beside_the_table(tiny_table):
    result = validate(tiny_table, 4, progress=False, model_kwargs=TINY_KWARGS,
                      tables=str(tiny_table.path.parent.parent))
    assert len(result.rows) == 4 and {r["method"] for r in result.rows} == {"spvit", "evovit", "tome", "evit"}
    assert all(r["measured_ms"] > 0 and r["predicted_ms"] > 0 for r in result.rows)
    for kind in ("csv", "json", "png"):
        assert result.paths[kind].exists() and result.paths[kind].parent == tiny_table.path.parent
    saved = json.loads(result.paths["json"].read_text())
    for key in ("median_abs_error_pct", "p95_abs_error_pct", "kendall_tau", "within_10pct", "runtime", "geometry"):
        assert key in saved
    info = scatter_info(result.rows)
    assert set(info["series"]) == {"spvit", "evovit", "tome", "evit"} and info["lo"] <= info["hi"]
    # each model is also given at the table's speed, through the reference timed in its own call
    table_ref = Predictor(tiny_table).reference_ms
    for r in result.rows:
        assert r["measured_at_table_speed_ms"] == pytest.approx(r["measured_ms"] * table_ref / r["reference_ms"])
    assert saved["reference_ms"] == table_ref and saved["drift_corrected"]["count"] == 4
