"""The Optuna storage of a study (a journal file in the study folder, or a database shared by many workers) and
what the search reads back from it."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import optuna

from ..errors import RunFailure, VitsearchError
from ..pruning import PruneConfig
from ..studyfolder import StudyFolder
from .claims import KEY
from .record import DIRECTIONS, is_rejected
from .storage_url import parse_storage_url, redact
from .settings import LEARNED, Candidate, SearchSettings

logger = logging.getLogger(__name__)


def make_sampler(name: str, seed: int) -> Any:
    """The sampler that proposes configs (:class:`~vitsearch.search.coverage.CoverageSampler` keeps the feasible, new
    ones). TPE models the conditional space jointly (``multivariate``), one group per set of parameters a config
    uses (``group``: a one-selector config has no ``block_2``)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # multivariate and group are experimental since Optuna 2.2 / 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True, group=True)


def join(study: Any) -> int:
    """Register this worker in the study; returns its index (0 for the study's first worker). Workers that read
    the same count at once are ordered by their ids, so their indices still differ."""
    me = f"worker:{worker_id()}"
    seen = sum(k.startswith("worker:") for k in study.user_attrs)
    study.set_user_attr(me, seen)
    joined = sorted((v, k) for k, v in study.user_attrs.items() if k.startswith("worker:"))
    return joined.index((seen, me))


def open_optuna_study(settings: SearchSettings, folder: StudyFolder) -> Any:
    """The study, with this worker's sampler: seeded by ``seed`` + the worker's index, so workers sharing a
    study do not suggest the same configs in lockstep (a study's first worker samples as a lone one does)."""
    if settings.storage:
        storage: Any = _rdb_storage(settings.storage, settings.heartbeat_s)
    else:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        folder.check_journal()
        repair_journal(folder.journal)
        storage = JournalStorage(JournalFileBackend(str(folder.journal)))
    study = optuna.create_study(study_name=settings.name(), storage=storage, directions=list(DIRECTIONS),
                                load_if_exists=True, sampler=optuna.samplers.RandomSampler(seed=settings.seed))
    index = join(study)
    study.sampler = make_sampler(settings.sampler, settings.seed + index)
    if index:
        logger.info("worker %d of study %s (sampler seed %d)", index, settings.name(), settings.seed + index)
    return study


def repair_journal(path: Path) -> None:
    """Check a journal before anyone appends to it. A line that is not JSON is refused, naming it (Optuna's
    reader would fail later with no file named). A last line cut short (a worker killed mid-write) is repaired:
    a whole JSON record only lacking its newline gets one; a torn record is moved aside into a file named in a
    warning (the operation it began never happened, as for a worker killed just before writing it)."""
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file() or path.stat().st_size == 0:
        return
    lock = JournalFileSymlinkLock(str(path))  # the lock Optuna's writers take: no append lands mid-repair
    lock.acquire()
    try:
        with path.open("rb+") as f:
            data = f.read()
            cut = data.rfind(b"\n") + 1
            for number, line in enumerate(data[:cut].splitlines(), start=1):
                try:
                    json.loads(line)
                except ValueError as e:
                    raise VitsearchError(
                        f"{path} line {number} is damaged ({e}): Optuna cannot read the study. Restore the journal "
                        "from a backup, or pass --study NEW_NAME for a new study") from None
            if cut == len(data):
                return
            tail = data[cut:]
            try:
                json.loads(tail)
                f.write(b"\n")
                logger.warning("%s: its last line lacked a newline (a worker stopped mid-write): completed", path)
                return
            except ValueError:
                pass
            aside = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            aside.write_bytes(tail)
            f.truncate(cut)
            os.fsync(f.fileno())
        logger.warning("%s ended in a torn line (a worker killed mid-write): its %d bytes were moved to %s and the "
                       "journal continues from its last whole line", path, len(tail), aside)
    finally:
        lock.release()


def requeue(study: Any, trial: Any) -> None:
    """A stopped trial's config runs again (a baseline trial has none: its baseline is simply not stored). Its
    canonical key travels with the retry, so its claim holds while it waits (claims.py)."""
    if trial.params:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, **(
            {KEY: trial.user_attrs[KEY]} if KEY in trial.user_attrs else {})})


def _requeue(study: Any, trial: Any) -> None:
    """Optuna's failed-trial callback: the config of a trial whose worker stopped beating runs again."""
    requeue(study, trial)
    logger.warning("trial %d was left running by worker %s, which stopped beating: it is run again", trial.number,
                   trial.user_attrs.get("worker", "?"))


def _rdb_storage(url: str, heartbeat_s: int, attempts: int = 3) -> Any:
    import sqlalchemy.exc

    given = url
    url, safe = parse_storage_url(url)  # the driver checked first, the password never shown
    kwargs = {"connect_args": {"connect_timeout": 10}} if "postgresql" in url else {}
    for attempt in range(attempts):
        try:
            # Optuna's heartbeat: a trial whose worker (on any host) is silent for the grace period is failed by
            # the next worker that starts a trial, and _requeue runs its config again.
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_s,
                                              grace_period=GRACE * heartbeat_s, failed_trial_callback=_requeue)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers starting together on a fresh database race to create Optuna's schema: the loser retries.
            if attempt == attempts - 1:
                raise
            time.sleep(1.0 + random.random())
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ArgumentError, ModuleNotFoundError, ValueError) as e:
            error = RunFailure if isinstance(e, sqlalchemy.exc.OperationalError) else VitsearchError  # out of reach / bad URL
            reason = redact(redact(str(e).splitlines()[0], given), url)  # a driver's error may quote the URL
            raise error(f"cannot open the study storage at {safe}: {reason}. "
                        "Check the database URL, that the server is running and reachable") from None


def lost_connection(error: BaseException) -> BaseException | None:
    """The database error in ``error``'s chain that says the connection is gone (a server stopped or out of reach),
    or None. Optuna wraps it (StorageInternalError's "invalid data in the commit"), and its trial bookkeeping
    fails after it, so the error that reaches the search is seldom the database's own."""
    import sqlalchemy.exc

    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or (
                isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated):
            return e
        e = e.__cause__ if e.__cause__ is not None else None if e.__suppress_context__ else e.__context__
    return None


@contextlib.contextmanager
def database_failures(url: str | None) -> Iterator[None]:
    """A database that stops answering mid-search becomes one :class:`RunFailure` naming it (redacted) and what to
    do, instead of the cascade that follows: Optuna's failed-trial warning and its heartbeat thread, each with a
    traceback, then the failed tell's "invalid data in the commit". No-op for the journal file (``url`` None)."""
    if not url:
        yield
        return

    def quiet(record: logging.LogRecord) -> bool:  # Optuna's "Trial N failed ..." with the traceback
        return not (record.exc_info and record.exc_info[1] is not None and lost_connection(record.exc_info[1]))

    def thread_hook(args: Any) -> None:  # Optuna's heartbeat thread dies with the connection: said below, once
        if args.exc_value is None or not lost_connection(args.exc_value):
            previous_hook(args)

    handlers = list(logging.getLogger("optuna").handlers)
    previous_hook, threading.excepthook = threading.excepthook, thread_hook
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield
    except Exception as e:
        lost = None if isinstance(e, VitsearchError) else lost_connection(e)
        if lost is None:
            raise
        reason = redact(str(getattr(lost, "orig", None) or lost).strip().splitlines()[0], url)
        raise RunFailure(f"the study storage {redact(url)} stopped answering ({reason}): the trials completed "
                         "before are kept in it; once it answers again, run the same command to resume (the "
                         "interrupted trial runs again)") from e
    finally:
        threading.excepthook = previous_hook
        for h in handlers:
            h.removeFilter(quiet)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


GRACE = 4  # heartbeats a worker may miss before its running trial is taken for dead


class Heartbeat:
    """The journal file's equivalent of Optuna's RDB heartbeat: while a trial runs, a background thread stamps
    the time into its ``heartbeat`` user attribute every ``interval`` seconds (any host can read it in the
    shared journal). Used as a context manager around ``study.optimize``; ``trial`` sets the trial it beats for."""

    def __init__(self, study: Any, interval: float) -> None:
        self.study, self.interval = study, interval
        self._trial: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="vitsearch-heartbeat", daemon=True)

    def trial(self, trial: Any | None) -> None:
        if trial is not None:
            trial.set_user_attr("heartbeat", time.time())
        self._trial = trial

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            trial = self._trial
            if trial is None:
                continue
            try:
                trial.set_user_attr("heartbeat", time.time())
            except RuntimeError:  # UpdateFinishedTrialError: the trial finished between the read and the write
                pass

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def recover_stale_trials(study: Any, heartbeat_s: float, *, baselines_only: bool = False) -> int:
    """Trials left RUNNING by a dead worker are failed and their configs enqueued again, so a resumed search
    neither loses nor repeats a completed trial: on this host, a worker whose process is gone; on any host, a
    trial whose heartbeat (:class:`Heartbeat`, or its start) is older than :data:`GRACE` heartbeats.
    ``baselines_only``: only baseline trials (no params, so nothing is enqueued for an ``ask`` to pop)."""
    host, recovered, now = socket.gethostname(), 0, time.time()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        w_host, _, pid = worker.rpartition(":")
        beat = t.user_attrs.get("heartbeat", now)  # none on a database, where Optuna's heartbeat does this
        gone = w_host == host and pid.isdigit() and not _alive(int(pid))
        if (not gone and now - beat <= GRACE * heartbeat_s) or (baselines_only and t.params):
            continue
        try:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except (RuntimeError, ValueError):  # another worker recovered it first
            continue
        requeue(study, t)
        recovered += 1
        why = "is gone" if gone else f"has not beaten for {now - beat:.0f} s"
        logger.warning("trial %d was interrupted (worker %s %s): it is run again", t.number, worker or "?", why)
    return recovered


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect(study: optuna.Study) -> list[Candidate]:
    """Every completed trial, and every trial rejected before training (pruned, :mod:`.record`), as a Candidate,
    in trial order; repeats of a trained config are left out (they hold nothing new, and their trial number stays
    in the storage with ``same_as``)."""
    out = []
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for t in study.get_trials(deepcopy=False, states=states):
        if "same_as" in t.user_attrs or (t.state == optuna.trial.TrialState.PRUNED and not is_rejected(t)):
            continue
        config = PruneConfig.parse(t.user_attrs.get("config", "none"))
        feasible = all(v <= 0 for v in t.constraints.values())
        predicted_ms = t.user_attrs["predicted_ms"] if "predicted_ms" in t.user_attrs else t.values[1]  # pruned: none
        out.append(Candidate(
            config, t.user_attrs.get("kind", "search"), float(predicted_ms),
            accuracy=t.user_attrs.get("accuracy"), val_accuracy=t.user_attrs.get("val_accuracy"), gmacs=t.user_attrs.get("gmacs"),
            train_seconds=float(t.user_attrs.get("train_seconds", 0.0)), trial=t.number, feasible=feasible,
            status=t.user_attrs.get("status", "trained"), block_tokens=tuple(t.user_attrs.get("block_tokens", ())),
            selection_ms=float(t.user_attrs.get("selection_ms", 0.0)), checkpoint=t.user_attrs.get("checkpoint")))
    return out


def count_trained(study: Any, complete: Sequence[Any] | None = None) -> int:
    """Completed trials that were trained (``trials`` counts these; rejections before training cost nothing)."""
    if complete is None:
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sum(t.user_attrs.get("accuracy") is not None and t.user_attrs.get("kind") != LEARNED for t in complete)

