"""What each plot shows, as data: pure functions of loaded studies, tested without drawing (optuna's split between
``_get_pareto_front_info`` and the plotting function). Units are converted here (accuracy in percent), so the
drawing functions in :mod:`vitsearch.report.draw` only draw.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import VitsearchError
from ..pareto import dominated_by_front, pareto_front
from ..stats import kendall_tau, scatter_info, summarise
from .load import Entry, StudyRecord

METRIC_NAMES = {"top1": "top-1 accuracy", "top5": "top-5 accuracy"}


def metric_label(metric: str) -> str:
    """The accuracy axis: the test split's accuracy (the front on it was chosen on val)."""
    return f"{METRIC_NAMES.get(metric, metric)} on test (%)"


def latency_label(study: StudyRecord) -> str:
    return f"predicted latency (ms, batch {study.batch}, {study.precision})"


@dataclass(frozen=True)
class Point:
    x: float
    y: float  # accuracy in percent
    label: str  # the config
    trial: int | None = None


@dataclass(frozen=True)
class ParetoInfo:
    """Accuracy against one cost (latency or GMACs) for one study."""

    trained: list[Point]  # feasible trained trials
    infeasible: list[Point]  # trained, yet over budget (drawn grey)
    rejected: list[float]  # costs of trials rejected before training: no accuracy, drawn as grey ticks on the axis
    front: list[Point]  # the Pareto front of ``trained``, by ascending cost
    step_x: list[float]  # the front as a step line: the best accuracy reachable at each cost
    step_y: list[float]
    budget: float | None  # the latency budget (None on a GMACs axis)
    unpruned: Point | None
    uniform: list[Point]
    uniform_matched: list[bool]  # per uniform baseline: matched or beaten by the front
    x_label: str
    y_label: str
    title: str
    # The view: the region a decision is made in, the trained trials within the budget and the budget itself (the
    # unpruned model's accuracy too, drawn as a reference line). A slower unpruned model, over-budget trials or
    # baselines far off would squash it; what lies outside is counted in ``outside``.
    x_view: tuple[float, float] | None = None
    y_view: tuple[float, float] | None = None
    outside: str = ""
    labelled: list[Point] = field(default_factory=list)  # front points whose "#trial" label collides with no other
    learned: list[Point] = field(default_factory=list)  # the learned strategy's trial (also in trained / infeasible)


LABEL_GAP = (0.07, 0.06)  # share of the view's width and height two labels need between them to stay readable


def spaced_labels(points: Sequence[Point], view: tuple[tuple[float, float], tuple[float, float]] | None
                  ) -> list[Point]:
    """The points to label, in order, skipping any whose label would overprint one already placed (labels sit
    at the same offset from their point, so two labels collide when their points are closer than ``LABEL_GAP``)."""
    if view is None:
        return [p for p in points if p.trial is not None]
    (x_lo, x_hi), (y_lo, y_hi) = view
    width, height = (x_hi - x_lo) or 1.0, (y_hi - y_lo) or 1.0
    placed: list[Point] = []
    for p in points:
        if p.trial is None or not (x_lo <= p.x <= x_hi and y_lo <= p.y <= y_hi):
            continue
        if all(abs(p.x - q.x) / width >= LABEL_GAP[0] or abs(p.y - q.y) / height >= LABEL_GAP[1] for q in placed):
            placed.append(p)
    return placed


def view_box(xs: Sequence[float], ys: Sequence[float], margin: float = 0.08, min_y_span: float = 2.0
             ) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Limits around the points with a margin (``min_y_span`` accuracy points at least), or None for no points."""
    if not xs or not ys:
        return None
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    x_span = (x_hi - x_lo) or abs(x_hi) * 0.1 or 1.0
    y_pad = max(y_hi - y_lo, min_y_span) * margin + max(0.0, min_y_span - (y_hi - y_lo)) / 2
    return (x_lo - margin * x_span, x_hi + margin * x_span), (y_lo - y_pad, y_hi + y_pad)


def _outside(groups: Sequence[tuple[str, Sequence[Point]]], rejected: Sequence[float],
             box: tuple[tuple[float, float], tuple[float, float]]) -> str:
    (x_lo, x_hi), (y_lo, y_hi) = box
    counts = [(sum(not (x_lo <= p.x <= x_hi and y_lo <= p.y <= y_hi) for p in points), what) for what, points in groups]
    counts.append((sum(not (x_lo <= x <= x_hi) for x in rejected), "rejected trial"))
    parts = [f"{n} {what}{'s' if n > 1 and what != 'unpruned model' else ''}" for n, what in counts if n]
    return f"{', '.join(parts)} outside this view (see the tables)" if parts else ""


def front_steps(front: Sequence[Point], right: float | None = None) -> tuple[list[float], list[float]]:
    """The front as a staircase (points by ascending cost): accuracy holds until the next, more accurate point,
    and the last level runs on to ``right`` (the budget, or the slowest trial) when it lies further out."""
    xs: list[float] = []
    ys: list[float] = []
    for i, p in enumerate(front):
        if i:
            xs.append(p.x)
            ys.append(front[i - 1].y)
        xs.append(p.x)
        ys.append(p.y)
    if front and right is not None and right > front[-1].x:
        xs.append(right)
        ys.append(front[-1].y)
    return xs, ys


def entry_point(e: Entry, cost: Callable[[Entry], float | None]) -> Point | None:
    x = cost(e)
    if x is None or e.accuracy is None:
        return None
    return Point(float(x), 100.0 * e.accuracy, e.config, e.trial)


def front_of(entries: Sequence[Entry], points: Sequence[Point]) -> list[Point]:
    """The points (test accuracy) of the entries on the front chosen by val accuracy, as the search chose it: the
    report never picks by test. By ascending cost."""
    ranked = [(e.ranked_by, p.x) for e, p in zip(entries, points)]
    return sorted((points[i] for i in pareto_front(ranked)), key=lambda p: p.x)


def _latency(e: Entry) -> float:
    return e.predicted_ms


def _gmacs(e: Entry) -> float | None:
    return e.gmacs


def pareto_info(study: StudyRecord, *, cost: str = "latency") -> ParetoInfo:
    """All trials against predicted latency (``cost="latency"``) or GMACs (``cost="gmacs"``): feasible ones, the
    infeasible, the front as a step line, the budget (latency only) and the baselines."""
    if cost not in ("latency", "gmacs"):
        raise ValueError(f"cost must be 'latency' or 'gmacs', got {cost!r}")
    of = _latency if cost == "latency" else _gmacs
    trained, infeasible, rejected, kept = [], [], [], []
    for t in study.trials:
        p = entry_point(t, of)
        if p is not None:
            (trained if t.feasible else infeasible).append(p)
            if t.feasible:
                kept.append(t)
        elif cost == "latency":
            rejected.append(t.predicted_ms)
    front = front_of(kept, trained)
    budget = study.budget_ms if cost == "latency" else None
    # The staircase runs on to the budget: up to it, the front's last config is the best one can ship.
    right = budget if budget is not None else max((p.x for p in trained), default=None)
    step_x, step_y = front_steps(front, right)
    unpruned = entry_point(study.unpruned, of) if study.unpruned else None
    uniform_entries = [b for b in study.baselines if b.kind == "uniform" and entry_point(b, of) is not None]
    uniform = [p for p in (entry_point(b, of) for b in uniform_entries) if p is not None]
    by_val = {e.config: e.ranked_by for e in kept}
    matched = [dominated_by_front([(by_val[f.label], f.x) for f in front], (b.ranked_by, u.x))
               for b, u in zip(uniform_entries, uniform)]
    x_label = latency_label(study) if cost == "latency" else "GMACs per image (10⁹ multiply-accumulates in matmuls)"
    core = trained or infeasible
    box = view_box([p.x for p in core] + ([budget] if budget is not None else []),
                   [p.y for p in core] + ([unpruned.y] if unpruned else [])) if core else None
    outside = _outside([("unpruned model", [unpruned] if unpruned else []), ("over-budget trial", infeasible),
                        ("uniform baseline", uniform)], rejected, box) if box else ""
    return ParetoInfo(trained, infeasible, rejected, front, step_x, step_y, budget, unpruned, uniform, matched,
                      x_label, metric_label(study.metric),
                      f"{study.name}: {study.model} on {study.device} in {study.precision}, budget "
                      f"{study.meta.get('budget', '?')}",
                      *(box or (None, None)), outside, spaced_labels(front, box),
                      [p for t in study.trials if t.kind == "learned" and (p := entry_point(t, of)) is not None])


@dataclass(frozen=True)
class Series:
    """One study in an overlay."""

    label: str
    points: list[Point]  # feasible trained trials
    front: list[Point]
    step_x: list[float]
    step_y: list[float]
    budget: float | None
    unpruned: Point | None


@dataclass(frozen=True)
class OverlayInfo:
    series: list[Series]
    x_label: str
    y_label: str
    skipped: list[str] = field(default_factory=list)  # studies left out, with the reason


def comparable_key(study: StudyRecord) -> tuple[str, tuple[str, ...], str]:
    """What must match for accuracies and latencies of two studies to share axes."""
    return study.metric, study.objectives, str(study.meta.get("dataset", "?"))


def check_comparable(studies: Sequence[StudyRecord]) -> None:
    """Refuse to overlay studies that measure different things: the same point would mean different numbers."""
    groups: dict[tuple, list[str]] = {}
    for s in studies:
        groups.setdefault(comparable_key(s), []).append(s.name)
    if len(groups) > 1:
        described = "; ".join(f"{', '.join(names)}: metric {k[0]}, objectives {list(k[1])}, dataset {k[2]}"
                              for k, names in groups.items())
        raise VitsearchError(f"these studies measure different things and cannot share one chart ({described}): "
                             "overlay only studies with the same metric, objectives and dataset; plot the others "
                             "separately")


def series_label(study: StudyRecord, all_studies: Sequence[StudyRecord]) -> str:
    """The study name, plus what tells it apart from the others (device, precision, budget, methods, batch)."""
    parts = [study.device, study.precision, f"budget {study.meta.get('budget', '?')}", "+".join(study.methods)]
    if len({s.batch for s in all_studies}) > 1:
        parts.append(f"batch {study.batch}")
    return f"{study.name} ({', '.join(parts)})"


def overlay_info(studies: Sequence[StudyRecord]) -> OverlayInfo:
    """Several studies' trials and fronts on one accuracy-latency chart. Studies with different metrics,
    objectives or data sets are refused; those with no trained trial yet are left out, with the reason."""
    if not studies:
        raise VitsearchError("name at least one study to plot")
    check_comparable(studies)
    series, skipped = [], []
    for s in studies:
        info = pareto_info(s)
        if not info.trained:
            skipped.append(f"{s.name}: no trained trial within budget yet")
            continue
        series.append(Series(series_label(s, studies), info.trained, info.front, info.step_x, info.step_y,
                             info.budget, info.unpruned))
    if not series:
        raise VitsearchError("nothing to plot: " + "; ".join(skipped))
    batches = {s.batch for s in studies}
    x_label = (latency_label(studies[0]) if len(batches) == 1 and len({s.precision for s in studies}) == 1
               else "predicted latency (ms per batch)")
    return OverlayInfo(series, x_label, metric_label(studies[0].metric), skipped)


@dataclass(frozen=True)
class TokenInfo:
    lines: list[tuple[str, list[int]]]  # (label, tokens entering each block)
    reference: list[int]  # the unpruned model's tokens per block
    x_label: str = "block index"
    y_label: str = "tokens entering the block"


def token_info(studies: Sequence[StudyRecord]) -> TokenInfo:
    """Per-block token counts of each study's front configs (labelled with the study when there are several),
    against the unpruned model."""
    lines = []
    for s in studies:
        for e in s.front:
            if e.block_tokens:
                label = f"{e.config} ({100 * (e.accuracy or 0):.1f}%, {e.predicted_ms:.3g} ms)"
                lines.append((f"{s.name}: {label}" if len(studies) > 1 else label, list(e.block_tokens)))
    reference: list[int] = []
    for s in studies:
        if s.unpruned is not None and s.unpruned.block_tokens:
            reference = list(s.unpruned.block_tokens)
            break
        g = s.geometry
        if g.get("depth") and g.get("num_patches") is not None:
            reference = [int(g["num_patches"]) + int(g.get("num_prefix_tokens", 1))] * int(g["depth"])
            break
    return TokenInfo(lines, reference)


# Fewer points than this and a rank correlation means little (from two points Kendall tau is always +-1).
MIN_RANKED = 5


@dataclass(frozen=True)
class FlopsInfo:
    """Accuracy vs GMACs beside accuracy vs latency: where counting FLOPs would choose differently."""

    latency: ParetoInfo
    gmacs: ParetoInfo
    only_on_latency_front: list[str]  # configs the latency front keeps but a GMACs front would drop
    only_on_gmacs_front: list[str]  # configs a GMACs front keeps that are not fastest for their accuracy
    kendall_tau: float  # rank agreement of GMACs and predicted latency over the trained trials; NaN below MIN_RANKED
    ranked: int = 0  # how many trials the rank agreement is over


def flops_info(study: StudyRecord) -> FlopsInfo:
    lat, mac = pareto_info(study, cost="latency"), pareto_info(study, cost="gmacs")
    on_lat, on_mac = {p.label for p in lat.front}, {p.label for p in mac.front}
    both = [t for t in study.trials if t.trained and t.feasible and t.gmacs is not None]
    tau = kendall_tau([t.gmacs for t in both], [t.predicted_ms for t in both]) if len(both) >= MIN_RANKED \
        else float("nan")
    return FlopsInfo(lat, mac, sorted(on_lat - on_mac), sorted(on_mac - on_lat), tau, len(both))


@dataclass(frozen=True)
class ValidationPanel:
    statistic: str  # "as measured", or "at the table's speed" (each call's drift reference scaled to the table's)
    series: dict[str, tuple[list[float], list[float]]]  # method -> (measured ms, predicted ms)
    lo: float
    hi: float
    summary: dict  # median |error|, within 10%, Kendall tau... (see vitsearch.stats.summarise)


@dataclass(frozen=True)
class ValidationInfo:
    panels: list[ValidationPanel]  # as measured first, then at the table's speed where the table has references


def _numbers(rows: Sequence[dict], predicted: str, measured: str) -> list[dict]:
    out = [{"method": r.get("method", "?"), "predicted_ms": r.get(predicted), "measured_ms": r.get(measured)}
           for r in rows]
    return [r for r in out if isinstance(r["predicted_ms"], float) and isinstance(r["measured_ms"], float)]


def validation_info(study: StudyRecord) -> ValidationInfo | None:
    """Predicted vs measured whole models: the latency table's validation, and this study's finalized models
    measured on the device; None when nothing was measured."""
    panels = []
    finalized = [{"method": e.method, "predicted_ms": e.predicted_ms, "measured_ms": e.measured_ms}
                 for e in study.finalized if e.measured_ms is not None]
    if finalized:
        data = scatter_info(finalized)
        summary = summarise([r["predicted_ms"] for r in finalized], [r["measured_ms"] for r in finalized])
        panels.append(ValidationPanel("this study's finalized models", data["series"], data["lo"], data["hi"], summary))
    v = study.validation
    if v is None:
        return ValidationInfo(panels) if panels else None
    for statistic, predicted, measured, summary in (
            ("as measured", "predicted_ms", "measured_ms", v.summary),
            ("at the table's speed", "predicted_ms", "measured_at_table_speed_ms", v.summary.get("drift_corrected"))):
        rows = _numbers(v.rows, predicted, measured)
        if rows and summary:
            data = scatter_info(rows)  # the same data the profile command's own validation plot shows
            panels.append(ValidationPanel(statistic, data["series"], data["lo"], data["hi"], dict(summary)))
    return ValidationInfo(panels) if panels else None

