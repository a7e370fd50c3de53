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
from typing import Any, Sequence, Union

from . import draw
from .info import flops_info, overlay_info, pareto_info, token_info, validation_info
from .methods import method_fronts_info
from .load import StudyRecord, load_study
from .tables import (DASH, MEASURED_NOTE, SPLITS_NOTE, Table, baselines_table, entry_headers, entry_rows,
                     finalized_table, headline, settings_table, trials_table, validation_text)

logger = logging.getLogger(__name__)

FIGURES = "figures"


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
# Figures.

def build_figures(study: StudyRecord, folder: Path) -> list[Figure]:
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
        "before training, so without accuracy). Accuracy on the test split. The step line is the search's Pareto front, "
        "chosen on val accuracy (never on test) and drawn at each config's test accuracy. Black star: the unpruned model; diamonds: uniform keep ratios at the standard placements."),
        draw.draw_pareto(lat))
    methods = method_fronts_info(study)
    if len(methods.methods) > 1:
        add("methods", "Fronts per method", (
            "Each method's trials and uniform baselines within the budget and its own front (chosen on val, drawn at "
            "test accuracy), a training-free method's dashed; black: the combined front. " + methods.verdict + "."),
            draw.draw_method_fronts(methods))
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

def sections(study: StudyRecord, figures: Sequence[Figure]) -> list[Section]:
    by_name = {f.name: f for f in figures}
    summary = [headline(study)]
    if len({e.method for e in [*study.trials, *study.baselines] if e.kind != "unpruned"}) > 1:
        summary.append(f"**Methods:** {method_fronts_info(study).verdict}.")
    out = [Section("Summary", summary + [f"Note: {n}" for n in study.notes])]
    front: list[Block] = []
    if study.front:
        front.append(Table(entry_headers(study, "trial"), entry_rows(study.front, study),
                           note="The front is chosen on val. " + SPLITS_NOTE + " " + MEASURED_NOTE,
                           css_class="front"))
    else:
        front.append("No config is on the Pareto front yet: no trial was trained within the budget.")
    front += [by_name[n] for n in ("pareto", "methods", "tokens") if n in by_name]
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


def write_report(study: StudyRecord) -> ReportFiles:
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


def summary(study: StudyRecord, files: ReportFiles) -> dict[str, Any]:
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

