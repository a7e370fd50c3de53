"""What the report says in words and tables: one place decides how a number reads (``fmt_*``), and the tables and
text of each section are built from a :class:`~vitsearch.report.load.StudyRecord`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .. import __version__
from ..pareto import dominated_by_front
from ..pruning import PruneConfig
from .info import MIN_RANKED
from .load import Entry, StudyRecord

DASH = "—"  # a value that is not known (not measured, not trained)


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    css_class: str = ""


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
    """Block: setting pairs, and a setting for every block (``METHOD:r=8``) as "every: 8"."""
    every = PruneConfig.parse(e.config).every
    pairs = ([f"every: {every:g}"] if every is not None else []) + [f"{b}: {k:g}" for b, k in zip(e.blocks, e.keep)]
    return ", ".join(pairs) or DASH


def _safe_storage(url: str | None) -> str:
    """A storage URL without its secrets (study.json has it redacted already; a hand-edited one may not be)."""
    from ..search.storage_url import redact

    return redact(url) if url else "journal file (journal.log in the study folder)"


# ---------------------------------------------------------------------------------------------------------------
# Content.

def entry_rows(entries: Iterable[Entry], study: StudyRecord, *, with_kind: bool = False) -> list[list[str]]:
    reference = study.unpruned.accuracy if study.unpruned else None
    rows = []
    for e in entries:
        row = [e.kind] if with_kind else [DASH if e.trial is None else str(e.trial)]
        method = f"{e.method} (learned rates)" if e.kind == "learned" else e.method
        row += [method, fmt_selectors(e), fmt_tokens(e.block_tokens), fmt_acc(e.accuracy),
                fmt_delta(e.accuracy, reference), fmt_acc(e.val_accuracy), fmt_ms(e.predicted_ms), fmt_ms(e.measured_ms), fmt_gmacs(e.gmacs),
                fmt_speedup(e.predicted_ms, study.unpruned_ms), fmt_seconds(e.train_seconds)]
        rows.append(row)
    return rows


def entry_headers(study: StudyRecord, first: str) -> list[str]:
    return [first, "method", "selectors (block: keep)", "tokens per block", f"{metric_short(study)} test (%)",
            "Δ vs unpruned (points)", "val (%)", "predicted (ms)", "measured (ms)", GMACS_HEADER, "speedup (predicted)",
            "brief training"]


def metric_short(study: StudyRecord) -> str:
    return {"top1": "top-1", "top5": "top-5"}.get(study.metric, study.metric)


GMACS_HEADER = "GMACs (matmuls)"  # vitsearch.flops.GMACS: one meaning in every table

# What the two accuracy columns are, said wherever they are shown.
SPLITS_NOTE = ("Accuracy is on the test split, which no decision of the search reads; val (%) is the val split's, "
               "what the search ranked and selected by (its front, its pick).")

MEASURED_NOTE = (f"Measured: end to end on the study's device, where a finalized model or the latency table's "
                 f"validation measured that config; {DASH} where only predicted. Speedup: unpruned predicted latency "
                 f"over the config's.")


def headline(study: StudyRecord) -> str:
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
    # The pick is the search's: the most accurate on val; the accuracy stated is test's.
    best = max((t for t in trained if t.feasible), key=lambda t: (t.ranked_by, -t.predicted_ms), default=None)
    unpruned = study.unpruned
    if best is None:
        parts.append("No trained config is within the budget.")
    else:
        text = (f"**Most accurate within the budget (on val):** trial {best.trial}, `{best.config}`: "
                f"{fmt_acc(best.accuracy)}% {metric_short(study)} on test")
        if best.val_accuracy is not None:
            text += f" (val {fmt_acc(best.val_accuracy)}%)"
        if unpruned is not None and unpruned.accuracy is not None:
            text += (f", {fmt_delta(best.accuracy, unpruned.accuracy)} points vs unpruned "
                     f"{fmt_acc(unpruned.accuracy)}% on test")
        text += f" at {fmt_ms(best.predicted_ms)} ms predicted"
        if study.unpruned_ms:
            text += (f", {fmt_speedup(best.predicted_ms, study.unpruned_ms)} faster than unpruned "
                     f"({fmt_ms(study.unpruned_ms)} ms)")
        parts.append(text + ".")
    uniform = [b for b in study.baselines if b.kind == "uniform" and b.feasible and b.accuracy is not None]
    if uniform and study.front:
        front = [(e.ranked_by, e.predicted_ms) for e in study.front if e.accuracy is not None]
        beaten = [b.config for b in uniform if not dominated_by_front(front, (b.ranked_by, b.predicted_ms))]
        parts.append(f"On val, the front matches or beats {len(uniform) - len(beaten)} of the {len(uniform)} uniform "
                     "baselines within the budget" + (f"; not {', '.join(f'`{c}`' for c in beaten)}, which a longer search "
                                            "might still find." if beaten else "."))
    parts.append(training_cost(study))
    if best is not None and best.trial is not None:
        parts.append(next_step(study, best.trial))
    return " ".join(p for p in parts if p)


def training_cost(study: StudyRecord) -> str:
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


def next_step(study: StudyRecord, trial: int) -> str:
    """The command to run next for the most accurate trial within the budget."""
    if any(e.trial == trial for e in study.finalized):
        return f"Trial {trial} is finalized (see Finalized models)."
    where = "" if study.folder.parent.resolve() == Path("reports").resolve() else f" --reports {study.folder.parent}"
    return f"**Next:** `vitsearch finalize {study.name} --trial {trial}{where}` trains it with the full schedule, " \
           "exports it to ONNX and measures it on the device."


def settings_table(study: StudyRecord) -> Table:
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
        *([["scoring", str(m["scoring"]["why"])]] if (m.get("scoring") or {}).get("why") else []),
        ["storage", _safe_storage(s.get("storage"))],
        ["versions", ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items()) or "?"],
        ["report", f"vitsearch {__version__}"],
    ]
    return Table(["setting", "value"], rows, css_class="settings")


def trials_table(study: StudyRecord) -> Table:
    front = [(e.ranked_by, e.predicted_ms) for e in study.front if e.accuracy is not None]
    on_front = {e.config for e in study.front}
    rows = []
    for t in sorted(study.trials, key=lambda t: (t.trial is None, t.trial)):
        where = "front" if t.config in on_front else "matched" if t.accuracy is not None and \
            dominated_by_front(front, (t.ranked_by, t.predicted_ms)) else DASH
        rows.append([DASH if t.trial is None else str(t.trial), t.config, t.status or DASH, fmt_acc(t.accuracy),
                     fmt_acc(t.val_accuracy), fmt_ms(t.predicted_ms), fmt_ms(t.measured_ms), fmt_gmacs(t.gmacs), fmt_seconds(t.train_seconds),
                     "yes" if t.feasible else "no", where])
    return Table(["trial", "config", "status", f"{metric_short(study)} test (%)", "val (%)", "predicted (ms)",
                  "measured (ms)", GMACS_HEADER, "brief training", "within budget", "front"], rows,
                 note="front: on the Pareto front; matched: some front config is as accurate on val and as fast. "
                      + SPLITS_NOTE)


def baselines_table(study: StudyRecord) -> Table:
    front = [(e.ranked_by, e.predicted_ms) for e in study.front if e.accuracy is not None]
    rows = entry_rows(study.baselines, study, with_kind=True)
    for row, b in zip(rows, study.baselines):
        matched = b.accuracy is not None and front and dominated_by_front(front, (b.ranked_by, b.predicted_ms))
        row += ["yes" if b.feasible else "no", "yes" if matched else "no" if front else DASH]
    return Table(entry_headers(study, "kind") + ["within budget", "matched by the front"], rows,
                 note="Uniform: the same keep ratio at the search space's standard placements, trained like the "
                      "candidates; matched on val. " + SPLITS_NOTE + " " + MEASURED_NOTE)


def finalized_table(study: StudyRecord) -> Table:
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
                 note=SPLITS_NOTE + " " + MEASURED_NOTE + " At the table's speed: the measurement scaled by the drift reference timed "
                                      "beside it (the machine's own speed change since profiling taken out).")


def validation_text(study: StudyRecord) -> str:
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
