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


@pytest.mark.parametrize("column, value, message", [
    ("median_ms", "nan", "median_ms is 'nan', not a finite number"),
    ("median_ms", "inf", "median_ms is 'inf', not a finite number"),
    ("p90_ms", "-0.5", "p90_ms is -0.5, not a finite latency >= 0"),
    ("median_ms", "fast", "median_ms is 'fast', not a number"),
    ("n", "inf", "n is 'inf', not a finite number"),
    ("p10_ms", "nan", "p10_ms is 'nan', not a finite number"),
    ("k", "1.5", "k is '1.5', not a whole number"),
    ("repeats", "2.5", "repeats is '2.5', not a whole number"),
    ("stable", "yes", "stable is 'yes', not 1, 0 or empty"),
    ("ref_ms", "0", "ref_ms is 0.0, not a drift reference's median, > 0"),
    ("ref_ms", "inf", "ref_ms is 'inf', not a finite number"),
])
def test_a_bad_value_is_refused_naming_file_line_and_fix(tmp_path, geom, column, value, message):
    def edit(rows):
        rows[1][column] = value
        return list(T.COLUMNS)

    path = _write(tmp_path, geom, edit)
    with pytest.raises(VitsearchError) as e:
        T.load(path)
    assert f"latency table {path} line 3: {message}" in str(e.value)
    assert "delete that line (vitsearch profile re-measures deleted rows)" in str(e.value)


def test_a_duplicated_row_is_refused_naming_both_lines(tmp_path, geom):
    def edit(rows):
        rows.append({**rows[1], "median_ms": "43"})
        return list(T.COLUMNS)

    with pytest.raises(VitsearchError, match=r"line 5: block\(n=17\) was already measured on line 3; keep one"):
        T.load(_write(tmp_path, geom, edit))


def test_a_table_that_is_not_utf8_is_refused_naming_the_line(tmp_path, geom):
    path = tmp_path / "t.csv"
    T.save(path, _meta(geom), _rows())
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"block", b"bl\xf6ck")  # Latin-1, as an editor might save it
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(VitsearchError, match=f"latency table {path} line 3 is not UTF-8 text"):
        T.load(path)


def test_rows_refuse_what_no_measurement_gives():
    """Writers cannot put a non-finite, negative or zero-reference value into a table either."""
    with pytest.raises(ValueError, match="median_ms is inf"):
        T.Row(Point("block", 17), 1, math.inf, 1.0, 0.1, 10)
    with pytest.raises(ValueError, match="ref_ms is 0"):
        T.Row(Point("block", 17), 1, 1.0, 1.0, 0.1, 10, ref_ms=0.0)
    with pytest.raises(ValueError, match="repeats is 0"):
        T.Row(Point("block", 17), 1, 1.0, 1.0, 0.1, 0)


def test_metadata_with_a_non_finite_number_is_never_written(tmp_path, geom):
    path = tmp_path / "t.csv"
    with pytest.raises(ValueError, match="not JSON compliant"):
        T.write_meta(path, {**_meta(geom), "profile_seconds": math.inf})
    assert not T.meta_path(path).exists()


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
    with T.RowWriter(path):
        pass
    assert not path.exists(), "a writer that wrote no row leaves no table"
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
