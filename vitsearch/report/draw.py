"""Drawing functions: each takes the data :mod:`vitsearch.report.info` computed and draws it on a matplotlib Axes
(made on a fresh Figure when none is given), and returns the Axes. They compute nothing a test would need to check.

Figures are made with ``matplotlib.figure.Figure`` rather than pyplot: no display, no global figure registry to
leak from a long-running process, and the Agg canvas renders PNG and SVG alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..stats import plot_scatter
from .info import MIN_RANKED, FlopsInfo, OverlayInfo, ParetoInfo, TokenInfo, ValidationInfo
from .methods import MethodFrontsInfo

GREY = "#9a9a9a"
FRONT = "C0"
BUDGET = "#c0392b"


def new_axes(figsize: tuple[float, float] = (7.0, 4.8), ncols: int = 1, **kwargs: Any) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig.subplots(1, ncols, **kwargs)


def save_figure(fig: Any, stem: Path, formats: Sequence[str] = ("png", "svg"), dpi: int = 120) -> dict[str, Path]:
    """Write ``stem.png`` and ``stem.svg`` (or the given formats); SVGs carry no date, so a rebuilt report whose
    data did not change is byte-identical."""
    import matplotlib

    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        metadata = {"Date": None} if fmt == "svg" else None
        # A fixed salt: SVG element ids are otherwise random per run.
        with matplotlib.rc_context({"svg.hashsalt": "vitsearch"}):
            fig.savefig(path, format=fmt, dpi=dpi, metadata=metadata)
        paths[fmt] = path
    return paths


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="dimgrey")


def outside_legend(ax: Any) -> None:
    """The legend of ``ax`` right of the axes, where it hides no point. Constrained layout lays the axes out in
    the figure less a strip as wide as the longest label, and leaves the legend itself out of the layout: a legend
    it had to make room for would move the axes on every pass, and no two saves would be alike."""
    fig = ax.figure
    longest = max((len(label) for label in ax.get_legend_handles_labels()[1]), default=0)
    inches = min(0.7 + 0.055 * longest, 0.45 * fig.get_figwidth())  # 7-point text: about 0.055 inch a character
    fig.get_layout_engine().set(rect=(0.0, 0.0, 1.0 - inches / fig.get_figwidth(), 1.0))
    legend = ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    legend.set_in_layout(False)


def draw_pareto(info: ParetoInfo, ax: Any = None, *, legend: bool = True, annotate: bool = True) -> Any:
    """Trials (infeasible grey), the front as a step line, the budget dashed, the unpruned model (and its accuracy
    as a dotted line, in view wherever the model itself lies) and the uniform baselines marked."""
    if ax is None:
        ax = new_axes((8.6, 4.8))
    if info.step_x:
        ax.plot(info.step_x, info.step_y, color=FRONT, lw=2, zorder=2, label="Pareto front")
    if info.trained:
        ax.scatter([p.x for p in info.trained], [p.y for p in info.trained], s=22, color=FRONT, alpha=0.55,
                   zorder=3, label="trained, within budget")
        ax.scatter([p.x for p in info.front], [p.y for p in info.front], s=46, facecolor=FRONT, edgecolor="black",
                   zorder=4)
        if annotate:
            for p in info.labelled:
                ax.annotate(f"#{p.trial}", (p.x, p.y), xytext=(4, 4), textcoords="offset points", fontsize=7)
    if info.learned:
        ax.scatter([p.x for p in info.learned], [p.y for p in info.learned], marker="P", s=110, color="C3",
                   edgecolor="black", zorder=5, label="learned keep rates (SPViT)")
    if info.infeasible:
        ax.scatter([p.x for p in info.infeasible], [p.y for p in info.infeasible], s=22, color=GREY, zorder=3,
                   label="over budget")
    if info.rejected:
        # No accuracy to place them by: ticks along the bottom edge, at their predicted latency.
        ax.scatter(info.rejected, [0.03] * len(info.rejected), marker="|", s=140, color=GREY, zorder=3,
                   transform=ax.get_xaxis_transform(), label="rejected before training (over budget)")
    if info.budget is not None:
        ax.axvline(info.budget, color=BUDGET, ls="--", lw=1.3, label=f"budget {info.budget:.3g} ms")
    if info.unpruned is not None:
        ax.scatter([info.unpruned.x], [info.unpruned.y], marker="*", s=180, color="black", zorder=5,
                   label="unpruned" if info.x_view is None or info.unpruned.x <= info.x_view[1] else
                   f"unpruned (at {info.unpruned.x:.3g}, right of this view)")
        ax.axhline(info.unpruned.y, color="black", ls=":", lw=1, zorder=1, label="unpruned accuracy")
    if info.uniform:
        matched = [p for p, m in zip(info.uniform, info.uniform_matched) if m]
        unmatched = [p for p, m in zip(info.uniform, info.uniform_matched) if not m]
        if matched:
            ax.scatter([p.x for p in matched], [p.y for p in matched], marker="D", s=30, facecolor="none",
                       edgecolor="C1", zorder=4, label="uniform baseline, matched by the front")
        if unmatched:
            ax.scatter([p.x for p in unmatched], [p.y for p in unmatched], marker="D", s=30, color="C1", zorder=4,
                       label="uniform baseline, not matched" if info.front else "uniform baseline")
    if not (info.trained or info.infeasible or info.rejected or info.unpruned or info.uniform):
        _empty(ax, "no completed trials yet")
    if info.x_view is not None and info.y_view is not None:
        ax.set_xlim(*info.x_view)
        ax.set_ylim(*info.y_view)
    ax.set(xlabel=info.x_label, ylabel=info.y_label, title=info.title + (f"\n({info.outside})" if info.outside else ""))
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        outside_legend(ax)
    return ax


def draw_method_fronts(info: MethodFrontsInfo, ax: Any = None) -> Any:
    """Each method's configs and front in its own colour (a training-free method's dashed), the combined front in
    black, the budget dashed."""
    if ax is None:
        ax = new_axes((8.6, 4.8))
    for i, m in enumerate(info.methods):
        colour = f"C{i}"
        name = m.method + (" (training-free)" if m.training_free else "")
        ax.scatter([p.x for p in m.points], [p.y for p in m.points], s=18, color=colour, alpha=0.45, zorder=3)
        if m.step_x:
            ax.plot(m.step_x, m.step_y, color=colour, lw=1.6, ls="--" if m.training_free else "-", zorder=2,
                    label=f"{name} front")
    if info.combined.step_x:
        ax.plot(info.combined.step_x, info.combined.step_y, color="black", lw=2.6, alpha=0.6, zorder=1,
                label="combined front")
    if info.budget is not None:
        ax.axvline(info.budget, color=BUDGET, ls="--", lw=1.3, label=f"budget {info.budget:.3g} ms")
    if not info.methods:
        _empty(ax, "no config was trained within the budget yet")
    ax.set(xlabel=info.x_label, ylabel=info.y_label, title=info.title)
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        outside_legend(ax)
    return ax


def draw_overlay(info: OverlayInfo, ax: Any = None) -> Any:
    """Each study's trials and front in its own colour; its budget a dashed line in the same colour."""
    if ax is None:
        ax = new_axes((10.0, 5.2))
    for i, s in enumerate(info.series):
        color = f"C{i % 10}"
        ax.scatter([p.x for p in s.points], [p.y for p in s.points], s=14, color=color, alpha=0.35, zorder=2)
        ax.plot(s.step_x, s.step_y, color=color, lw=2, zorder=3, label=s.label)
        ax.scatter([p.x for p in s.front], [p.y for p in s.front], s=30, color=color, edgecolor="black", zorder=4)
        if s.budget is not None:
            ax.axvline(s.budget, color=color, ls="--", lw=1.1, zorder=1)
        if s.unpruned is not None:
            ax.scatter([s.unpruned.x], [s.unpruned.y], marker="*", s=150, color=color, edgecolor="black", zorder=5)
    ax.set(xlabel=info.x_label, ylabel=info.y_label,
           title="Pareto fronts (dashed: each study's budget, star: its unpruned model)")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    outside_legend(ax)
    return ax


def draw_tokens(info: TokenInfo, ax: Any = None) -> Any:
    """Tokens entering every block, one line per front config, the unpruned model dashed."""
    if ax is None:
        ax = new_axes((9.0, 4.2))
    if info.reference:
        ax.plot(range(len(info.reference)), info.reference, color="black", ls="--", lw=1.2, label="unpruned")
    for label, tokens in info.lines:
        ax.plot(range(len(tokens)), tokens, marker="o", ms=3, drawstyle="steps-mid", lw=1.5, label=label)
    if not info.lines:
        _empty(ax, "no front configs yet")
    depth = max([len(info.reference)] + [len(t) for _, t in info.lines])
    ax.set_xticks(range(depth))
    ax.set_ylim(bottom=0)
    ax.set(xlabel=info.x_label, ylabel=info.y_label, title="Token counts of the Pareto-front configs")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    outside_legend(ax)
    return ax


def draw_flops(info: FlopsInfo, axes: Sequence[Any] | None = None) -> tuple[Any, Any]:
    """Accuracy vs GMACs (left) beside accuracy vs predicted latency (right), sharing the accuracy axis; configs on
    one front but not the other are ringed in red on both."""
    if axes is None:
        axes = new_axes((12.5, 4.6), ncols=2, sharey=True)
    left, right = axes
    draw_pareto(info.gmacs, left, legend=False)
    draw_pareto(info.latency, right)
    left.set_title("accuracy vs GMACs", fontsize=10)
    right.set_title("accuracy vs predicted latency", fontsize=10)
    disagree = set(info.only_on_latency_front) | set(info.only_on_gmacs_front)
    for ax, pareto in ((left, info.gmacs), (right, info.latency)):
        ring = [p for p in pareto.trained if p.label in disagree]
        if ring:
            ax.scatter([p.x for p in ring], [p.y for p in ring], s=150, facecolor="none", edgecolor=BUDGET, lw=1.5,
                       zorder=6, label="on one front only")
    tau = (f"rank agreement of GMACs and latency over {info.ranked} trials, Kendall tau {info.kendall_tau:.2f}"
           if info.kendall_tau == info.kendall_tau else f"too few trials ({info.ranked}) for a rank agreement")
    left.figure.suptitle(f"Where FLOPs mislead: {tau}; {len(disagree)} config(s) on one front only", fontsize=10)
    outside_legend(right)  # again, now with the rings: one legend for both panels, right of them
    return left, right


def draw_validation(info: ValidationInfo, axes: Sequence[Any] | None = None) -> tuple[Any, ...]:
    """Predicted vs measured median latency of whole models: as measured, and at the table's speed where the
    table has drift references (the chart ``vitsearch profile --validate`` saves, with its drift-corrected twin)."""
    if axes is None:
        n = len(info.panels)
        axes = new_axes((5.2 * n, 5.4), ncols=n) if n > 1 else [new_axes((5.2, 5.4))]
    for ax, panel in zip(axes, info.panels):
        plot_scatter({"series": panel.series, "lo": panel.lo, "hi": panel.hi}, panel.summary, ax)
        x = panel.summary
        tau = f", tau {x['kendall_tau']:.2f}" if x.get("count", 0) >= MIN_RANKED else ""  # no rank from a few points
        ax.set_title(f"{panel.statistic} ({x.get('count', '?')}): median |err| {x['median_abs_error_pct']:.1f}%, "
                     f"{100 * x['within_10pct']:.0f}% within 10%{tau}", fontsize=9)
        ax.set(xlabel=f"measured median latency, {panel.statistic} (ms)", ylabel="predicted latency (ms)")
    return tuple(axes)
