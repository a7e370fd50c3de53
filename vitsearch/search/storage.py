"""The Optuna storage of a study (a journal file in the study folder, or a database shared by many workers) and
what the search reads back from it."""
from __future__ import annotations

import logging
import os
import random
import socket
import time
from typing import Any, Sequence

import optuna

from ..config import PruneConfig
from ..errors import RunFailure, VitsearchError
from ..studyfolder import StudyFolder
from .claims import KEY
from .record import DIRECTIONS
from .storage_url import parse_storage_url
from .settings import Candidate, SearchSettings

logger = logging.getLogger(__name__)


def make_sampler(name: str, seed: int) -> Any:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=12)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True)


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
        storage: Any = _rdb_storage(settings.storage)
    else:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(folder.journal)))
    study = optuna.create_study(study_name=settings.name(), storage=storage, directions=list(DIRECTIONS),
                                load_if_exists=True, sampler=optuna.samplers.RandomSampler(seed=settings.seed))
    index = join(study)
    study.sampler = make_sampler(settings.sampler, settings.seed + index)
    if index:
        logger.info("worker %d of study %s (sampler seed %d)", index, settings.name(), settings.seed + index)
    return study


def _rdb_storage(url: str, attempts: int = 3) -> Any:
    import sqlalchemy.exc

    url, safe = parse_storage_url(url)  # the driver checked first, the password never shown
    kwargs = {"connect_args": {"connect_timeout": 10}} if "postgresql" in url else {}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers starting together on a fresh database race to create Optuna's schema: the loser retries.
            if attempt == attempts - 1:
                raise
            time.sleep(1.0 + random.random())
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ArgumentError, ModuleNotFoundError, ValueError) as e:
            error = RunFailure if isinstance(e, sqlalchemy.exc.OperationalError) else VitsearchError  # out of reach / bad URL
            raise error(f"cannot open the study storage at {safe}: {str(e).splitlines()[0]}. "
                        "Check the database URL, that the server is running and reachable") from None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def recover_stale_trials(study: Any, *, baselines_only: bool = False) -> int:
    """Trials left RUNNING by a killed worker on this host are failed and their configs enqueued again, so a
    resumed search neither loses nor repeats a completed trial. Other hosts' running trials are left alone.
    ``baselines_only``: only baseline trials (no params, so nothing is enqueued for an ``ask`` to pop)."""
    host, recovered = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        w_host, _, pid = worker.rpartition(":")
        if w_host != host or not pid.isdigit() or _alive(int(pid)) or (baselines_only and t.params):
            continue
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        if t.params:
            # The key travels with the retry, so its claim holds while it waits (claims.py).
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, **(
                {KEY: t.user_attrs[KEY]} if KEY in t.user_attrs else {})})
        recovered += 1
        logger.warning("trial %d was interrupted (worker %s is gone): it is run again", t.number, worker)
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
    """Every completed trial as a Candidate, in trial order; repeats of a trained config are left out (they hold
    nothing new, and their trial number stays in the storage with ``same_as``)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if "same_as" in t.user_attrs:
            continue
        config = PruneConfig.parse(t.user_attrs.get("config", "none"))
        feasible = all(v <= 0 for v in t.constraints.values())
        out.append(Candidate(
            config, "search", float(t.user_attrs.get("predicted_ms", t.values[1])),
            accuracy=t.user_attrs.get("accuracy"), gmacs=t.user_attrs.get("gmacs"),
            train_seconds=float(t.user_attrs.get("train_seconds", 0.0)), trial=t.number, feasible=feasible,
            status=t.user_attrs.get("status", "trained"), block_tokens=tuple(t.user_attrs.get("block_tokens", ())),
            selection_ms=float(t.user_attrs.get("selection_ms", 0.0)), checkpoint=t.user_attrs.get("checkpoint")))
    return out


def count_trained(study: Any, complete: Sequence[Any] | None = None) -> int:
    """Completed trials that were trained (``trials`` counts these; rejections before training cost nothing)."""
    if complete is None:
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sum(t.user_attrs.get("accuracy") is not None for t in complete)

