"""Pareto fronts and hypervolume of (accuracy up, latency down) points: pure functions, shared by the search,
the reports and the benchmarks."""
from __future__ import annotations

from typing import Sequence


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a = (accuracy, latency) is at least as accurate and as fast as b, and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, by ascending latency."""
    front = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))


def hypervolume(points: Sequence[tuple[float, float]], *, ref_latency: float, ref_accuracy: float = 0.0) -> float:
    """Area dominated by the points above ``ref_accuracy`` and below ``ref_latency`` (ms x accuracy)."""
    front = [points[i] for i in pareto_front(points) if points[i][1] < ref_latency and points[i][0] > ref_accuracy]
    area, best = 0.0, ref_accuracy
    # Walk from the slowest to the fastest: each point adds the accuracy it gains over faster ones' best.
    front.sort(key=lambda p: p[1])
    for i, (acc, lat) in enumerate(front):
        right = front[i + 1][1] if i + 1 < len(front) else ref_latency
        best = max(best, acc)
        area += (right - lat) * (best - ref_accuracy)
    return area


def dominated_by_front(front: Sequence[tuple[float, float]], point: tuple[float, float]) -> bool:
    """The point is matched or beaten: some front point is at least as accurate at equal or lower latency."""
    return any(f[0] >= point[0] and f[1] <= point[1] for f in front)
