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
stable         whether the median settled within the runner's tolerance (1, 0, or empty where unknown)
ref_ms         the drift reference's median in the call that measured this row (see
               :mod:`vitsearch.latency.reference`); the predictor scales the row by the table's reference over it
=============  ==================================================================================

Every value is checked when a row is made and when a table is read: latencies are finite and >= 0, counts
are whole numbers, a drift reference is > 0, each grid point appears once. A bad row is refused with its
file and line, never skipped or silently overridden: deleting the line and profiling again re-measures it.

The ``.json`` beside it records provenance: device, runtime and version, threads (the count measured with, also
for a profile asked for 0), spinning (the intra-op spinning policy: ``off``, ``on``, or why the device's runtime
could not set it; absent in tables from before the option, which spun), batch, precision, date,
vitsearch version, geometry, measurement settings and grid. A table is only ever applied to the geometry,
batch and precision (:mod:`.precision`: fp32, fp16, int8) it was measured for: :func:`load` refuses anything else
and says which field differs.

One process profiles a table at a time: :func:`holding` takes ``<table>.csv.lock`` beside it (workers started
together on a fresh machine wait for the first one's table instead of measuring at once into one file), and
:class:`RowWriter`, the one appender, holds that lock while it is open.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from filelock import FileLock, Timeout

from ..errors import VitsearchError, naming
from ..files import write_text
from ..models import ModelGeometry
from .components import Point, kinds
from .precision import DEFAULT as DEFAULT_PRECISION
from .precision import table_precision
from .registry import folder_name

PRECISION = DEFAULT_PRECISION  # the precision of a table that names none
COLUMNS = ("kind", "n", "k", "steps", "median_ms", "p90_ms", "spread_ms", "repeats", "p10_ms", "raw_median_ms",
           "stable", "ref_ms")
REQUIRED = ("kind", "n", "k", "steps", "median_ms", "p90_ms", "spread_ms", "repeats")
LATENCIES = ("median_ms", "p90_ms", "p10_ms")  # statistics a prediction can be made from
FORMAT = 1
# Geometry fields a latency depends on: any difference refuses the table. num_classes only changes the head's
# last matmul, which is noise next to the blocks, so a fine-tuned head can use its base model's table.
GEOMETRY_FIELDS = ("embed_dim", "num_heads", "depth", "mlp_ratio", "patch_size", "img_size", "in_chans",
                   "num_prefix_tokens", "num_patches")
FIX_ROW = "fix or delete that line (vitsearch profile re-measures deleted rows), or start over with --restart"

logger = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        """Refuse what no measurement gives, so no writer can put it in a table (ValueError, naming the field)."""
        for name in ("median_ms", "p90_ms", "spread_ms", "p10_ms", "raw_median_ms", "ref_ms"):
            value = getattr(self, name)
            optional = name not in ("median_ms", "p90_ms", "spread_ms")
            if optional and math.isnan(value):
                continue
            if not math.isfinite(value) or value < 0 or (name == "ref_ms" and value == 0):
                expected = "a drift reference's median, > 0" if name == "ref_ms" else "a finite latency >= 0"
                raise ValueError(f"{name} is {value!r}, not {expected}")
        for name in ("steps", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}, not a count >= 1")
        if self.point.n < 0 or self.point.k < 0:
            raise ValueError(f"token counts n = {self.point.n}, k = {self.point.k} are negative")

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


def lock(path: Path) -> FileLock:
    """Table ``path``'s lock (``<table>.csv.lock``), the same object for every caller in a process, so a holder
    may take it again (a profile, then its :class:`RowWriter`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{path}.lock", is_singleton=True)


@contextlib.contextmanager
def holding(path: Path) -> Iterator[None]:
    """Hold table ``path``'s lock for a profile: one profiler per table across processes. Another one holding it
    is waited for (logged), and its table is what the caller then reads."""
    held = lock(path)
    try:
        held.acquire(timeout=0)
    except Timeout:
        logger.info("%s is being profiled by another process: waiting for it to finish, then reading its table",
                    path)
        held.acquire()
    try:
        yield
    finally:
        held.release()


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
    def precision(self) -> str:
        return table_precision(self.meta)

    @property
    def device(self) -> str:
        return str(self.meta["device"]["name"])


def _parse_row(raw: Mapping[str, str | None], where: str) -> Row:
    """One CSV row as a :class:`Row`; anything malformed raises :class:`VitsearchError` prefixed with ``where``."""
    def text(col: str) -> str:
        return (raw.get(col) or "").strip()

    def number(col: str) -> float:
        try:
            value = float(text(col))
        except ValueError:
            raise VitsearchError(f"{where}: {col} is {text(col)!r}, not a number; {FIX_ROW}") from None
        if not math.isfinite(value):
            raise VitsearchError(f"{where}: {col} is {text(col)!r}, not a finite number; {FIX_ROW}")
        return value

    def count(col: str) -> int:
        value = number(col)
        if not value.is_integer():
            raise VitsearchError(f"{where}: {col} is {text(col)!r}, not a whole number; {FIX_ROW}")
        return int(value)

    def optional(col: str) -> float:
        return number(col) if text(col) else math.nan

    kind, known = text("kind"), kinds()
    if kind not in known:
        raise VitsearchError(f"{where}: unknown component kind {kind!r} (expected one of {', '.join(known)}); {FIX_ROW}")
    if text("stable") not in ("", "0", "1"):
        raise VitsearchError(f"{where}: stable is {text('stable')!r}, not 1, 0 or empty; {FIX_ROW}")
    stable = None if not text("stable") else text("stable") == "1"
    try:
        return Row(Point(kind, count("n"), count("k")), count("steps"), number("median_ms"), number("p90_ms"),
                   number("spread_ms"), count("repeats"), optional("p10_ms"), optional("raw_median_ms"), stable,
                   optional("ref_ms"))
    except ValueError as e:
        raise VitsearchError(f"{where}: {e}; {FIX_ROW}") from None


def read_rows(path: Path) -> dict[Point, Row]:
    """Every row of a table CSV, validated (see the module docstring); the first bad one is refused."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise VitsearchError(f"latency table {path} line {line} is not UTF-8 text (byte {data[e.start]:#04x}): it "
                             f"was not written by vitsearch or was edited; {FIX_ROW}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise VitsearchError(f"latency table {path} lacks column(s) {', '.join(missing)}: it was not written by "
                             "this vitsearch version or was edited; re-profile with vitsearch profile --restart")
    rows: dict[Point, Row] = {}
    lines: dict[Point, int] = {}
    for raw in reader:
        where = f"latency table {path} line {reader.line_num}"
        row = _parse_row(raw, where)
        if row.point in rows:
            raise VitsearchError(f"{where}: {row.point} was already measured on line {lines[row.point]}; keep one "
                                 f"of the two lines (vitsearch profile re-measures deleted rows)")
        rows[row.point], lines[row.point] = row, reader.line_num
    return rows


def check_meta(meta: Mapping[str, Any], path: Path, geometry: ModelGeometry | None, batch: int | None,
               precision: str | None = None) -> None:
    """Refuse a table measured for another geometry, batch or precision, naming the fields that differ."""
    for key in ("device", "geometry", "batch", "runtime", "threads"):
        if key not in meta:
            raise VitsearchError(f"latency table metadata {meta_path(path)} lacks {key!r}: re-profile")
    if batch is not None and int(meta["batch"]) != int(batch):
        raise VitsearchError(f"latency table {path} was measured at batch {meta['batch']}, not batch {batch}: "
                             f"profile batch {batch} (vitsearch profile --batch {batch})")
    if precision is not None and table_precision(meta) != precision:
        raise VitsearchError(f"latency table {path} holds {table_precision(meta)} latencies, and this asks for "
                             f"{precision}: a table is only applied in the precision it was measured in. Profile "
                             f"{precision} (vitsearch profile --precision {precision}), or ask for "
                             f"--precision {table_precision(meta)}")
    if geometry is not None:
        have = meta["geometry"]
        want = geometry.to_dict()
        diff = [f"{f} {have.get(f)} vs the model's {want[f]}" for f in GEOMETRY_FIELDS if have.get(f) != want[f]]
        if diff:
            raise VitsearchError(f"latency table {path} was measured for another model geometry ({'; '.join(diff)}): "
                                 "profile this model (vitsearch profile --model NAME)")


def load(path: str | os.PathLike[str], *, geometry: ModelGeometry | None = None, batch: int | None = None,
         precision: str | None = None) -> LatencyTable:
    """Read and validate a table and its metadata; with ``geometry``/``batch``/``precision``, refuse a table made
    for others."""
    path = Path(path)
    if not path.is_file():
        raise VitsearchError(f"no latency table at {path}: run vitsearch profile for this device and model first")
    mpath = meta_path(path)
    if not mpath.is_file():
        raise VitsearchError(f"latency table {path} has no metadata file {mpath.name} beside it: re-profile")
    try:
        meta = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VitsearchError(f"latency table metadata {mpath} is not valid JSON: {e}") from e
    check_meta(meta, path, geometry, batch, precision)
    if geometry is not None:  # the head a prediction charges is the predicted model's, whichever model was profiled
        meta["geometry"] = {**meta["geometry"], "global_pool": geometry.global_pool}
    return LatencyTable(path, meta, read_rows(path))


class RowWriter:
    """Appends rows to a table CSV as they are measured, so an interrupted profile keeps them.

    Opening an existing table reads (and validates) its rows; a last line cut short by an interruption (no line
    end) is cut off first. The file is created with the first row, so a device that measures nothing leaves none.
    The writer holds the table's :func:`lock` from opening to :meth:`close`: no other process appends meanwhile.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = lock(path)
        self._lock.acquire()
        self._file: Any = None
        try:
            self.rows = self._recover() if path.exists() else {}
        except BaseException:
            self._lock.release()
            raise

    def _recover(self) -> dict[Point, Row]:
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            os.truncate(self.path, data.rfind(b"\n") + 1)
            data = data[:data.rfind(b"\n") + 1]
        if not data:
            return {}
        header = next(csv.reader([data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()]))
        if tuple(header) != COLUMNS:
            raise VitsearchError(f"cannot resume {self.path}: its columns {header} are not {list(COLUMNS)}; "
                                 "start over with --restart")
        return read_rows(self.path)

    def append(self, row: Row) -> None:
        with naming(self.path):
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fresh = not self.path.exists() or self.path.stat().st_size == 0
                self._file = open(self.path, "a", newline="", encoding="utf-8")
                self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
                if fresh:
                    self._writer.writeheader()
            self._writer.writerow(row.to_csv())
            self._file.flush()
        self.rows[row.point] = row

    def close(self) -> None:
        try:
            if self._file is not None:
                with naming(self.path):
                    self._file.close()
                self._file = None
        finally:
            if self._lock.is_locked:
                self._lock.release()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_meta(path: Path, meta: Mapping[str, Any]) -> None:
    """The metadata file, replaced whole; a non-finite float in it is refused (JSON has none)."""
    meta_path(path).parent.mkdir(parents=True, exist_ok=True)
    with naming(meta_path(path)):
        write_text(meta_path(path), json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n")


def save(path: str | os.PathLike[str], meta: Mapping[str, Any], rows: Iterable[Row]) -> LatencyTable:
    """Write a whole table (used by tests and tools; profiling appends with :class:`RowWriter`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(r.to_csv())
    write_meta(path, meta)
    return LatencyTable(path, dict(meta), {r.point: r for r in rows})
