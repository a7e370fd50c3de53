"""Workers that divide one study: every model (a config's canonical key, or a baseline) is trained by one trial.

The protocol needs nothing from the storage but what every Optuna storage gives: trial numbers handed out once
each, in order, and trial user attrs that every worker reads back.

1. A trial writes its key (``KEY``) into its user attrs while RUNNING, right after its config is known.
2. It waits until every lower-numbered RUNNING trial has written its key (a few ms: they are sampling).
3. It owns the key unless a lower-numbered trial claims it: one RUNNING or WAITING with that key, or one
   finished that owned it (``OWNS``). A trial that owns its key writes ``OWNS`` and trains.

Two trials A < B with one key cannot both train: B decides only once A's key is written (step 2; A exists
before B, since numbers are handed out in order), and then sees A. A lower claim that failed (its worker was
killed) no longer counts, so the key is trained again by whoever claims it next. The one gap: a trial enqueued
by hand without a key, still WAITING while a higher one decides; the search's own enqueued retries carry their
key from the start.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import optuna

logger = logging.getLogger(__name__)

KEY = "key"  # the canonical key of a trial's config (config.canonical_key), or "baseline:<config>"
OWNS = "owns"  # True on the trial that trains that key

_CLAIMING = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
_FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def claim(trial: Any, key: str, *, poll_s: float = 0.05) -> Any:
    """The running ``trial`` claims ``key`` (steps 1-3): returns None when it owns it, else the lowest-numbered
    trial that claimed it before."""
    trial.set_user_attr(KEY, key)
    start, warned = time.monotonic(), 0.0
    while True:
        lower = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
        sampling = [t.number for t in lower if t.state == optuna.trial.TrialState.RUNNING and KEY not in t.user_attrs]
        if sampling:
            if time.monotonic() - start > warned + 60:  # a worker killed while sampling, on another machine
                warned += 60
                logger.warning("trial %d waits for trials %s to choose their configs (fail them with Optuna if "
                               "their workers are gone)", trial.number, sampling)
            time.sleep(poll_s)
            continue
        owner = next((t for t in sorted(lower, key=lambda t: t.number) if t.user_attrs.get(KEY) == key
                      and (t.state in _CLAIMING or (t.state in _FINISHED and t.user_attrs.get(OWNS)))), None)
        if owner is None:
            trial.set_user_attr(OWNS, True)
        return owner


def owners(study: Any, *, baselines: bool) -> list[Any]:
    """Trials that own a key (baseline keys or config keys), finished or still training."""
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(OWNS)
            and str(t.user_attrs.get(KEY, "")).startswith("baseline:") == baselines
            and t.state in (optuna.trial.TrialState.RUNNING, *_FINISHED)]
