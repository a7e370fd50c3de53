"""A study folder read back for reporting: provenance, trials, front, baselines, finalized models, and the latency
table's validation.

The folder is the contract, read through :class:`~vitsearch.studyfolder.StudyFolder`: ``study.json``,
``trials.json``, ``front.json``, ``baselines.json``, and when a config has been finalized ``finalized.json``.
Every record becomes an :class:`Entry`; a measured latency, where one exists for a config (finalized models, or the table's own validation
of the same config), is attached to every entry of that config, so tables show "measured" where known.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import VitsearchError
from ..pruning import PruneConfig
from ..studyfolder import StudyFolder, read_json

logger = logging.getLogger(__name__)

# Files a study folder may hold, with the kind of entry they list by default; only study.json is required.
ENTRY_KINDS = {"trials": "search", "front": "search", "baselines": "uniform", "finalized": "finalized"}


@dataclass(frozen=True)
class Entry:
    """One evaluated config as a report shows it: a search trial, a baseline or a finalized model."""

    config: str  # normalised by PruneConfig, e.g. "spvit:3=0.7,6=0.5"
    method: str
    kind: str  # "search", "unpruned", "uniform" or "finalized"
    predicted_ms: float
    accuracy: float | None  # on test: the accuracy the report states; None: rejected before training (over budget)
    gmacs: float | None
    feasible: bool  # within the budget (and the selector limit)
    blocks: tuple[int, ...]  # selector placement
    keep: tuple[float, ...]  # keep ratio per selector
    block_tokens: tuple[int, ...]  # tokens entering each block
    trial: int | None = None
    status: str = ""
    checkpoint: str | None = None
    measured_ms: float | None = None  # end-to-end on the study's device, where someone measured this config
    measured_source: str | None = None  # "finalized" or "validation"
    train_seconds: float = 0.0  # brief training of this candidate (0: not trained, or a repeat)
    extra: Mapping[str, Any] = field(default_factory=dict)  # fields this report does not know (kept, not shown)
    val_accuracy: float | None = None  # on val: what the search ranked and selected by

    @property
    def trained(self) -> bool:
        return self.accuracy is not None

    @property
    def ranked_by(self) -> float | None:
        """The accuracy the search decided by: val's (a record written before vitsearch held out a test split has
        one accuracy only, and the search decided by it)."""
        return self.val_accuracy if self.val_accuracy is not None else self.accuracy

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, default_kind: str = "search") -> "Entry":
        """An entry from a ``Candidate.to_dict`` record; placement and method always come from the config string."""
        config = PruneConfig.parse(record["config"])  # the one normaliser: a bad string fails here, by name
        known = {f for f in cls.__dataclass_fields__} | {"selection_ms"}
        measured = _float_or_none(record.get("measured_ms"))
        return cls(
            config=str(config), method=config.method, kind=str(record.get("kind") or default_kind),
            predicted_ms=float(record["predicted_ms"]), accuracy=_float_or_none(record.get("accuracy")),
            gmacs=_float_or_none(record.get("gmacs")), feasible=bool(record.get("feasible", True)),
            blocks=tuple(config.keep), keep=tuple(config.keep.values()),
            block_tokens=tuple(int(n) for n in record.get("block_tokens") or ()),
            trial=None if record.get("trial") is None else int(record["trial"]), status=str(record.get("status", "")),
            checkpoint=record.get("checkpoint"), measured_ms=measured,
            measured_source=str(record.get("measured_source", default_kind)) if measured is not None else None,
            train_seconds=float(record.get("train_seconds") or 0.0),
            val_accuracy=_float_or_none(record.get("val_accuracy")),
            extra={k: v for k, v in record.items() if k not in known})


def _float_or_none(value: Any) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    return None if math.isnan(number) else number


@dataclass(frozen=True)
class TableValidation:
    """The latency table's own check, predicted vs measured whole models (``vitsearch profile --validate N``)."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    paths: dict[str, Path]


@dataclass
class StudyRecord:
    folder: Path
    meta: dict[str, Any]  # study.json: the resolved configuration and provenance
    trials: list[Entry]
    front: list[Entry]
    baselines: list[Entry]
    finalized: list[Entry]
    validation: TableValidation | None
    notes: list[str]  # what is missing and why, for the report to say

    @property
    def name(self) -> str:
        return str(self.meta.get("study") or self.folder.name)

    @property
    def metric(self) -> str:
        return str(self.meta.get("metric", "top1"))

    @property
    def objectives(self) -> tuple[str, ...]:
        return tuple(self.meta.get("objectives") or ())

    @property
    def model(self) -> str:
        return str(self.meta.get("model", "?"))

    @property
    def device(self) -> str:
        return str(self.meta.get("device", "?"))

    @property
    def batch(self) -> int:
        return int(self.meta.get("batch", 1))

    @property
    def budget_ms(self) -> float | None:
        return _float_or_none(self.meta.get("budget_ms"))

    @property
    def unpruned_ms(self) -> float | None:
        return _float_or_none(self.meta.get("unpruned_ms"))

    @property
    def unpruned(self) -> Entry | None:
        return next((b for b in self.baselines if b.kind == "unpruned"), None)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple((self.meta.get("space") or {}).get("methods") or sorted({t.method for t in self.trials}))

    @property
    def geometry(self) -> dict[str, Any]:
        return dict((self.meta.get("latency_table_meta") or {}).get("geometry") or {})

    @property
    def precision(self) -> str:
        """The precision the study's latencies are for (its table's; studies from before the option: fp32)."""
        return str((self.meta.get("latency_table_meta") or {}).get("precision") or "fp32")


def _read_entries(folder: StudyFolder, name: str, default_kind: str) -> list[Entry]:
    records = folder.read_records(name) or []
    try:
        return [Entry.from_record(r, default_kind=default_kind) for r in records]
    except (KeyError, TypeError, ValueError) as e:
        raise VitsearchError(f"{folder.path / f'{name}.json'} has a record without a readable {e}: expected the "
                             "fields of vitsearch.search.Candidate.to_dict (config, predicted_ms, accuracy, ...)") from None


def load_validation(table: str | Path | None) -> TableValidation | None:
    """The validation files beside a latency table (see :mod:`vitsearch.latency.validate`), or None."""
    if not table:
        return None
    stem = Path(table).with_suffix("")
    paths = {kind: stem.with_name(f"{stem.name}.validation.{kind}") for kind in ("json", "csv", "png")}
    if not (paths["json"].is_file() and paths["csv"].is_file()):
        return None
    with open(paths["csv"], newline="") as f:
        rows = [_numeric_row(r) for r in csv.DictReader(f)]
    return TableValidation(summary=read_json(paths["json"]), rows=rows, paths=paths)


def _numeric_row(row: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        try:
            out[key] = float(value) if key.endswith(("_ms", "_pct", "_share")) and value != "" else value
        except ValueError:
            out[key] = value
    return out


def _measured(finalized: Sequence[Entry], validation: TableValidation | None) -> dict[str, tuple[float, str]]:
    """config -> (measured ms, where it was measured). A finalized model's own measurement wins."""
    out: dict[str, tuple[float, str]] = {}
    for row in validation.rows if validation else ():
        if isinstance(row.get("measured_ms"), float):
            out[str(PruneConfig.parse(row["config"]))] = (row["measured_ms"], "validation")
    for entry in finalized:
        if entry.measured_ms is not None:
            out[entry.config] = (entry.measured_ms, "finalized")
    return out


def load_study(study: str | Path, reports: str | Path = "reports") -> StudyRecord:
    """Read a study folder (by name under ``reports``, or by path). Missing results are not an error: a search
    that has not completed a trial yet gives a StudyRecord without trials, and ``notes`` says what is missing."""
    folder = StudyFolder.find(study, reports)
    meta = folder.read_study()
    notes: list[str] = []
    lists = {name: _read_entries(folder, name, kind) for name, kind in ENTRY_KINDS.items()}
    if not (folder.path / "trials.json").is_file():
        notes.append("no trials.json: the search has not finished (it is written when the search ends); "
                     "run or resume it with the same settings")
    elif not lists["trials"]:
        notes.append("the search completed no trials")
    table = meta.get("latency_table")
    validation = load_validation(table)
    if validation is None and table:
        settings = meta.get("settings") or {}
        notes.append(f"no validation beside the latency table {table}: run vitsearch profile --device "
                     f"{meta.get('device', 'DEVICE')} --model {meta.get('model', 'MODEL')} "
                     f"--batch {meta.get('batch', 1)} "
                     f"--tables {settings.get('tables', Path(table).parent.parent)} --validate 20 "
                     "to measure whole models against it")
    measured = _measured(lists["finalized"], validation)

    def with_measured(entries: list[Entry]) -> list[Entry]:
        return [replace(e, measured_ms=measured[e.config][0], measured_source=measured[e.config][1])
                if e.config in measured and e.measured_ms is None else e for e in entries]

    return StudyRecord(folder=folder.path, meta=meta, trials=with_measured(lists["trials"]),
                       front=with_measured(lists["front"]), baselines=with_measured(lists["baselines"]),
                       finalized=lists["finalized"], validation=validation, notes=notes)


def trials_dataframe(study: str | Path, reports: str | Path = "reports") -> Any:
    """A study's trials (``trials.json``, the records ``vitsearch search`` writes) as a pandas DataFrame, one row per
    trial in trial order, for analysis in a notebook.

    Lists stay lists (``blocks``, ``keep``, ``block_tokens``: ``trials.csv`` can only hold their text); a trial
    rejected before training has no accuracy (NaN in ``accuracy`` and ``val_accuracy``, never 0); ``on_front``
    marks the trials on the Pareto front (``front.json``). Optuna's own ``study.trials_dataframe()`` lists the same
    trials with its objective values instead, where a rejected trial is PRUNED without values
    (:mod:`vitsearch.search.record`)."""
    import pandas as pd  # deferred: only this function needs it

    folder = StudyFolder.find(study, reports)
    records = folder.require_records("trials")
    front = {r.get("trial") for r in folder.read_records("front") or []}
    frame = pd.DataFrame.from_records(records)
    for column in ("accuracy", "val_accuracy"):  # None (not trained) reads as NaN, whatever the other rows hold
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["on_front"] = frame["trial"].isin(front) if "trial" in frame else False
    return frame.sort_values("trial", kind="stable").reset_index(drop=True) if "trial" in frame else frame
