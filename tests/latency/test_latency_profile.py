"""Profiling on the local onnxruntime device: a complete table with provenance, and resume after a kill."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from vitsearch.errors import VitsearchError
from vitsearch.latency import grid, profile
from vitsearch.latency.components import Point
from vitsearch.latency import table as T
from vitsearch.models import create_model, geometry

from .conftest import QUICK, TINY_GRID, TINY_KWARGS, TINY_MODEL

REPO = Path(__file__).resolve().parents[2]


def test_profile_writes_a_complete_table_with_provenance(tiny_table):
    assert set(tiny_table.rows) == set(grid(tiny_table.geometry, TINY_GRID))
    meta = tiny_table.meta
    assert meta["complete"] is True and meta["threads"] == 1 and meta["batch"] == 1 and meta["precision"] == "fp32"
    assert meta["runtime"]["runtime"] == "onnxruntime" and meta["runtime"]["version"]
    assert meta["device"]["name"] == "cpu" and meta["geometry"]["key"] == tiny_table.geometry.key
    for key in ("date", "vitsearch_version", "settings", "grid", "model"):
        assert key in meta
    assert all(r.median_ms >= 0 and r.repeats > 0 for r in tiny_table.rows.values())
    blocks = {p.n: r for p, r in tiny_table.rows.items() if p.kind == "block"}
    assert all(r.steps == tiny_table.geometry.depth for r in blocks.values())
    overhead = next(r for p, r in tiny_table.rows.items() if p.kind == "overhead")
    # every other row has the overhead taken out of each call before dividing by the steps
    for r in blocks.values():
        assert r.median_ms == pytest.approx(max(0.0, (r.raw_median_ms - overhead.raw_median_ms) / r.steps), rel=1e-4)


def test_every_row_carries_its_paired_drift_reference(tiny_table):
    """The reference (one block at every token) was timed beside every row's calls, so each row has its own;
    it is the same work as one step of the block chain at every token, plus the per-call overhead."""
    assert all(r.ref_ms > 0 for r in tiny_table.rows.values())
    g = tiny_table.geometry
    full = tiny_table.rows[Point("block", g.num_prefix_tokens + g.num_patches)]
    overhead = next(r for p, r in tiny_table.rows.items() if p.kind == "overhead")
    assert full.median_ms / 4 < full.ref_ms - overhead.raw_median_ms < 4 * full.median_ms
