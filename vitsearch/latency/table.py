"""Latency tables on disk: a CSV of per-component latencies and a JSON metadata file beside it.

``latency_tables/<device>/<geometry key>-b<batch>-<precision>.csv`` has one row per grid point:

=============  ==================================================================================
kind, n, k     the component (see :mod:`vitsearch.latency.components`) and its token counts
steps          steps one measured call ran (blocks in the chain); the latencies below are per step
median_ms      per-step median, the fixed per-call overhead (the ``overhead`` row) subtracted
p90_ms         per-step 90th percentile, overhead subtracted likewise
spread_ms      per-step p90 - p10 of the raw calls (p90 - min where the runtime reports no p10)
repeats        timed calls (after warm-up)
p10_ms         per-step 10th percentile, overhead subtracted (the min where the runtime reports no p10): on a
               shared machine it is far less inflated by other processes than the median
raw_median_ms  the median of one whole call as measured, before subtraction and division
stable         whether the median settled within the runner's tolerance
ref_ms         the drift reference's median in the call that measured this row (see
               :mod:`vitsearch.latency.reference`); the predictor scales the row by the table's reference over it
=============  ==================================================================================

The ``.json`` beside it records provenance: device, runtime and version, threads (the count measured with, also
for a profile asked for 0), spinning (the intra-op spinning policy: ``off``, ``on``, or why the device's runtime
could not set it; absent in tables from before the option, which spun), batch, precision, date,
vitsearch version, geometry, measurement settings and grid. A table is only ever applied to the geometry and
batch it was measured for: :func:`load` refuses anything else and says which field differs.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import VitsearchError
from ..files import write_text
from ..models import ModelGeometry
from .components import KINDS, Point
from .registry import folder_name

PRECISION = "fp32"
COLUMNS = ("kind", "n", "k", "steps", "median_ms", "p90_ms", "spread_ms", "repeats", "p10_ms", "raw_median_ms",
           "stable", "ref_ms")
REQUIRED = ("kind", "n", "k", "steps", "median_ms", "p90_ms", "spread_ms", "repeats")
LATENCIES = ("median_ms", "p90_ms", "p10_ms")  # statistics a prediction can be made from
FORMAT = 1
# Geometry fields a latency depends on: any difference refuses the table. num_classes only changes the head's
# last matmul, which is noise next to the blocks, so a fine-tuned head can use its base model's table.
GEOMETRY_FIELDS = ("embed_dim", "num_heads", "depth", "mlp_ratio", "patch_size", "img_size", "in_chans",
                   "num_prefix_tokens", "num_patches")


@dataclass(frozen=True)
class Row:
    point: Point
    steps: int
    median_ms: float
    p90_ms: float
    spread_ms: float
    repeats: int
    p10_ms: float = math.nan
    raw_median_ms: float = math.nan
    stable: bool | None = None
    ref_ms: float = math.nan

    def to_csv(self) -> dict[str, Any]:
        def opt(v: float) -> str:
            return "" if math.isnan(v) else f"{v:.6g}"

        return {"kind": self.point.kind, "n": self.point.n, "k": self.point.k, "steps": self.steps,
                "median_ms": f"{self.median_ms:.6g}", "p90_ms": f"{self.p90_ms:.6g}",
                "spread_ms": f"{self.spread_ms:.6g}", "repeats": self.repeats, "p10_ms": opt(self.p10_ms),
                "raw_median_ms": opt(self.raw_median_ms), "stable": "" if self.stable is None else int(self.stable),
                "ref_ms": opt(self.ref_ms)}


def table_path(tables: str | os.PathLike[str], device: str, geometry: ModelGeometry, batch: int,
               precision: str = PRECISION) -> Path:
    return Path(tables) / folder_name(device) / f"{geometry.key}-b{batch}-{precision}.csv"


def meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


@dataclass
class LatencyTable:
    path: Path
    meta: dict[str, Any]
    rows: dict[Point, Row] = field(default_factory=dict)

    @property
    def geometry(self) -> ModelGeometry:
        return ModelGeometry.from_dict(self.meta["geometry"])

    @property
    def batch(self) -> int:
        return int(self.meta["batch"])

    @property
    def device(self) -> str:
        return str(self.meta["device"]["name"])


def _parse_row(raw: Mapping[str, str], where: str) -> Row:
    def number(col: str, cast: type = float) -> Any:
        text = (raw.get(col) or "").strip()
        try:
            value = cast(float(text)) if cast is int else float(text)
        except ValueError:
            raise VitsearchError(f"{where}: {col} is {text!r}, not a number") from None
        if cast is float and math.isnan(value):
            raise VitsearchError(f"{where}: {col} is NaN: re-profile this component")
        if value < 0:
            raise VitsearchError(f"{where}: {col} is negative ({value:g}): re-profile this component")
        return value

    kind = (raw.get("kind") or "").strip()
    if kind not in KINDS:
        raise VitsearchError(f"{where}: unknown component kind {kind!r} (expected one of {', '.join(KINDS)})")
    stable = (raw.get("stable") or "").strip()
    optional = {c: number(c) if (raw.get(c) or "").strip() else math.nan
                for c in ("p10_ms", "raw_median_ms", "ref_ms")}
    return Row(Point(kind, number("n", int), number("k", int)), number("steps", int),
               number("median_ms"), number("p90_ms"), number("spread_ms"), number("repeats", int),
               optional["p10_ms"], optional["raw_median_ms"], bool(int(stable)) if stable else None,
               optional["ref_ms"])


def read_rows(path: Path) -> dict[Point, Row]:
    """Every row of a table CSV, validated: missing columns, NaN and negative latencies are refused."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise VitsearchError(f"latency table {path} lacks column(s) {', '.join(missing)}: it was not written by "
                                 "this vitsearch version or was edited; re-profile with vitsearch profile --restart")
        rows: dict[Point, Row] = {}
        for i, raw in enumerate(reader, start=2):
            row = _parse_row(raw, f"latency table {path} line {i}")
            rows[row.point] = row
    return rows


def check_meta(meta: Mapping[str, Any], path: Path, geometry: ModelGeometry | None, batch: int | None) -> None:
    """Refuse a table measured for another geometry or batch, naming the fields that differ."""
    for key in ("device", "geometry", "batch", "runtime", "threads"):
        if key not in meta:
            raise VitsearchError(f"latency table metadata {meta_path(path)} lacks {key!r}: re-profile")
    if batch is not None and int(meta["batch"]) != int(batch):
        raise VitsearchError(f"latency table {path} was measured at batch {meta['batch']}, not batch {batch}: "
                             f"profile batch {batch} (vitsearch profile --batch {batch})")
    if geometry is not None:
        have = meta["geometry"]
        want = geometry.to_dict()
        diff = [f"{f} {have.get(f)} vs the model's {want[f]}" for f in GEOMETRY_FIELDS if have.get(f) != want[f]]
        if diff:
            raise VitsearchError(f"latency table {path} was measured for another model geometry ({'; '.join(diff)}): "
                                 "profile this model (vitsearch profile --model NAME)")


def load(path: str | os.PathLike[str], *, geometry: ModelGeometry | None = None, batch: int | None = None) -> LatencyTable:
    """Read and validate a table and its metadata; with ``geometry``/``batch``, refuse a table made for others."""
    path = Path(path)
    if not path.is_file():
        raise VitsearchError(f"no latency table at {path}: run vitsearch profile for this device and model first")
    mpath = meta_path(path)
    if not mpath.is_file():
        raise VitsearchError(f"latency table {path} has no metadata file {mpath.name} beside it: re-profile")
    try:
        meta = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise VitsearchError(f"latency table metadata {mpath} is not valid JSON: {e}") from e
    check_meta(meta, path, geometry, batch)
    return LatencyTable(path, meta, read_rows(path))


class RowWriter:
    """Appends rows to a table CSV as they are measured, so an interrupted profile keeps them.

    A line cut short by an interruption is dropped (and the file rewritten without it) when the table is
    opened again to resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = self._recover() if path.exists() else {}
        fresh = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
        if fresh:
            self._writer.writeheader()
            self._file.flush()

    def _recover(self) -> dict[Point, Row]:
        with open(self.path, newline="") as f:
            lines = f.read().splitlines()
        if not lines:
            return {}
        header = next(csv.reader([lines[0]]))
        if tuple(header) != COLUMNS:
            raise VitsearchError(f"cannot resume {self.path}: its columns {header} are not {list(COLUMNS)}; "
                                 "start over with --restart")
        rows, good = {}, [lines[0]]
        for line in lines[1:]:
            values = next(csv.reader([line]), [])
            if len(values) != len(COLUMNS):
                continue
            try:
                row = _parse_row(dict(zip(COLUMNS, values)), str(self.path))
            except VitsearchError:
                continue
            rows[row.point] = row
            good.append(line)
        if len(good) != len(lines):
            with open(self.path, "w", newline="") as f:
                f.write("\n".join(good) + "\n")
        return rows

    def append(self, row: Row) -> None:
        self._writer.writerow(row.to_csv())
        self._file.flush()
        self.rows[row.point] = row

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_meta(path: Path, meta: Mapping[str, Any]) -> None:
    write_text(meta_path(path), json.dumps(meta, indent=2, sort_keys=True) + "\n")


def save(path: str | os.PathLike[str], meta: Mapping[str, Any], rows: Iterable[Row]) -> LatencyTable:
    """Write a whole table (used by tests and tools; profiling appends with :class:`RowWriter`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(r.to_csv())
    write_meta(path, meta)
    return LatencyTable(path, dict(meta), {r.point: r for r in rows})
