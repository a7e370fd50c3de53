"""The study report: ``report.md`` and a self-contained ``report.html`` (figures embedded as data URIs, no external
resource, so it opens offline and survives being mailed), with the figures as PNG and SVG in ``figures/``.

Both documents are rendered from one list of :class:`Section` (text, tables and figures), so they never disagree.
"""
from __future__ import annotations

import base64
import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from .. import __version__
from ..pareto import dominated_by_front
from . import draw
from .info import MIN_RANKED, flops_info, overlay_info, pareto_info, token_info, validation_info
from .load import Entry, Study, load_study

logger = logging.getLogger(__name__)

DASH = "—"  # a value that is not known (not measured, not trained)
FIGURES = "figures"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    css_class: str = ""


@dataclass
class Figure:
    name: str  # file stem under figures/
    title: str
    caption: str
    files: dict[str, Path]  # format -> path


Block = Union[str, Table, Figure]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    collapsed: bool = False  # long detail: folded away in the HTML


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    figures: dict[str, dict[str, Path]]  # figure name -> format -> path

    def to_dict(self) -> dict[str, Any]:
        return {"markdown": str(self.markdown), "html": str(self.html),
                "figures": {name: {fmt: str(p) for fmt, p in files.items()} for name, files in self.figures.items()}}


# ---------------------------------------------------------------------------------------------------------------
# Formatting: one place decides how a number reads.

def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return DASH
    return f"{ms:.3f}" if ms < 10 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def fmt_acc(accuracy: float | None) -> str:
    return DASH if accuracy is None else f"{100 * accuracy:.2f}"


def fmt_delta(accuracy: float | None, reference: float | None) -> str:
    if accuracy is None or reference is None:
        return DASH
    return f"{100 * (accuracy - reference):+.2f}"


def fmt_gmacs(gmacs: float | None) -> str:
    return DASH if gmacs is None else f"{gmacs:.4g}"


def fmt_seconds(seconds: float | None) -> str:
    if not seconds:
        return DASH
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def fmt_speedup(ms: float | None, unpruned_ms: float | None) -> str:
    if not ms or not unpruned_ms:
        return DASH
    return f"{unpruned_ms / ms:.2f}×"


def fmt_tokens(tokens: Sequence[int]) -> str:
    """Per-block counts, runs folded: ``65×3 · 46×2 · 33×3`` for 65, 65, 65, 46, 46, 33, 33, 33."""
    if not tokens:
        return DASH
    runs: list[list[int]] = []
    for n in tokens:
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    return " · ".join(f"{n}×{k}" if k > 1 else str(n) for n, k in runs)


def fmt_selectors(e: Entry) -> str:
    return ", ".join(f"{b}: {k:g}" for b, k in zip(e.blocks, e.keep)) or DASH


def _safe_storage(url: str | None) -> str:
    """A storage URL without its credentials."""
    if not url:
        return "journal file (journal.log in the study folder)"
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


# ---------------------------------------------------------------------------------------------------------------
# Content.

def entry_rows(entries: Iterable[Entry], study: Study, *, with_kind: bool = False) -> list[list[str]]:
    reference = study.unpruned.accuracy if study.unpruned else None
    rows = []
    for e in entries:
        row = [e.kind] if with_kind else [DASH if e.trial is None else str(e.trial)]
        row += [e.method, fmt_selectors(e), fmt_tokens(e.block_tokens), fmt_acc(e.accuracy),
                fmt_delta(e.accuracy, reference), fmt_ms(e.predicted_ms), fmt_ms(e.measured_ms), fmt_gmacs(e.gmacs),
                fmt_speedup(e.predicted_ms, study.unpruned_ms), fmt_seconds(e.train_seconds)]
        rows.append(row)
    return rows


def entry_headers(study: Study, first: str) -> list[str]:
    return [first, "method", "selectors (block: keep)", "tokens per block", f"{metric_short(study)} (%)",
            "Δ vs unpruned (points)", "predicted (ms)", "measured (ms)", GMACS_HEADER, "speedup (predicted)",
            "brief training"]


def metric_short(study: Study) -> str:
    return {"top1": "top-1", "top5": "top-5"}.get(study.metric, study.metric)


GMACS_HEADER = "GMACs (matmuls)"  # vitsearch.flops.GMACS: one meaning in every table

MEASURED_NOTE = (f"Measured: end to end on the study's device, where a finalized model or the latency table's "
                 f"validation measured that config; {DASH} where only predicted. Speedup: unpruned predicted latency "
                 f"over the config's.")


def headline(study: Study) -> str:
    """The decision in one paragraph: the best config within the budget and what it costs."""
    trained = [t for t in study.trials if t.trained]
    rejected = sum(1 for t in study.trials if not t.trained)
    if not study.trials:
        return "**This study has no completed trials yet**, so there is no front to choose from. " + \
            " ".join(study.notes[:1])
    over = sum(1 for t in study.trials if not t.trained and "over budget" in t.status)
    why = "predicted over the budget" if over == rejected else f"{over} predicted over the budget"
    parts = [f"{len(study.trials)} completed trials: {len(trained)} trained, {rejected} rejected before training "
             f"({why}); {len(study.front)} on the Pareto front."]
    best = max((t for t in trained if t.feasible), key=lambda t: (t.accuracy, -t.predicted_ms), default=None)
    unpruned = study.unpruned
    if best is None:
        parts.append("No trained config is within the budget.")
    else:
        text = (f"**Most accurate within the budget:** trial {best.trial}, `{best.config}`: "
                f"{fmt_acc(best.accuracy)}% {metric_short(study)}")
        if unpruned is not None and unpruned.accuracy is not None:
            text += f" ({fmt_delta(best.accuracy, unpruned.accuracy)} points vs unpruned {fmt_acc(unpruned.accuracy)}%)"
        text += f" at {fmt_ms(best.predicted_ms)} ms predicted"
        if study.unpruned_ms:
            text += (f", {fmt_speedup(best.predicted_ms, study.unpruned_ms)} faster than unpruned "
                     f"({fmt_ms(study.unpruned_ms)} ms)")
        parts.append(text + ".")
    uniform = [b for b in study.baselines if b.kind == "uniform" and b.feasible and b.accuracy is not None]
    if uniform and study.front:
        front = [(e.accuracy, e.predicted_ms) for e in study.front if e.accuracy is not None]
        beaten = [b.config for b in uniform if not dominated_by_front(front, (b.accuracy, b.predicted_ms))]
        parts.append(f"The front matches or beats {len(uniform) - len(beaten)} of the {len(uniform)} uniform baselines "
                     "within the budget" + (f"; not {', '.join(f'`{c}`' for c in beaten)}, which a longer search "
                                            "might still find." if beaten else "."))
    parts.append(training_cost(study))
    if best is not None and best.trial is not None:
        parts.append(next_step(study, best.trial))
    return " ".join(p for p in parts if p)


def training_cost(study: Study) -> str:
    """What the search spent on training: per candidate and in all (the baselines apart)."""
    each = [t.train_seconds for t in study.trials if t.trained and t.train_seconds]
    baselines = sum(b.train_seconds for b in study.baselines)
    if not each and not baselines:
        return ""
    text = "Brief training: "
    if each:
        median = sorted(each)[len(each) // 2]
        text += f"{len(each)} candidates in {fmt_seconds(sum(each))} (median {fmt_seconds(median)} each)"
    if baselines:
        text += f"{', plus ' if each else ''}{fmt_seconds(baselines)} for the baselines"
    return text + "."


def next_step(study: Study, trial: int) -> str:
    """The command to run next for the most accurate trial within the budget."""
    if any(e.trial == trial for e in study.finalized):
        return f"Trial {trial} is finalized (see Finalized models)."
    where = "" if study.folder.parent.resolve() == Path("reports").resolve() else f" --reports {study.folder.parent}"
    return f"**Next:** `vitsearch finalize {study.name} --trial {trial}{where}` trains it with the full schedule, " \
           "exports it to ONNX and measures it on the device."


def settings_table(study: Study) -> Table:
    m, s = study.meta, study.meta.get("settings") or {}
    tm = m.get("latency_table_meta") or {}
    dev, rt, geo = tm.get("device") or {}, tm.get("runtime") or {}, tm.get("geometry") or {}
    space = m.get("space") or {}
    train = s.get("train") or {}
    fastest = m.get("fastest") or {}
    rows = [
        ["study", f"{study.name} (created {m.get('created', '?')})"],
        ["model", f"{m.get('model', '?')}, weights {m.get('checkpoint', '?')} "
                  f"(sha256 {str(m.get('sha256', '?'))[:16]}…)"],
        ["dataset", str(m.get("dataset_description") or m.get("dataset", "?"))],
        ["device", f"{m.get('device', '?')}: {dev.get('description', '?')}; "
                   f"{rt.get('runtime', dev.get('runtime', '?'))} "
                   f"{rt.get('version', '')}, threads {tm.get('threads', '?')}"
                   + (f", {rt['cpus']} CPUs on {rt.get('host', '?')}" if rt.get("cpus") else "")],
        ["latency table", f"{m.get('latency_table', '?')} ({geo.get('key', '?')}, "
                          f"batch {tm.get('batch', m.get('batch', '?'))}, "
                          f"{tm.get('precision', '?')}, profiled {tm.get('date', '?')})"],
        ["budget", f"{m.get('budget', '?')} = {fmt_ms(study.budget_ms)} ms (unpruned {fmt_ms(study.unpruned_ms)} ms; "
                   f"fastest config the space allows: {fastest.get('config', '?')} at {fmt_ms(fastest.get('ms'))} ms)"],
        ["search space", f"methods {', '.join(space.get('methods', []))}; selectors at blocks "
                         f"{space.get('blocks', '?')}, at most {space.get('max_selectors', '?')}; keep "
                         f"{space.get('keep_min', '?')}..{space.get('keep_max', '?')} "
                         f"step {space.get('keep_step', '?')}"
                         f" ({space.get('source', 'built-in space')})"],
        ["baselines", f"uniform keep {space.get('baseline_keep', '?')} at blocks {space.get('baseline_blocks', '?')}"],
        ["strategy", f"{m.get('strategy', '?')}, sampler {s.get('sampler', '?')}, seed {s.get('seed', '?')}, "
                     f"{s.get('trials', '?')} trials requested; training {train.get('steps', '?')} steps of batch "
                     f"{train.get('batch_size', '?')} per candidate"],
        ["objectives", f"{', '.join(study.objectives) or '?'}; metric {study.metric}"],
        ["storage", _safe_storage(s.get("storage"))],
        ["versions", ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items()) or "?"],
        ["report", f"vitsearch {__version__}"],
    ]
    return Table(["setting", "value"], rows, css_class="settings")


def trials_table(study: Study) -> Table:
    front = [(e.accuracy, e.predicted_ms) for e in study.front if e.accuracy is not None]
    on_front = {e.config for e in study.front}
    rows = []
    for t in sorted(study.trials, key=lambda t: (t.trial is None, t.trial)):
        where = "front" if t.config in on_front else "matched" if t.accuracy is not None and \
            dominated_by_front(front, (t.accuracy, t.predicted_ms)) else DASH
        rows.append([DASH if t.trial is None else str(t.trial), t.config, t.status or DASH, fmt_acc(t.accuracy),
                     fmt_ms(t.predicted_ms), fmt_ms(t.measured_ms), fmt_gmacs(t.gmacs), fmt_seconds(t.train_seconds),
                     "yes" if t.feasible else "no", where])
    return Table(["trial", "config", "status", f"{metric_short(study)} (%)", "predicted (ms)", "measured (ms)",
                  GMACS_HEADER, "brief training", "within budget", "front"], rows,
                 note="front: on the Pareto front; matched: some front config is as accurate and as fast.")


def baselines_table(study: Study) -> Table:
    front = [(e.accuracy, e.predicted_ms) for e in study.front if e.accuracy is not None]
    rows = entry_rows(study.baselines, study, with_kind=True)
    for row, b in zip(rows, study.baselines):
        matched = b.accuracy is not None and front and dominated_by_front(front, (b.accuracy, b.predicted_ms))
        row += ["yes" if b.feasible else "no", "yes" if matched else "no" if front else DASH]
    return Table(entry_headers(study, "kind") + ["within budget", "matched by the front"], rows,
                 note="Uniform: the same keep ratio at the search space's standard placements, trained like the "
                      "candidates. " + MEASURED_NOTE)


def finalized_table(study: Study) -> Table:
    # Fields of finalized records this report does not know (issue 6 may add some) become extra columns.
    extra = sorted({k for e in study.finalized for k, v in e.extra.items() if isinstance(v, (int, float, str))})
    rows = []

    def error(predicted: float, measured: Any) -> str:
        return f"{100 * (predicted - measured) / measured:+.1f}" if isinstance(measured, float) else DASH

    for e, row in zip(study.finalized, entry_rows(study.finalized, study)):
        rows.append(row + [error(e.predicted_ms, e.measured_ms),
                           error(e.predicted_ms, e.extra.get("measured_at_table_speed_ms"))]
                    + [str(e.extra.get(k, DASH)) for k in extra])
    return Table(entry_headers(study, "trial") + ["prediction error (%)", "at the table's speed (%)"] + extra, rows,
                 note=MEASURED_NOTE + " At the table's speed: the measurement scaled by the drift reference timed "
                                      "beside it (the machine's own speed change since profiling taken out).")


def validation_text(study: Study) -> str:
    measured = [e for e in study.finalized if e.measured_ms is not None]
    errors = sorted(abs(100 * (e.predicted_ms - e.measured_ms) / e.measured_ms) for e in measured)
    own = (f"{len(measured)} finalized model(s) of this study measured on the device: median |error| "
           f"{errors[len(errors) // 2]:.1f}% (see Finalized models). ") if measured else ""
    v = study.validation
    if v is None:
        return own + next((n for n in study.notes if "validation" in n), "The latency table has no validation.")
    s = v.summary

    def line(x: dict) -> str:
        tau = (f", rank agreement (Kendall tau) {x['kendall_tau']:.3f}"
               if x.get("count", s.get("count", 0)) >= MIN_RANKED else "")
        return (f"median |error| {x['median_abs_error_pct']:.1f}%, 95th percentile {x['p95_abs_error_pct']:.1f}%, "
                f"{100 * x['within_10pct']:.0f}% within 10%, mean error {x['mean_error_pct']:+.1f}%{tau}")

    device = (s.get("device") or {}).get("name", "?")
    text = own + (f"{s.get('count', len(v.rows))} random pruned models measured end to end on {device} "
            f"({v.paths['json']}, {s.get('date', '?')}): medians as measured: {line(s)}.")
    if s.get("drift_corrected"):
        text += (f" At the table's speed (each measurement scaled by the drift reference timed beside it, which takes "
                 f"out the machine's own speed changes since profiling): {line(s['drift_corrected'])}.")
    return text


# ---------------------------------------------------------------------------------------------------------------
# Figures.

def build_figures(study: Study, folder: Path) -> list[Figure]:
    """Draw every figure the study has data for into ``folder`` (PNG and SVG)."""
    figures: list[Figure] = []

    def add(name: str, title: str, caption: str, ax: Any) -> None:
        fig = ax.figure
        figures.append(Figure(name, title, caption, draw.save_figure(fig, folder / name)))

    if not study.trials and not study.baselines:
        return figures
    lat = pareto_info(study)
    add("pareto", "Accuracy vs predicted latency", (
        f"Every trial at its predicted latency on {study.device}; grey: over the budget (ticks on the axis: rejected "
        "before training, so without accuracy). The step line is the Pareto front: the best accuracy reachable at each "
        "latency. Black star: the unpruned model; diamonds: uniform keep ratios at the standard placements."),
        draw.draw_pareto(lat))
    tokens = token_info([study])
    if tokens.lines:
        add("tokens", "Tokens per block of the front's configs", (
            "How many tokens enter each block for every Pareto-front config, against the unpruned model (dashed): "
            "where this device's front spends its budget."), draw.draw_tokens(tokens))
    flops = flops_info(study)
    if flops.latency.trained and flops.gmacs.trained:
        left, _ = draw.draw_flops(flops)
        add("flops", "Accuracy vs GMACs beside accuracy vs latency", (
            "The same trials against multiply-accumulates (left) and predicted latency (right). Ringed: configs on one "
            "front only, where choosing by FLOPs would pick differently than choosing by latency on this device. "
            f"Only on the latency front: {', '.join(flops.only_on_latency_front) or 'none'}; only on the GMACs front: "
            f"{', '.join(flops.only_on_gmacs_front) or 'none'}."), left)
    val = validation_info(study)
    if val is not None:
        add("validation", "Predicted vs measured latency", (
            "Whole models, latency predicted from the table against measured end to end on the device (this study's "
            "finalized models, and the table's validation of random pruned models); the band is ±10%. "
            "At the table's speed: the measurements scaled by the drift reference timed beside each, which takes out "
            "the machine's own speed changes."),
            draw.draw_validation(val)[0])
    return figures


# ---------------------------------------------------------------------------------------------------------------
# The document, then its two renderings.

def sections(study: Study, figures: Sequence[Figure]) -> list[Section]:
    by_name = {f.name: f for f in figures}
    out = [Section("Summary", [headline(study)] + [f"Note: {n}" for n in study.notes])]
    front: list[Block] = []
    if study.front:
        front.append(Table(entry_headers(study, "trial"), entry_rows(study.front, study), note=MEASURED_NOTE,
                           css_class="front"))
    else:
        front.append("No config is on the Pareto front yet: no trial was trained within the budget.")
    front += [by_name[n] for n in ("pareto", "tokens") if n in by_name]
    out.append(Section("Pareto front", front))
    if "flops" in by_name:
        out.append(Section("FLOPs vs latency", [by_name["flops"]]))
    if study.finalized:
        out.append(Section("Finalized models", [finalized_table(study)]))
    out.append(Section("Baselines", [baselines_table(study)] if study.baselines else
                       ["No baselines were evaluated yet."]))
    val: list[Block] = [validation_text(study)]
    if "validation" in by_name:
        val.append(by_name["validation"])
    out.append(Section("Predicted vs measured latency", val))
    out.append(Section("Settings and provenance", [settings_table(study)]))
    if study.trials:
        out.append(Section(f"All trials ({len(study.trials)})", [trials_table(study)], collapsed=True))
    return out


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, doc: Sequence[Section], folder: Path) -> str:
    lines = [f"# {title}", ""]
    for section in doc:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
                lines.append("|" + "|".join("---" for _ in block.headers) + "|")
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                lines += ["", f"*{block.note}*"] if block.note else []
            elif isinstance(block, Figure):
                png = block.files["png"].relative_to(folder).as_posix()
                svg = block.files["svg"].relative_to(folder).as_posix() if "svg" in block.files else None
                lines += [f"![{block.title}]({png})", "",
                          f"*{block.title}.* {block.caption}" + (f" ([SVG]({svg}))" if svg else "")]
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1180px;
       padding: 0 1rem; color: #1d1d1f; }
h1 { font-size: 1.6rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: 13px; }
th, td { border: 1px solid #d5d5d5; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f3f4f6; } tbody tr:nth-child(even) { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.settings td:first-child { font-weight: 600; white-space: nowrap; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #444; max-width: 900px; } .note { font-size: 13px; color: #555; }
code { background: #f3f4f6; padding: 0 .2rem; border-radius: 3px; }
"""


def _inline(text: str) -> str:
    """Escape, then the two bits of Markdown the prose uses: **bold** and `code`."""
    out, bold, code = [], False, False
    for i, part in enumerate(html.escape(text).replace("**", "\0").split("\0")):
        if i:
            out.append("</strong>" if bold else "<strong>")
            bold = not bold
        pieces = part.split("`")
        for j, piece in enumerate(pieces):
            if j:
                out.append("</code>" if code else "<code>")
                code = not code
            out.append(piece)
    return "".join(out)


def _is_number(cell: str) -> bool:
    return cell == DASH or cell.replace("×", "").replace("+", "").replace("-", "").replace(".", "", 1).isdigit()


def to_html(title: str, doc: Sequence[Section]) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for section in doc:
        anchor = "".join(c if c.isalnum() else "-" for c in section.title.lower()).strip("-")
        parts.append(f'<section id="{anchor}">')
        if section.collapsed:
            parts.append(f"<details><summary><h2 style='display:inline'>{html.escape(section.title)}</h2></summary>")
        else:
            parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                cls = f' class="{block.css_class}"' if block.css_class else ""
                parts.append(f"<table{cls}><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
                             + "</tr></thead><tbody>")
                for row in block.rows:
                    parts.append("<tr>" + "".join(
                        f'<td class="num">{html.escape(c)}</td>' if _is_number(c) else f"<td>{html.escape(c)}</td>"
                        for c in row) + "</tr>")
                parts.append("</tbody></table>")
                if block.note:
                    parts.append(f'<p class="note">{_inline(block.note)}</p>')
            elif isinstance(block, Figure):
                data = base64.b64encode(block.files["png"].read_bytes()).decode("ascii")
                parts.append(f'<figure id="fig-{block.name}"><img src="data:image/png;base64,{data}" '
                             f'alt="{html.escape(block.title)}"><figcaption>'
                             f"<strong>{html.escape(block.title)}.</strong> {html.escape(block.caption)}"
                             "</figcaption></figure>")
            else:
                parts.append(f"<p>{_inline(block)}</p>")
        parts.append("</details></section>" if section.collapsed else "</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(study: Study) -> ReportFiles:
    """Draw the figures and write report.md and report.html into the study folder."""
    folder = study.folder
    figures = build_figures(study, folder / FIGURES)
    title = f"vitsearch study {study.name}"
    doc = sections(study, figures)
    md, page = folder / "report.md", folder / "report.html"
    md.write_text(to_markdown(title, doc, folder))
    page.write_text(to_html(title, doc))
    logger.info("report of %s: %s, %s (%d figures)", study.name, md, page, len(figures))
    return ReportFiles(md, page, {f.name: f.files for f in figures})


def report(study: str | Path, reports: str | Path = "reports") -> ReportFiles:
    """Load a study (a name under ``reports`` or a folder) and write its report."""
    return write_report(load_study(study, reports))


def summary(study: Study, files: ReportFiles) -> dict[str, Any]:
    """The JSON line the CLI ends with."""
    return {"study": study.name, "folder": str(study.folder), **files.to_dict(), "trials": len(study.trials),
            "trained": sum(t.trained for t in study.trials), "front": [e.config for e in study.front],
            "validation": study.validation is not None, "notes": study.notes}


def plot_overlay(studies: Sequence[str | Path], reports: str | Path = "reports",
                 output: str | Path | None = None) -> tuple[dict[str, Path], list[str]]:
    """Overlay several studies' trials and fronts on one chart; returns the files written and the studies left out
    (with the reason). ``output`` without a suffix gets .png and .svg; with one, that format only."""
    loaded, repeated = [], []
    for s in studies:
        study = load_study(s, reports)
        if any(study.folder.resolve() == other.folder.resolve() for other in loaded):
            repeated.append(f"{s}: the same study as one given before, drawn once")
            continue
        loaded.append(study)
    info = overlay_info(loaded)
    ax = draw.draw_overlay(info)
    if output is None:
        stem = (loaded[0].folder / FIGURES / "overlay" if len(loaded) == 1 else
                Path(reports) / ("overlay-" + "+".join(s.name for s in loaded))[:120])
        formats: Sequence[str] = ("png", "svg")
    else:
        output = Path(output)
        suffix = output.suffix.lstrip(".").lower()
        stem, formats = (output.with_suffix(""), (suffix,)) if suffix else (output, ("png", "svg"))
    files = draw.save_figure(ax.figure, stem, formats)
    skipped = repeated + info.skipped
    for reason in skipped:
        logger.warning("left out of the overlay: %s", reason)
    return files, skipped

