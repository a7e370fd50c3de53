"""Profile a device: measure every component of a model's geometry on it and write its latency table.

Order: the ``overhead`` graph first (every other row has its median subtracted), then one kind at a time:
export the kind once, specialise it to each pending grid point, measure them all in one runner call, and
append each row to the CSV the moment its result arrives. Every call also times the drift reference
(:mod:`vitsearch.latency.reference`), recorded with each row. Rows already in the table are skipped, so an
interrupted profile resumes where it stopped; the metadata must match (same device, runtime, threads, spinning
policy, batch, precision and geometry), else ``restart=True`` starts over. A precision other than fp32 times
that precision's graphs (:mod:`.precision`) into its own table. One process profiles a table at a time (the
table's lock, :func:`.table.holding`): a second one started meanwhile waits, then reads the finished table.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import __version__
from ..errors import Interrupted, VitsearchError
from ..files import check_writable
from ..models import create_model, geometry
from . import artefacts as art
from . import precision as precision_mod
from . import table as table_mod
from .components import ComponentGraph, GridSpec, Point, component_graphs, grid, kinds
from .devices import Device, MeasureSettings, open_device
from .registry import resolve
from .reference import Reference
from .reference import measure as measure_with_reference
from .table import LatencyTable, Row, RowWriter

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 5.0  # off a terminal (no bar), seconds between progress lines while measuring

def _row(point: Point, steps: int, stats: Mapping[str, Any], overhead_ms: float, ref_ms: float | None) -> Row:
    """Per-step latencies with the per-call overhead taken out (clamped at 0: a component can be cheaper
    than the timing noise of the overhead, never negative)."""
    sub = 0.0 if point.kind == "overhead" else overhead_ms
    low = stats.get("p10_ms")
    low = stats["min_ms"] if low is None else low
    p90 = stats.get("p90_ms")
    p90 = stats["median_ms"] if p90 is None else p90

    def per_step(ms: float) -> float:
        return max(0.0, (ms - sub) / steps)

    return Row(point, steps, per_step(stats["median_ms"]), per_step(p90), max(0.0, (p90 - low) / steps),
               int(stats["repeats"]), per_step(low), float(stats["median_ms"]), stats.get("stable"),
               math.nan if ref_ms is None else ref_ms)


def _read_meta(path: Path) -> dict[str, Any] | None:
    mpath = table_mod.meta_path(path)
    if not mpath.exists():
        return None
    try:
        return json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise VitsearchError(f"cannot resume {path}: its metadata {mpath} is not valid JSON ({e}); use --restart") from e


def _check_settings(old: Mapping[str, Any], new: Mapping[str, Any], path: Path) -> None:
    for key in ("threads", "batch", "precision"):
        if key == "threads" and not new.get(key):
            continue  # 0: every core, known once the device reports its count (_check_runtime)
        if old.get(key) != new.get(key):
            raise VitsearchError(f"{path} was profiled with {key} {old.get(key)}, not {new.get(key)}: resume with the "
                                 "same settings, or start over with --restart")


def _check_runtime(old: Mapping[str, Any], new: Mapping[str, Any], path: Path) -> None:
    old_rt, new_rt = old.get("runtime", {}), new.get("runtime", {})
    for key in ("runtime", "version", "provider", "threads", "spinning"):
        if old_rt.get(key) != new_rt.get(key):
            raise VitsearchError(f"{path} was profiled with {key} {old_rt.get(key)!r}, the device now reports "
                                 f"{new_rt.get(key)!r}: start over with --restart")


def profile(
    device: str = "cpu",
    *,
    model: str = "digits",
    batch: int = 1,
    threads: int = 0,
    tables: str | os.PathLike[str] = "latency_tables",
    grid_spec: GridSpec = GridSpec(),
    settings: MeasureSettings | None = None,
    restart: bool = False,
    progress: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    precision: str = precision_mod.DEFAULT,
) -> LatencyTable:
    """Measure ``model``'s components on ``device`` and return the (completed) table.

    The model is built with random weights (latency does not depend on them). ``threads`` is the runtime's
    intra-op thread count (0: every core of the device; the table records the count used, and the spinning
    policy). ``model_kwargs`` go to ``create_model`` (tests build tiny models). ``precision`` (fp32, fp16,
    int8) is the precision of the graphs timed; one the device cannot run is refused before anything is measured.
    """
    if batch < 1:
        raise VitsearchError(f"batch must be a positive integer, got {batch}")
    if threads < 0:
        raise VitsearchError(f"threads must be 0 (the runtime's default) or a positive count, got {threads}")
    precision = precision_mod.parse(precision)
    spec = resolve(device, tables)
    precision_mod.check_runs(precision, spec)
    check_writable(tables, "latency tables folder", "pass --tables DIR with a folder you can write")  # before minutes
    dev = open_device(spec)
    settings = replace(settings or MeasureSettings(), threads=threads)
    torch.manual_seed(0)
    net = create_model(model, **dict(model_kwargs or {}))
    g = geometry(net)
    path = table_mod.table_path(tables, device, g, batch, precision)
    with table_mod.holding(path):  # one profiler per table: a second one waits, then reads the finished table
        if restart:
            for p in (path, table_mod.meta_path(path)):
                p.unlink(missing_ok=True)
        meta: dict[str, Any] = {
            "format": table_mod.FORMAT, "device": spec.to_dict(), "model": model, "geometry": g.to_dict(),
            "batch": batch, "precision": precision, "threads": threads, "settings": asdict(settings),
            "grid": asdict(grid_spec), "vitsearch_version": __version__,
            "latency": "per step, with the overhead row's median subtracted; the overhead is counted once per model",
        }
        old_meta = _read_meta(path) if path.exists() else None
        if old_meta is not None:
            table_mod.check_meta(old_meta, path, g, batch)
            _check_settings(old_meta, meta, path)
        graphs = component_graphs(net, batch)
        start = time.perf_counter()
        with RowWriter(path) as writer, contextlib.ExitStack() as cleanup:
            pending = [p for p in grid(g, grid_spec) if p not in writer.rows]
            reference = cleanup.enter_context(contextlib.closing(Reference.build(dev, net, batch, precision))) if pending else None
            logger.info("profiling %s on %s: %d of %d grid points to measure (%s)", g.key, device, len(pending),
                        len(grid(g, grid_spec)), path)
            try:
                failures = _measure_all(dev, graphs, reference, pending, writer, settings, meta, old_meta, path,
                                        progress, precision)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM (the CLI's handler): the rows measured are on disk
                raise Interrupted(f"interrupted: the {len(writer.rows)} rows measured are kept in {path}; run the "
                                  "same command to measure the rest") from None
            rows = dict(writer.rows)
        elapsed = time.perf_counter() - start
        final = table_mod.load(path) if table_mod.meta_path(path).exists() else None
        if final is not None:
            done = all(p in rows for p in grid(g, grid_spec))
            final.meta.update(complete=done, profile_seconds=round(final.meta.get("profile_seconds", 0) + elapsed, 1))
            table_mod.write_meta(path, final.meta)
        if failures:
            listed = "; ".join(f"{name}: {msg}" for name, msg in failures[:5])
            raise VitsearchError(f"{len(failures)} component(s) could not be measured on {device} ({listed}). The "
                                 f"{len(rows)} measured rows are kept in {path}; run the same command to retry")
        return table_mod.load(path, geometry=g, batch=batch, precision=precision)


def _settings_for(graph: ComponentGraph, settings: MeasureSettings) -> MeasureSettings:
    """Chains need fewer calls: one call already runs every block (warm after a call or two, and each sample
    averages over depth blocks), and a DeiT-S chain call takes as long as a whole model. Their time is capped
    lower too: three chain kinds of 26 points each are most of a profile's time (DeiT-S on one thread: 309 s
    with the full cap, against the 5 minutes a table may take)."""
    if graph.steps == 1:
        return settings
    return replace(settings, warmup=min(settings.warmup, 2), min_repeats=max(3, settings.min_repeats // 2),
                   max_seconds=settings.max_seconds * 2 / 3)


def _measure_all(dev: Device, graphs: Mapping[str, ComponentGraph], reference: Reference | None,
                 pending: list[Point], writer: RowWriter, settings: MeasureSettings, meta: dict[str, Any],
                 old_meta: Mapping[str, Any] | None, path: Path, progress: bool,
                 precision: str = precision_mod.DEFAULT) -> list[tuple[str, str]]:
    from tqdm.auto import tqdm

    failures: list[tuple[str, str]] = []
    have_meta = old_meta is not None
    bar = tqdm(total=len(pending), desc=f"profiling {dev.name}", unit="graph", disable=not progress)
    folder = Path(tempfile.mkdtemp(prefix="vitsearch-profile-"))
    try:
        for kind in kinds():  # overhead first: every other row has it subtracted
            points = [p for p in pending if p.kind == kind]
            if not points:
                continue
            overhead = next((r for p, r in writer.rows.items() if p.kind == "overhead"), None)
            if kind != "overhead" and overhead is None:
                raise VitsearchError(f"the overhead graph could not be measured on {dev.name}, so no component can be")
            bar.set_postfix_str(f"exporting {kind}")
            if not progress:
                logger.info("%s: exporting %d graphs", kind, len(points))
            t0 = time.perf_counter()
            arts = art.for_points(dev.needs, graphs[kind], points, folder, precision)
            t1 = time.perf_counter()
            by_name = {a.name: p for a, p in zip(arts, points)}
            bar.set_postfix_str(kind)
            said, done = time.perf_counter(), 0
            for event, ref_ms in measure_with_reference(dev, arts, _settings_for(graphs[kind], settings), reference):
                done += event["event"] != "runtime"
                if not progress and time.perf_counter() - said > PROGRESS_EVERY_S:  # no bar: a line now and then
                    said = time.perf_counter()
                    logger.info("%s: %d of %d points measured", kind, done, len(points))
                if event["event"] == "runtime":
                    meta["runtime"] = {k: v for k, v in event.items() if k != "event"}
                    if not meta["threads"]:
                        logger.info("threads 0: measuring with all %s cores of %s", event["threads"], dev.name)
                    # What the device measured with, as it reports it (a perf tool may not set the spinning policy).
                    meta.update(threads=event["threads"], spinning=event.get("spinning"))
                    if old_meta is not None:
                        _check_runtime(old_meta, meta, path)
                elif event["event"] == "result":
                    try:
                        row = _row(by_name[event["name"]], graphs[kind].steps, event,
                                   0.0 if overhead is None else overhead.raw_median_ms, ref_ms)
                    except ValueError as e:  # a non-finite or negative statistic: never written to the table
                        failures.append((event["name"], str(e)))
                        bar.update(1)
                        continue
                    if not have_meta:  # with the first row, so a device that measures nothing leaves no table
                        meta["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                        table_mod.write_meta(path, meta)
                        have_meta = True
                    writer.append(row)
                    bar.update(1)
                else:
                    failures.append((event["name"], event.get("message", "")))
                    bar.update(1)
            logger.info("%s: %d points, prepared in %.1f s, measured in %.1f s", kind, len(points), t1 - t0,
                        time.perf_counter() - t1)
            for f in folder.iterdir():  # this kind's graphs and weights are no longer needed
                f.unlink()
    finally:
        bar.close()
        shutil.rmtree(folder, ignore_errors=True)
    return failures
