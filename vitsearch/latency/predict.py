"""Predicted latency of a pruning config: the sum of its components' latencies from a device's table.

A config's components come from :func:`~vitsearch.latency.components.components_of` (what patch.py runs for
it); each is looked up in the table, interpolating linearly between profiled token counts (along a
non-decreasing fit of each kind's points, see :func:`monotone`). The ``overhead``
component (one runtime call's fixed cost) is counted once, as a whole model pays it once, while every other
row already has it subtracted. A count outside the profiled grid is refused, never extrapolated.

Where the table records the drift reference of each row's call (``ref_ms``, see :mod:`.reference`), every
row is first scaled to the table's reference speed (the median of those references), so kinds profiled in a
slow minute and kinds profiled in a fast one add up on one scale.
"""
from __future__ import annotations

import bisect
import logging
import math
import os
import shlex
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import VitsearchError
from ..models import ModelGeometry
from ..pruning import PruneConfig
from . import table as table_mod
from .components import Point, components_of, kinds
from .table import LatencyTable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    config: PruneConfig
    total_ms: float
    parts: tuple[tuple[Point, float], ...]  # every component of one forward, in order, with its latency

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for p, ms in self.parts:
            out[p.kind] += ms
        return dict(out)

    @property
    def selection_ms(self) -> float:
        """What selecting tokens costs: the kinds their methods declare as selection (selectors, packaging, stage
        bookkeeping), not blocks."""
        selection = {name for name, kind in kinds().items() if kind.selection}
        return sum(ms for p, ms in self.parts if p.kind in selection)

    def to_dict(self) -> dict[str, Any]:
        return {"config": str(self.config), "total_ms": self.total_ms, "selection_ms": self.selection_ms,
                "by_kind_ms": self.by_kind(),
                "parts": [{"kind": p.kind, "n": p.n, "k": p.k, "ms": ms} for p, ms in self.parts]}


class Predictor:
    """Looks components up in one table."""

    def __init__(self, table: LatencyTable, statistic: str = "median_ms") -> None:
        if statistic not in table_mod.LATENCIES:
            raise ValueError(f"statistic must be one of {table_mod.LATENCIES}")
        self.table, self.statistic = table, statistic
        refs = [row.ref_ms for row in table.rows.values()]  # > 0, or NaN where a call had no reference
        drift = bool(refs) and not any(math.isnan(r) for r in refs)
        if not drift and not all(math.isnan(r) for r in refs):
            missing = sorted(str(p) for p, row in table.rows.items() if math.isnan(row.ref_ms))
            logger.warning("table %s: %d row(s) have no drift reference (ref_ms), so drift correction is off for the "
                           "whole table (%s%s); delete those lines and run vitsearch profile again to re-measure them",
                           table.path, len(missing), ", ".join(missing[:3]), ", ..." if len(missing) > 3 else "")
        self.reference_ms: float | None = statistics.median(refs) if drift else None
        self._axis = {name: kind.axis for name, kind in kinds().items()}  # "n", "k" or "nk" (2-D)
        self._1d: dict[str, tuple[list[int], list[float]]] = {}
        self._2d: dict[str, dict[int, tuple[list[int], list[float]]]] = defaultdict(dict)  # kind: n -> (ks, ms)
        self._looked_up: dict[Point, float] = {}  # a search predicts hundreds of thousands of configs from few points
        grouped: dict[str, dict[int, float]] = defaultdict(dict)
        for point, row in table.rows.items():
            value = getattr(row, statistic)
            if value != value:  # NaN: an older table without this column
                raise VitsearchError(f"table {table.path} has no {statistic} for {point}: re-profile to use it")
            if self.reference_ms is not None:
                value *= self.reference_ms / row.ref_ms
            if self._axis[point.kind] == "nk":
                ks, vs = self._2d[point.kind].setdefault(point.n, ([], []))
                ks.append(point.k)
                vs.append(value)
            else:
                grouped[point.kind][getattr(point, self._axis[point.kind])] = value
        for kind, values in grouped.items():
            xs = sorted(values)
            self._1d[kind] = (xs, monotone([values[x] for x in xs]))
        for rows in self._2d.values():
            for n, (ks, vs) in list(rows.items()):
                order = sorted(range(len(ks)), key=ks.__getitem__)
                rows[n] = ([ks[i] for i in order], [vs[i] for i in order])

    @property
    def geometry(self) -> ModelGeometry:
        return self.table.geometry

    def _out_of_grid(self, point: Point, axis: str, value: int, lo: int, hi: int) -> VitsearchError:
        return VitsearchError(
            f"{point}: {axis} = {value} is outside the profiled grid [{lo}, {hi}] of table {self.table.path}; "
            "predictions never extrapolate: re-profile the table (vitsearch profile --restart) for this model")

    def _interp(self, point: Point, axis: str, x: int, xs: list[int], ys: list[float]) -> float:
        if not xs or x < xs[0] or x > xs[-1]:
            raise self._out_of_grid(point, axis, x, xs[0] if xs else 0, xs[-1] if xs else 0)
        i = bisect.bisect_left(xs, x)
        if xs[i] == x:
            return ys[i]
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)

    def component(self, point: Point) -> float:
        """Latency of one component in ms (per step, overhead excluded except for the ``overhead`` kind)."""
        ms = self._looked_up.get(point)
        if ms is None:
            ms = self._looked_up[point] = self._lookup(point)
        return ms

    def _lookup(self, point: Point) -> float:
        if point.kind not in self._1d and point.kind not in self._2d:
            raise VitsearchError(f"table {self.table.path} has no {point.kind} rows: the profile is incomplete; "
                                 "run vitsearch profile again to finish it")
        if self._axis[point.kind] == "nk":
            return self._bilinear(point)
        axis = self._axis[point.kind]
        xs, ys = self._1d[point.kind]
        return self._interp(point, axis, getattr(point, axis), xs, ys)

    def block_curve(self) -> tuple[list[int], list[float]]:
        """ms of one stock block at each profiled token count, drift-scaled and monotone like every lookup (what
        the latency loss differentiates)."""
        if "block" not in self._1d:
            raise VitsearchError(f"table {self.table.path} has no block rows: the profile is incomplete; "
                                 "run vitsearch profile again to finish it")
        xs, ys = self._1d["block"]
        return list(xs), list(ys)

    def _bilinear(self, point: Point) -> float:
        """A 2-D kind, bilinear in (n, relative k): k is placed at the same fraction of [1, n - 1] in the
        neighbouring rows."""
        rows = self._2d[point.kind]
        ns = sorted(rows)
        n, k = point.n, point.k
        if not ns or n < ns[0] or n > ns[-1]:
            raise self._out_of_grid(point, "n", n, ns[0] if ns else 0, ns[-1] if ns else 0)
        if not 1 <= k <= n - 1:
            raise self._out_of_grid(point, "k", k, 1, n - 1)
        frac = (k - 1) / (n - 2) if n > 2 else 0.0

        def in_row(m: int) -> float:
            ks, vs = rows[m]
            x = 1 + frac * (m - 2) if m > 2 else 1
            if x < ks[0] or x > ks[-1]:
                raise self._out_of_grid(point, "k", k, 1, n - 1)
            i = bisect.bisect_left(ks, x)
            if ks[i] == x:
                return vs[i]
            return vs[i - 1] + (vs[i] - vs[i - 1]) * (x - ks[i - 1]) / (ks[i] - ks[i - 1])

        i = bisect.bisect_left(ns, n)
        if ns[i] == n:
            return in_row(n)
        n0, n1 = ns[i - 1], ns[i]
        return in_row(n0) + (in_row(n1) - in_row(n0)) * (n - n0) / (n1 - n0)

    def predict(self, config: PruneConfig | str) -> Prediction:
        config = PruneConfig.parse(config)
        parts = tuple((p, self.component(p)) for p in components_of(config, self.geometry))
        return Prediction(config, sum(ms for _, ms in parts), parts)


def monotone(ys: list[float]) -> list[float]:
    """The closest non-decreasing sequence to ``ys`` in least squares (pool adjacent violators).

    More tokens never cost less, but on a shared machine neighbouring grid points are measured at different
    moments, and noise can order them the wrong way; an inversion would tell the search that keeping more
    tokens is faster. Real steps up (a GEMM tile or the thread pool kicking in) are kept."""
    blocks: list[list[float]] = []  # [mean, count]
    for y in ys:
        blocks.append([y, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, c1), (m2, c2) = blocks.pop(-2), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [m for m, c in blocks for _ in range(int(c))]


def predict(config: PruneConfig | str, *, device: str, model: str = "digits", batch: int = 1,
            tables: str | os.PathLike[str] = "latency_tables", precision: str = "fp32") -> Prediction:
    """Predicted latency of ``config`` on ``model`` at ``batch`` in ``precision`` from ``device``'s table of
    that precision."""
    from .precision import parse
    from ..models import create_model, geometry
    from ..pruning import token_schedule
    from .registry import resolve

    resolve(device, tables)  # an unknown name is refused with the list of known ones
    with _meta_device():
        g = geometry(create_model(model))
    # A config the model cannot take is refused as such, before a missing table is complained about.
    token_schedule(PruneConfig.parse(config), depth=g.depth, num_patches=g.num_patches, num_prefix=g.num_prefix_tokens)
    precision = parse(precision)
    path = table_mod.table_path(tables, device, g, batch, precision)
    if not path.is_file():
        where = "" if Path(tables) == Path("latency_tables") else f" --tables {shlex.quote(str(tables))}"
        raise VitsearchError(f"no latency table of {model} at batch {batch} in {precision} on {device} ({path}): "
                             f"profile it first with: vitsearch profile --device {shlex.quote(device)} --model "
                             f"{shlex.quote(model)}{'' if batch == 1 else f' --batch {batch}'}"
                             f"{'' if precision == 'fp32' else f' --precision {precision}'}{where}")
    return Predictor(table_mod.load(path, geometry=g, batch=batch, precision=precision)).predict(config)


def _meta_device() -> Any:
    """Build models without memory or init compute: prediction needs only the geometry."""
    import torch

    return torch.device("meta")
