"""Running a search: baselines, the Optuna objective, the results written to the study folder."""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Callable

import optuna

from ..errors import Interrupted, VitsearchError
from ..pareto import pareto_front
from ..pruning import PruneConfig, canonical_key
from ..studyfolder import StudyFolder
from .claims import KEY, claim, owners
from .coverage import CoverageSampler, FeasibleSet, NoModelLeft
from .evaluation import Evaluator
from .learned import check_learned, learned_trial, run_learned
from .record import describe, is_rejected, reject, set_constraints
from .settings import TRAINED_ATTRS, Candidate, SearchResult, SearchSettings
from .setup import Setup, prepare, write_provenance
from .storage import (Heartbeat, collect, count_trained, database_failures, open_optuna_study, recover_stale_trials,
                      requeue, worker_id)

logger = logging.getLogger(__name__)


def baseline_configs(evaluator: Evaluator) -> list[tuple[str, PruneConfig]]:
    """The baselines this search evaluates (``--baselines``): the unpruned model first, then uniform keep ratios at
    the standard placements."""
    return evaluator.setup.space.baseline_configs(evaluator.settings.baselines)


def stored_baselines(evaluator: Evaluator, study: Any) -> list[Candidate]:
    """The baselines evaluated so far (by any worker), in :func:`baseline_configs` order; those an earlier run
    evaluated stay in the records whatever ``--baselines`` says now."""
    done = study.user_attrs
    return [Candidate.from_dict(done[f"baseline:{c}"]) for _, c in evaluator.setup.space.baseline_configs("all")
            if f"baseline:{c}" in done]


def next_baseline(evaluator: Evaluator, study: Any, *, interleave: bool) -> tuple[str, PruneConfig] | None:
    """The first baseline neither stored nor claimed by a running trial. With ``interleave`` the uniform ones
    wait their turn: one per candidate trained, so the first trial's result comes right after the unpruned one."""
    claimed = {t.user_attrs.get(KEY) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    todo = [(kind, c) for kind, c in baseline_configs(evaluator)
            if f"baseline:{c}" not in study.user_attrs and f"baseline:{c}" not in claimed]
    if not todo:
        return None
    if interleave and todo[0][0] != "unpruned" and len(owners(study, baselines=True)) > len(owners(study, baselines=False)):
        return None
    return todo[0]


def enqueued(trial: Any) -> bool:
    """Whether ``trial`` popped a config from the queue (a retry, or one a user enqueued): it runs that config and
    never a baseline, or the config would be lost. Optuna keeps an enqueued trial's params in the frozen trial's
    system attrs under ``fixed_params`` (``Study.enqueue_trial``)."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    return "fixed_params" in frozen.system_attrs


def run_baseline(evaluator: Evaluator, trial: Any, kind: str, config: PruneConfig) -> None:
    """Trial ``trial`` evaluates a baseline, once across all workers, and stores it in the study's user attrs (an
    interrupted search keeps the ones done); the trial ends as pruned, so the sampler and the counts skip it."""
    trial.set_user_attr("worker", worker_id())
    owner = claim(trial, f"baseline:{config}")
    if owner is not None:
        trial.set_user_attr("status", f"baseline {config} is evaluated by trial {owner.number}")
        return
    cand = evaluator.evaluate(config, kind)
    cand.feasible = cand.predicted_ms <= evaluator.setup.limit_ms
    trial.study.set_user_attr(f"baseline:{config}", cand.to_dict())
    trial.set_user_attr("status", f"baseline {config}")
    logger.info("baseline %s: test accuracy %.4f (val %.4f), %.3f ms", config, cand.accuracy, cand.val_accuracy,
                cand.predicted_ms)


def evaluate_baselines(evaluator: Evaluator, study: Any) -> list[Candidate]:
    """Every baseline not yet stored, each in a trial of its own; waits for those other workers are evaluating."""
    while True:
        todo = next_baseline(evaluator, study, interleave=False)
        if todo is None:
            done = study.user_attrs
            if all(f"baseline:{c}" in done for _, c in baseline_configs(evaluator)):
                return stored_baselines(evaluator, study)
            # a dead worker's claim is taken again
            recover_stale_trials(study, evaluator.settings.heartbeat_s, baselines_only=True)
            time.sleep(0.5)
            continue
        trial = study.ask()
        try:
            run_baseline(evaluator, trial, *todo)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def make_objective(evaluator: Evaluator, on_train: Callable[[int, PruneConfig], None] | None = None,
                   heartbeat: Heartbeat | None = None) -> Callable[[Any], tuple[float, float]]:
    """The Optuna objective; ``on_train(trial number, config)`` is called when a candidate starts training.
    A trial either evaluates the next baseline (interleaved with the candidates) or samples a config and trains
    it, unless another trial owns its canonical key (:mod:`.claims`)."""
    setup = evaluator.setup
    base = setup.base

    def objective(trial: Any) -> tuple[float, float]:
        trial.set_user_attr("worker", worker_id())
        if heartbeat is not None:
            heartbeat.trial(trial)
        baseline = None if enqueued(trial) else next_baseline(evaluator, trial.study, interleave=True)
        if baseline is not None:
            run_baseline(evaluator, trial, *baseline)
            raise optuna.TrialPruned()
        try:
            config = setup.space.suggest(trial)
        except NoModelLeft as e:
            trial.set_user_attr("status", str(e))
            trial.study.stop()
            raise optuna.TrialPruned() from None
        pred = evaluator.predict(config)  # the sampler's configs fit; an enqueued one may not
        over_ms = pred.total_ms - setup.limit_ms
        over_selectors = setup.space.selectors_over(config)
        trial.set_user_attr("config", str(config))
        trial.set_user_attr("predicted_ms", pred.total_ms)
        set_constraints(trial, {"latency_ms": over_ms, "selectors": float(over_selectors)})
        if over_ms > 0 or over_selectors > 0:
            why = (f"over budget by {over_ms:.3f} ms" if over_ms > 0 else
                   f"{len(config.keep)} selectors (allowed {setup.space.min_selectors(config.method)}.."
                   f"{setup.space.max_selectors})")
            reject(trial, why)  # no accuracy: pruned, infeasible by its constraints (record.py)
            raise optuna.TrialPruned()
        key = canonical_key(config, depth=len(base.blocks), num_patches=base.patch_embed.num_patches,
                            num_prefix=base.num_prefix_tokens)
        owner = claim(trial, key)
        if owner is not None:
            # One model (the same token schedule) is trained once across all workers: two workers that chose the
            # same model at once, or a config enqueued by hand. A finished owner's result is returned; one still
            # training leaves this trial pruned. Neither is counted as trained.
            trial.set_user_attr("same_as", owner.number)
            if owner.state == optuna.trial.TrialState.COMPLETE:
                trial.set_user_attr("status", f"same model as trial {owner.number}: not trained again")
                return tuple(owner.values)
            trial.set_user_attr("status", f"same model as trial {owner.number}, which "
                                          f"{owner.user_attrs.get('worker', 'another worker')} is training")
            raise optuna.TrialPruned()
        if on_train is not None:
            on_train(trial.number, config)
        cand = evaluator.evaluate(config, "search", trial=trial.number)
        for k in TRAINED_ATTRS:  # val_accuracy (the objective) and accuracy (test: stated, never decided by)
            trial.set_user_attr(k, getattr(cand, k))
        trial.set_user_attr("block_tokens", list(cand.block_tokens))
        return cand.val_accuracy, pred.total_ms

    return objective


def record_study(evaluator: Evaluator, study: Any) -> list[Candidate]:
    """The records as the storage holds them now (:func:`write_results`), read and written under the study
    folder's lock: whichever worker writes last writes the newest state. Called as each trial finishes, by its
    worker, so ``report`` and ``plot`` show a running or killed search as it is."""
    setup = evaluator.setup
    with setup.folder.lock("records"):
        return write_results(setup, collect(study), stored_baselines(evaluator, study))


def write_results(setup: Setup, trials: list[Candidate], baselines: list[Candidate]) -> list[Candidate]:
    """trials.csv/json, front.csv/json; checkpoints of configs off the front are removed. The front is chosen on
    val accuracy, never on test."""
    trained = [c for c in trials if c.feasible and c.val_accuracy is not None]
    on_front = pareto_front([(c.val_accuracy, c.predicted_ms) for c in trained])
    front = [trained[i] for i in on_front]
    # Only finished trials' checkpoints: a trial another worker is still training keeps the one it just saved.
    # By trial number: the checkpoint attribute a storage holds is never a path used (studyfolder.py).
    setup.folder.remove_checkpoints(c.trial for i, c in enumerate(trained) if i not in on_front and c.trial is not None)
    for c in trials:
        c.checkpoint = None if c.trial is None else setup.folder.checkpoint_of(c.trial)
    for name, rows in (("trials", trials), ("front", front), ("baselines", baselines)):
        setup.folder.write_records(name, [c.to_dict() for c in rows])
    return front


def run_search(settings: SearchSettings, *, progress: bool = True, resume: bool = False) -> SearchResult:
    """Run (or resume) the search ``settings`` describe; returns the trials, the Pareto front and the baselines.
    With ``resume`` the study must exist already (``search --resume``: a typo in the name is not a new study).
    A database that stops answering is one RunFailure (:func:`.storage.database_failures`)."""
    if resume and not StudyFolder(Path(settings.reports) / settings.name()).study_file.is_file():
        raise VitsearchError(f"--resume: there is no study {settings.name()!r} in {settings.reports} to continue")
    with database_failures(settings.storage):
        return _run_search(settings, progress=progress)


def _run_search(settings: SearchSettings, *, progress: bool) -> SearchResult:
    from tqdm.auto import tqdm

    logger.info("search %s: loading the base model, the data and the latency table", settings.name())
    setup = prepare(settings, progress=progress)
    setup.folder.make()
    write_provenance(setup, settings)
    why = settings.scoring()["why"]  # an int8 study scores float accuracy: said before any training
    if why:
        logger.info("%s", why)
    study = open_optuna_study(settings, setup.folder)
    describe(study, metric="top1", device=settings.device, batch=settings.batch, budget=str(setup.budget),
             budget_ms=setup.budget_ms, unpruned_ms=setup.unpruned_ms, limit_ms=setup.limit_ms)
    recover_stale_trials(study, settings.heartbeat_s)
    evaluator = Evaluator(setup, settings)
    base = setup.base
    feasible = FeasibleSet(setup.space, lambda c: evaluator.predict(c).total_ms,
                           lambda c: canonical_key(c, depth=len(base.blocks), num_patches=base.patch_embed.num_patches,
                                                   num_prefix=base.num_prefix_tokens),
                           setup.limit_ms, seed=settings.seed)
    logger.info("search space %s: %s", setup.space.source, feasible.describe())
    sampler = study.sampler = CoverageSampler(study.sampler, setup.space, feasible, seed=settings.seed)
    if settings.learned:
        check_learned(setup, settings)  # before hours of trials

    finished = (optuna.trial.TrialState.COMPLETE,)
    done = count_trained(study)
    if done < settings.trials:
        bar = tqdm(total=settings.trials, initial=done, desc=f"search {settings.name()}", unit="trial", disable=not progress)
        attempts = settings.max_attempts or max(100, 10 * settings.trials)

        def training(number: int, config: PruneConfig) -> None:  # the bar names what runs now, a log says so too
            bar.set_postfix_str(f"training trial {number}: {config}")
            logger.log(logging.DEBUG if progress else logging.INFO, "trial %d: training %s", number, config)

        def tick(study: Any, trial: Any) -> None:
            if heartbeat is not None:
                heartbeat.trial(None)
            recover_stale_trials(study, settings.heartbeat_s)  # a worker that died meanwhile, on any host
            record_study(evaluator, study)
            acc, val = trial.user_attrs.get("accuracy"), trial.user_attrs.get("val_accuracy")
            if acc is not None:
                bar.update(1)
            bar.set_postfix_str(f"trial {trial.number} done, sampling the next")
            logger.log(logging.DEBUG if progress else logging.INFO, "trial %d %s: %s%s", trial.number,
                       trial.user_attrs.get("config", "?"), trial.user_attrs.get("status", "?"),
                       f", test accuracy {acc:.4f} (val {val:.4f})" if acc is not None else "")
            complete = study.get_trials(deepcopy=False, states=finished)
            trained = count_trained(study, complete)
            tried = len(complete) + sum(map(is_rejected, study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))))
            # Running candidates count too: workers sharing a database stop together at settings.trials.
            running = sum(not str(t.user_attrs.get(KEY, "")).startswith("baseline:")
                          for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
            if trained + running >= settings.trials or sampler.exhausted:
                study.stop()
            elif tried >= attempts:
                logger.warning("stopping after %d candidates (--max-attempts): %d of them were trained",
                               tried, trained)
                study.stop()

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # On the journal file vitsearch beats itself; on a database Optuna does (the storage's heartbeat_interval).
        with Heartbeat(study, settings.heartbeat_s) if not settings.storage else contextlib.nullcontext() as heartbeat:
            try:
                with _quiet_interrupt():
                    study.optimize(make_objective(evaluator, training, heartbeat), callbacks=[tick],
                                   gc_after_trial=True)
            except KeyboardInterrupt:
                bar.close()
                requeue_interrupted(study)
                record_study(evaluator, study)
                raise Interrupted(
                    f"interrupted: {count_trained(study)} trained trials are kept in {setup.folder.path} (trials.csv, "
                    "front.csv written) and the interrupted one runs again on resume: run the same command again "
                    "to continue") from None
        bar.close()
        if sampler.exhausted and count_trained(study) < settings.trials:
            logger.warning("trained %d of the %d candidates asked: every model of the space within the budget is "
                           "trained (%s)", count_trained(study), settings.trials, feasible.describe())
    try:  # the baselines the trials did not reach (or other workers hold)
        baselines = evaluate_baselines(evaluator, study)
    except KeyboardInterrupt:
        record_study(evaluator, study)
        raise Interrupted("interrupted: the baselines done so far are kept in the study's storage; run the same "
                          "command again to resume") from None
    if settings.learned and learned_trial(study) is None:
        try:
            run_learned(evaluator, study)
        except KeyboardInterrupt:
            record_study(evaluator, study)
            raise Interrupted("interrupted while learning keep rates: the trials and baselines are kept in the "
                              "study's storage; run the same command again to learn them again") from None
    with setup.folder.lock("records"):
        trials = collect(study)
        front = write_results(setup, trials, baselines)
    return SearchResult(setup.folder.path, setup.budget_ms, setup.unpruned_ms, trials, front, baselines,
                        setup.limit_ms)


def requeue_interrupted(study: Any) -> None:
    """The trial Ctrl-C stopped (Optuna has failed it, or it is still RUNNING) is failed through the public API
    and its config enqueued again, once."""
    me = worker_id()
    retried = {t.user_attrs.get("retry_of") for t in study.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL)):
        if t.user_attrs.get("worker") != me or t.number in retried:
            continue
        if t.state == optuna.trial.TrialState.RUNNING:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        requeue(study, t)


@contextlib.contextmanager
def _quiet_interrupt() -> Any:
    """Optuna logs an interrupted trial's KeyboardInterrupt, or a VitsearchError (a training that diverged), with
    its traceback before raising it: drop that record (the CLI says in one line what was kept, or what to do)."""
    def keep(record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], (KeyboardInterrupt, VitsearchError)))

    optuna_logger = logging.getLogger("optuna")
    handlers = list(optuna_logger.handlers)
    for h in handlers:
        h.addFilter(keep)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(keep)


def summary(result: SearchResult) -> dict[str, Any]:
    """The JSON line the CLI ends with: ``accuracy`` on test, ``val_accuracy`` (what the search chose by) beside."""
    best = result.best
    unpruned = next((b for b in result.baselines if b.kind == "unpruned"), None)
    return {
        "study": str(result.folder), "budget_ms": round(result.budget_ms, 4),
        "limit_ms": None if result.limit_ms is None else round(result.limit_ms, 4), "unpruned_ms": round(result.unpruned_ms, 4),
        "unpruned_accuracy": unpruned.accuracy if unpruned else None,
        "unpruned_val_accuracy": unpruned.val_accuracy if unpruned else None,
        "trials": len(result.trials), "trained": sum(c.accuracy is not None for c in result.trials),
        "front": [{"config": str(c.config), "accuracy": c.accuracy, "val_accuracy": c.val_accuracy,
                   "predicted_ms": round(c.predicted_ms, 4)} for c in result.front],
        "best": None if best is None else {"trial": best.trial, "config": str(best.config), "accuracy": best.accuracy,
                                           "val_accuracy": best.val_accuracy,
                                           "predicted_ms": round(best.predicted_ms, 4), "gmacs": best.gmacs,
                                           "block_tokens": list(best.block_tokens)},
    }
