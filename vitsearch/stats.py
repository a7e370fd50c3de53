"""Predicted against measured: rank agreement, error statistics and the scatter plot of the two.

Neutral ground for the latency table's validation (:mod:`vitsearch.latency.validate`) and the report
(:mod:`vitsearch.report`), so that neither stands on the other. Drawing is on a ``matplotlib.figure.Figure``;
nothing here chooses a matplotlib backend.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either ranking reduce the denominator)."""
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denom if denom else float("nan")


def summarise(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Median and p95 of the absolute error in %, the share within 10%, the mean signed error and Kendall's tau."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    err = 100.0 * (p - m) / m
    return {"count": int(p.size), "median_abs_error_pct": float(np.median(np.abs(err))),
            "p95_abs_error_pct": float(np.percentile(np.abs(err), 95)),
            "within_10pct": float(np.mean(np.abs(err) <= 10.0)), "mean_error_pct": float(err.mean()),
            "kendall_tau": kendall_tau(p.tolist(), m.tolist())}


def scatter_info(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the scatter plot shows, as data (tested without drawing): per method (measured, predicted) ms."""
    methods = sorted({r["method"] for r in rows})
    series = {m: ([r["measured_ms"] for r in rows if r["method"] == m],
                  [r["predicted_ms"] for r in rows if r["method"] == m]) for m in methods}
    values = [v for r in rows for v in (r["measured_ms"], r["predicted_ms"])]
    return {"series": series, "lo": min(values), "hi": max(values)}


def plot_scatter(info: Mapping[str, Any], summary: Mapping[str, Any], ax: Any = None) -> Any:
    """Predicted vs measured, the identity line and a ±10% band, on ``ax`` (a new Figure's Axes if None)."""
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(5, 5)).subplots()
    lo, hi = info["lo"] * 0.95, info["hi"] * 1.05
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="predicted = measured")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="grey", alpha=0.2, label="±10%")
    for method, (measured, predicted) in info["series"].items():
        ax.scatter(measured, predicted, s=18, label=method)
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="measured latency (ms)", ylabel="predicted latency (ms)",
           title=(f"median |err| {summary['median_abs_error_pct']:.1f}%, "
                  f"{100 * summary['within_10pct']:.0f}% within 10%, tau {summary['kendall_tau']:.2f}"))
    ax.legend(loc="upper left", fontsize=8)
    return ax
