"""Fronts per method: each method's evaluated configs and front drawn apart, the combined front, and the verdict a
study (one device table) gives: which method is best at the budget, and by how much over the best training-free
one. Pure data, drawn by :func:`vitsearch.report.draw.draw_method_fronts`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..studyfolder import TRAINING_FREE
from .info import Point, entry_point, front_of, front_steps, latency_label, metric_label
from .load import Entry, StudyRecord


@dataclass(frozen=True)
class MethodFront:
    """One method's evaluated configs within the budget (trials and uniform baselines) and their front, chosen on
    val like the search's; ``method`` "all" for the combined front."""

    method: str
    training_free: bool  # its candidates were scored as they are (their records say so)
    points: list[Point]
    front: list[Point]
    step_x: list[float]
    step_y: list[float]
    best: Entry | None  # the most accurate on val within the budget


@dataclass(frozen=True)
class MethodFrontsInfo:
    methods: list[MethodFront]
    combined: MethodFront
    budget: float | None
    verdict: str  # which method is best at the budget, and by how much over the best training-free one
    x_label: str
    y_label: str
    title: str


def _method_front(method: str, entries: Sequence[Entry], right: float | None) -> MethodFront:
    points = [p for p in (entry_point(e, lambda e: e.predicted_ms) for e in entries) if p is not None]
    front = front_of(entries, points)
    step_x, step_y = front_steps(front, right)
    free = any(e.status == TRAINING_FREE for e in entries)
    best = max(entries, key=lambda e: (e.ranked_by, -e.predicted_ms), default=None)
    return MethodFront(method, free, points, front, step_x, step_y, best)


def method_fronts_info(study: StudyRecord) -> MethodFrontsInfo:
    """A front per method drawn apart, the combined front, and the study's verdict: per device table (a study
    has one), which method is most accurate within the budget (on val, as the search picks; accuracies stated on
    test) and by how much over the best training-free one."""
    evaluated = [e for e in [*study.trials, *(b for b in study.baselines if b.kind == "uniform")]
                 if e.trained and e.feasible and e.ranked_by is not None]
    methods = list(dict.fromkeys(e.method for e in evaluated))
    right = study.budget_ms
    per = [_method_front(m, [e for e in evaluated if e.method == m], right) for m in methods]
    combined = _method_front("all", evaluated, right)
    return MethodFrontsInfo(per, combined, right, _verdict(study, per, combined), latency_label(study),
                            metric_label(study.metric), f"{study.name}: fronts per method on {study.device}, "
                            f"budget {study.meta.get('budget', '?')}")


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:.1f}%"


def _verdict(study: StudyRecord, per: Sequence[MethodFront], combined: MethodFront) -> str:
    where = f"on {study.device} (budget {study.meta.get('budget', '?')})"
    best = combined.best
    if best is None:
        return f"{where}: no config of any method was trained within the budget"
    free = [m.best for m in per if m.training_free and m.best is not None]
    top_free = max(free, key=lambda e: (e.ranked_by, -e.predicted_ms), default=None)
    text = f"{where}: best method {best.method} (`{best.config}`, {_pct(best.accuracy)} on test)"
    if top_free is None:
        return text + "; no training-free method was evaluated within the budget"
    if top_free is best:
        trained = [m.best for m in per if not m.training_free and m.best is not None]
        runner = max(trained, key=lambda e: (e.ranked_by, -e.predicted_ms), default=None)
        return text + (", training-free: no trained method beats it" + (
            f" (best trained: {runner.method}, {_pct(runner.accuracy)} on test)" if runner else ""))
    gap = None if best.accuracy is None or top_free.accuracy is None else 100 * (best.accuracy - top_free.accuracy)
    return text + (f", {'?' if gap is None else f'{gap:+.1f}'} points over the best training-free one "
                   f"({top_free.method}, `{top_free.config}`, {_pct(top_free.accuracy)} on test)")
