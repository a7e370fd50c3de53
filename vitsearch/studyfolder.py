"""The study folder ``reports/<study>/``: the one module that knows its files, the way :mod:`.latency.table` owns a
latency table's. Search, finalize and report read and write it only through :class:`StudyFolder`.

==========================  ===================================================================================
``study.json``              the resolved settings and provenance; a re-run must describe the same search
``journal.log``             the Optuna storage (unless ``--storage`` names a database)
``trials.csv/json``         every completed trial (``Candidate.to_dict`` records)
``front.csv/json``          the Pareto front of the trained trials within budget
``baselines.csv/json``      the unpruned model and uniform keep ratios
``checkpoints/``            the front's trained configs (``trial_NNNN.pt``)
``supernet.pt/json``        the shared strategy's supernet and its training time
``finalized.json``          one row per finalized trial; its model, state and ONNX in ``finalized/trial_NNNN/``
``.records.lock`` ...       locks: the records and ``finalized.json`` are rewritten by one process at a time
==========================  ===================================================================================

Every file is written atomically (:mod:`.files`). The records are rewritten whole as each trial finishes, under
a lock (:meth:`StudyFolder.lock`), so the last writer writes the newest state of the storage.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from filelock import FileLock

from .errors import VitsearchError
from .files import save_torch, write_json, write_text

STUDY_FILE = "study.json"
JOURNAL_FILE = "journal.log"
FINALIZED_FILE = "finalized.json"
RECORDS = ("trials", "front", "baselines")  # written by the search as JSON and CSV
# A candidate's status (its record's "status") where its method has nothing to train: the search writes it, reports
# tell such a candidate apart by it.
TRAINING_FREE = "training-free: scored as it is, on the base model's weights"
# What must match for a re-run to continue a study rather than mix two searches in one folder.
IDENTITY = ("model", "sha256", "dataset", "split", "device", "batch", "budget_ms", "limit_ms", "space", "strategy")
# The settings (study.json's "settings") that decide how a trial is trained and evaluated: a resume that changes
# one would put trials evaluated differently on one front.
EVALUATION = ("train", "dataset", "max_train", "max_val", "max_test", "seed", "strategy", "shared_steps", "shared_finetune_steps")


MAX_STUDY_NAME = 128  # characters: a folder name (255 bytes at most) that a terminal and a report title can show


def check_study_name(name: str) -> str:
    """A study name is one folder under the reports folder: not empty, no separators, no ``.``/``..``, printable
    characters only (a newline would split every log line and CSV row naming it), at most
    :data:`MAX_STUDY_NAME` characters."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or not name.isprintable()
            or name != name.strip() or len(name) > MAX_STUDY_NAME or len(name.encode()) > 255):
        shown = repr(name if len(name) <= 40 else name[:40] + "...") + (f" ({len(name)} characters)"
                                                                       if len(name) > 40 else "")
        raise VitsearchError(f"study name {shown} is not a plain folder name: give --study one non-empty name of at "
                             f"most {MAX_STUDY_NAME} printable characters (255 bytes), without '/', '\\', a newline "
                             "or other control character, leading or trailing spaces, '.' or '..' (e.g. --study "
                             "digits-60pct)")
    return name


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``name: old -> new`` for each training or evaluation setting (:data:`EVALUATION`) that differs."""
    a = _flatten({k: old.get(k) for k in EVALUATION})
    b = _flatten({k: new.get(k) for k in EVALUATION})
    return [f"{k.removeprefix('train.')} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def existing_studies(reports: str | os.PathLike[str]) -> list[str]:
    """Names of the study folders under ``reports`` (those with a study.json)."""
    root = Path(reports)
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob(f"*/{STUDY_FILE}"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise VitsearchError(f"{path} is not valid JSON ({e}): the study folder is damaged; re-run the search "
                             "with the same settings to rewrite it") from None


class StudyFolder:
    """One study's folder: :meth:`make` creates it for a search, :meth:`find` opens an existing one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"StudyFolder({str(self.path)!r})"

    def make(self) -> "StudyFolder":
        """Create the folder (and its checkpoints folder) for a search to write into."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return self

    @classmethod
    def find(cls, study: str | os.PathLike[str], reports: str | os.PathLike[str] = "reports") -> "StudyFolder":
        """The folder a study argument names: a path to a study folder, or a name under ``reports``. Raises the
        one error for a study that does not exist, listing those that do."""
        candidates = [Path(study)] if Path(study).is_dir() else []
        candidates.append(Path(reports) / str(study))
        for path in candidates:
            if (path / STUDY_FILE).is_file():
                return cls(path)
        for path in candidates:
            if path.is_dir():
                raise VitsearchError(f"{path} is not a study folder: it has no {STUDY_FILE} "
                                     "(vitsearch search writes one)")
        names = existing_studies(reports)
        listing = ("existing studies: " + ", ".join(names)) if names else "it holds no studies yet: run vitsearch search"
        raise VitsearchError(f"no study {str(study)!r} in {reports}/: {listing} "
                             "(or pass --reports DIR, or a study folder's path)")

    @property
    def name(self) -> str:
        return self.path.name

    # Paths ----------------------------------------------------------------------------------------------------

    @property
    def study_file(self) -> Path:
        return self.path / STUDY_FILE

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, trial: int) -> Path:
        """Trial ``trial``'s checkpoint: named by its number, so no path read from a storage is ever opened."""
        return self.checkpoints / f"trial_{int(trial):04d}.pt"

    def checkpoint_of(self, trial: int) -> str | None:
        """How records name trial ``trial``'s checkpoint, None where this folder has none."""
        path = self.checkpoint(trial)
        return self.relative(path) if path.is_file() else None

    @property
    def supernet(self) -> Path:
        return self.path / "supernet.pt"

    def finalized_dir(self, trial: int) -> Path:
        return self.path / "finalized" / f"trial_{trial:04d}"

    def lock(self, what: str) -> FileLock:
        """The lock one process holds while it rewrites ``what`` (``"records"``: trials, front, baselines;
        ``"finalized"``): workers and finalize runs of one study at once, on one host or on a shared folder."""
        self.path.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path / f".{what}.lock"), is_singleton=True)

    def relative(self, path: Path) -> str:
        """How records name a file of this folder (relative, so a moved folder still reads)."""
        return str(path.relative_to(self.path))

    # study.json -----------------------------------------------------------------------------------------------

    def read_study(self) -> dict[str, Any]:
        meta = read_json(self.study_file)
        if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
            found = "no 'settings' object" if isinstance(meta, dict) else f"a JSON {type(meta).__name__}"
            raise VitsearchError(f"{self.study_file} holds {found}, not the study settings vitsearch search writes: "
                                 "the file is damaged; restore it, or pass --study NEW_NAME for a new search")
        return meta

    def write_study(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``study.json``. An existing one must describe the same search (:data:`IDENTITY`); its creation
        date is kept."""
        record = json.loads(json.dumps(record, default=str))  # compare as it reads back: tuples become lists
        if self.study_file.exists():
            old = self.read_study()
            self._check_storage(old["settings"].get("storage"), (record.get("settings") or {}).get("storage"))
            changed = [k for k in IDENTITY if old.get(k) != record.get(k)]
            if changed:
                raise VitsearchError(
                    f"study {record.get('study', self.name)!r} in {self.path} was made with a different "
                    f"{', '.join(changed)}: pass --study NEW_NAME for a new search, or the same settings to resume it")
            differ = changed_settings(old["settings"], record.get("settings") or {})
            if differ:
                raise VitsearchError(
                    f"study {record.get('study', self.name)!r} in {self.path} trains and evaluates its trials with "
                    f"other settings ({'; '.join(differ)}): resume it with the settings in {self.study_file}, or "
                    "pass --study NEW_NAME for a new study")
            record["created"] = old.get("created")
        record["created"] = record.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(self.study_file, record)
        return record

    def _check_storage(self, recorded: str | None, given: str | None) -> None:
        """A study's trials live in one storage (``settings.storage`` in study.json, redacted; None: its journal):
        another one would start the study afresh and rewrite this folder's records from it."""
        if recorded == given:
            return

        def where(url: str | None) -> str:
            return f"the journal {self.journal}" if url is None else f"the database {url}"

        again = ("without --storage" if recorded is None else
                 f"with --storage {recorded}" + (" (its password for ***)" if "***" in recorded else ""))
        raise VitsearchError(
            f"study {self.name!r} keeps its trials in {where(recorded)}, not {where(given)}: resume it {again}, or "
            "pass --study NEW_NAME for a new study")

    # Trials, front, baselines ---------------------------------------------------------------------------------

    def write_records(self, name: str, records: list[dict[str, Any]]) -> None:
        """``name``.json and ``name``.csv (one of :data:`RECORDS`). The JSON keeps lists as lists (what
        ``vitsearch.report.trials_dataframe`` reads); a CSV cell can only hold text, so a list there is a JSON array
        (``[3, 6]``, ``["a", null]``), which a spreadsheet shows as it is and ``json.loads`` reads back, never
        Python's repr of it."""
        import pandas as pd  # deferred: heavy, and only the search writes CSV

        write_json(self.path / f"{name}.json", records)
        frame = pd.DataFrame.from_records(records)
        for column in frame.columns:
            frame[column] = [json.dumps(v) if isinstance(v, (list, tuple, dict)) else v for v in frame[column]]
        write_text(self.path / f"{name}.csv", frame.to_csv(index=False))

    def read_records(self, name: str) -> list[dict[str, Any]] | None:
        """The records of ``name``.json, or None when the file is not there (yet)."""
        path = self.path / f"{name}.json"
        if not path.is_file():
            return None
        records = read_json(path)
        if not isinstance(records, list):
            raise VitsearchError(f"{path} should hold a list of candidate records, found {type(records).__name__}")
        return records

    def require_records(self, name: str) -> list[dict[str, Any]]:
        records = self.read_records(name)
        if records is None:
            raise VitsearchError(f"{self.path / f'{name}.json'} is missing: the search of this study has not "
                                 "finished; resume it first")
        return records

    # Checkpoints ----------------------------------------------------------------------------------------------

    def save_checkpoint(self, model: Any, config: Any, path: Path, extra: Mapping[str, Any] | None = None) -> None:
        """A model's state_dict with what rebuilds it alone (:func:`vitsearch.rebuild.load_pruned`): the config it
        was trained for (a :class:`~vitsearch.pruning.PruneConfig`), its timm model name and geometry."""
        from .models import geometry  # deferred: models pulls in timm

        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}  # loads on a machine without its GPU
        save_torch({"state_dict": state, "config": config.to_dict(),
                    "model": (getattr(model, "pretrained_cfg", None) or {}).get("architecture"),
                    "geometry": geometry(model).to_dict(), **(extra or {})}, path)

    def save_supernet(self, model: Any, config: Any, record: Mapping[str, Any]) -> None:
        """The shared strategy's supernet (``supernet.pt``) and its training record (``supernet.json``)."""
        self.save_checkpoint(model, config, self.supernet, extra=record)
        write_json(self.supernet.with_suffix(".json"), dict(record))

    def remove_checkpoints(self, trials: Iterable[int]) -> None:
        """Remove these trials' checkpoints (those already gone are skipped: workers sharing a study remove the same
        ones). By trial number, never by a path a storage holds: a shared study's attributes are anyone's to write."""
        for trial in trials:
            self.checkpoint(trial).unlink(missing_ok=True)

    # Finalized rows -------------------------------------------------------------------------------------------

    def finalized(self) -> list[dict[str, Any]]:
        return self.read_records("finalized") or []

    def store_finalized(self, row: Mapping[str, Any]) -> None:
        """Add or replace the row of ``row["trial"]`` in ``finalized.json``: read and rewritten under the lock, so
        finalize runs of one study at once (one trial each, on two GPUs) keep each other's rows."""
        with self.lock("finalized"):
            rows = [r for r in self.finalized() if r.get("trial") != row["trial"]] + [dict(row)]
            write_json(self.path / FINALIZED_FILE, sorted(rows, key=lambda r: r["trial"]))

    # The journal beside the records ------------------------------------------------------------------------------

    def check_journal(self) -> None:
        """Refuse to start a study afresh over completed work: a missing or empty ``journal.log`` beside a
        ``trials.json`` with trained trials would overwrite it."""
        if self.journal.is_file() and self.journal.stat().st_size > 0:
            return
        trained = [t for t in self.read_records("trials") or [] if t.get("accuracy") is not None]
        if trained:
            state = "empty" if self.journal.is_file() else "missing"
            raise VitsearchError(
                f"{self.journal} is {state} but {self.path / 'trials.json'} holds {len(trained)} trained trials: "
                f"the search would start afresh and overwrite them. Restore {JOURNAL_FILE} from a backup to resume, "
                "or pass --study NEW_NAME for a new study")
