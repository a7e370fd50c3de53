"""Latency tables on disk: round trip, and every kind of bad table refused with a message that says why."""
from __future__ import annotations

import csv
import json
import math

import pytest

from vitsearch.errors import VitsearchError
from vitsearch.latency import table as T
from vitsearch.latency.components import Point
from vitsearch.models import create_model, geometry

from .conftest import TINY_KWARGS, TINY_MODEL


@pytest.fixture(scope="module")
def geom():
    return geometry(create_model(TINY_MODEL, **TINY_KWARGS))


def _meta(geom, batch=1):
    return {"format": T.FORMAT, "device": {"name": "cpu"}, "geometry": geom.to_dict(), "batch": batch,
            "runtime": {"runtime": "onnxruntime", "version": "x"}, "threads": 1, "precision": "fp32"}


def _rows():
    return [T.Row(Point("overhead", 17), 1, 0.01, 0.02, 0.005, 10, p10_ms=0.008, raw_median_ms=0.01, stable=True),
            T.Row(Point("block", 17), 2, 0.5, 0.6, 0.1, 10, p10_ms=0.45, raw_median_ms=1.01, stable=True),
            T.Row(Point("spvit_select", 16, 8), 1, 0.05, 0.06, 0.01, 10)]


def test_round_trip(tmp_path, geom):
    path = T.table_path(tmp_path, "ssh://pi@board:2222", geom, 1)
    assert path.parent.name == "ssh-pi@board-2222" and path.name == f"{geom.key}-b1-fp32.csv"
    T.save(path, _meta(geom), _rows())
    loaded = T.load(path, geometry=geom, batch=1)
    assert loaded.rows == {r.point: r for r in _rows()}
    assert loaded.meta == _meta(geom) and loaded.geometry == geom and loaded.batch == 1


def _write(tmp_path, geom, edit):
    path = tmp_path / "t.csv"
    T.save(path, _meta(geom), _rows())
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    fields = edit(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows({k: r[k] for k in fields} for r in rows)
    return path


def test_missing_column_is_refused(tmp_path, geom):
    path = _write(tmp_path, geom, lambda rows: [c for c in T.COLUMNS if c != "p90_ms"])
    with pytest.raises(VitsearchError, match="lacks column.*p90_ms"):
        T.load(path)


@pytest.mark.parametrize("value, message", [("nan", "NaN"), ("-0.5", "negative"), ("fast", "not a number")])
def test_bad_latency_is_refused(tmp_path, geom, value, message):
    def edit(rows):
        rows[1]["median_ms"] = value
        return list(T.COLUMNS)

    with pytest.raises(VitsearchError, match=f"line 3: median_ms .*{message}"):
        T.load(_write(tmp_path, geom, edit))


def test_unknown_kind_is_refused(tmp_path, geom):
    def edit(rows):
        rows[0]["kind"] = "conv"
        return list(T.COLUMNS)

    with pytest.raises(VitsearchError, match="unknown component kind 'conv'"):
        T.load(_write(tmp_path, geom, edit))


def test_other_geometry_is_refused_naming_the_field(tmp_path, geom):
    path = tmp_path / "t.csv"
    T.save(path, _meta(geom), _rows())
    other = geometry(create_model(TINY_MODEL, **{**TINY_KWARGS, "depth": 3}))
    with pytest.raises(VitsearchError, match="another model geometry.*depth 2 vs the model's 3"):
        T.load(path, geometry=other)


def test_other_batch_is_refused(tmp_path, geom):
    path = tmp_path / "t.csv"
    T.save(path, _meta(geom, batch=4), _rows())
    with pytest.raises(VitsearchError, match="measured at batch 4, not batch 1"):
        T.load(path, geometry=geom, batch=1)


def test_missing_table_or_metadata(tmp_path, geom):
    with pytest.raises(VitsearchError, match="no latency table at"):
        T.load(tmp_path / "none.csv")
    path = tmp_path / "t.csv"
    T.save(path, _meta(geom), _rows())
    T.meta_path(path).unlink()
    with pytest.raises(VitsearchError, match="no metadata file"):
        T.load(path)
    T.meta_path(path).write_text(json.dumps({"device": {"name": "cpu"}}))
    with pytest.raises(VitsearchError, match="lacks 'geometry'"):
        T.load(path)


def test_writer_drops_a_line_cut_short(tmp_path):
    path = tmp_path / "t.csv"
    with T.RowWriter(path) as w:
        for r in _rows()[:2]:
            w.append(r)
    with open(path, "a") as f:
        f.write("spvit_select,16,8,1,0.0")  # what an interruption mid-write leaves
    with T.RowWriter(path) as w:
        assert set(w.rows) == {r.point for r in _rows()[:2]}
        w.append(_rows()[2])
    assert T.read_rows(path) == {r.point: r for r in _rows()}
    assert not math.isnan(T.read_rows(path)[Point("block", 17)].raw_median_ms)
