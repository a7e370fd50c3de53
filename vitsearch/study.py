"""The search: an Optuna multi-objective study over selector placement and keep ratios under a latency budget.

Objectives: maximise held-out accuracy, minimise the latency predicted from the device's table. The budget is an
Optuna constraint (``trial.set_constraint``): a candidate predicted over budget is rejected before any training.
Everything lands in ``reports/<study>/`` (see :class:`StudyFolder`), enough to rebuild the report.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from . import __version__
from .budget import Budget, parse_budget
from .config import PruneConfig, token_schedule
from .errors import VitsearchError
from .pareto import pareto_front
from .space import SearchSpace, default_space_file, load_space
from .training import (PiecewiseLinear, SoftLatency, TrainSettings, accuracy, fresh_model, train_candidate,
                       train_supernet)

logger = logging.getLogger(__name__)

STRATEGIES = ("brief", "shared")
SAMPLERS = ("tpe", "nsga2", "random")


@dataclass(frozen=True)
class SearchSettings:
    budget: str = "60%"  # "30ms", "0.03s", or a share of the unpruned model's latency on the device
    model: str = "digits"  # timm ViT/DeiT name, or the embedded digits model
    checkpoint: str | None = None  # the base weights (the digits model uses its cached pretraining)
    dataset: str = "digits"  # or an ImageFolder path
    device: str = "cpu"
    batch: int = 1  # batch size the latency is predicted for
    study: str | None = None  # name of the study folder under ``reports``; derived from the settings if None
    trials: int = 24  # candidates to train; those over budget are rejected before training and not counted
    max_attempts: int | None = None  # stop after this many candidates in all, trained or not (None: 10 x trials, >= 100)
    space: str | None = None  # search-space TOML; the built-in vitsearch/spaces/<family>.toml by default
    strategy: str = "brief"  # "brief": train every candidate; "shared": weight sharing
    train: TrainSettings = field(default_factory=TrainSettings)
    # Shared strategy: supernet steps (each trains the largest, the smallest and a random config), then a few
    # steps per candidate from it. On the digits default, 200 + 0 took 60% of the brief search's time for a front
    # 5% worse in hypervolume; 60 + 2 came within 0.6-0.9% in about a third of it (benchmarks/RESULTS.md).
    shared_steps: int = 60
    shared_finetune_steps: int = 2
    storage: str | None = None  # Optuna storage URL (postgresql://...); a journal file in the study folder if None
    sampler: str = "tpe"
    seed: int = 0
    max_train: int | None = None  # subset sizes for large ImageFolder data sets
    max_val: int | None = None
    workers: int = 0  # DataLoader processes for ImageFolder images (speed only: results do not depend on it)
    reports: str = "reports"
    tables: str = "latency_tables"

    def name(self) -> str:
        if self.study:
            return self.study
        budget = str(parse_budget(self.budget)).replace("%", "pct").replace(".", "p")
        return f"{self.model}-{self.device.replace('/', '_').replace(':', '_')}-{budget}-{self.strategy}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Candidate:
    """One evaluated config: a trial of the study or a baseline."""

    config: PruneConfig
    kind: str  # "search", "unpruned" or "uniform"
    predicted_ms: float
    accuracy: float | None = None  # None: rejected before training
    gmacs: float | None = None
    train_seconds: float = 0.0
    trial: int | None = None
    feasible: bool = True
    status: str = "trained"
    block_tokens: tuple[int, ...] = ()
    selection_ms: float = 0.0
    checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(config=str(self.config), method=self.config.method,
                 blocks=list(self.config.keep), keep=list(self.config.keep.values()), block_tokens=list(self.block_tokens))
        return d


@dataclass
class SearchResult:
    folder: Path
    budget_ms: float
    unpruned_ms: float
    trials: list[Candidate]
    front: list[Candidate]
    baselines: list[Candidate]

    @property
    def best(self) -> Candidate | None:
        """The most accurate feasible candidate (the faster one on ties)."""
        ok = [c for c in self.trials if c.feasible and c.accuracy is not None]
        return max(ok, key=lambda c: (c.accuracy, -c.predicted_ms), default=None)


# ---------------------------------------------------------------------------------------------------------------
# The pieces a search needs, each resolved once.

@dataclass
class Setup:
    base: nn.Module
    base_info: dict[str, Any]
    splits: Any
    predictor: Any
    space: SearchSpace
    budget: Budget
    budget_ms: float
    unpruned_ms: float
    fastest: tuple[PruneConfig, float]
    folder: Path


def load_base(settings: SearchSettings) -> tuple[nn.Module, dict[str, Any]]:
    """The base model and where its weights came from (path and hash, checked again on resume)."""
    from .models import DIGITS, create_model, file_sha256

    if settings.model in (DIGITS, "vit_digits") and settings.checkpoint is None:
        from .pretrain import base_model

        model, meta = base_model()
        weights = Path(meta["path"]) / "model.pt"
        return model, {"model": DIGITS, "checkpoint": str(weights), "sha256": file_sha256(weights),
                       "base_accuracy_at_pretrain": meta.get("val_accuracy")}
    if settings.checkpoint is None:
        raise VitsearchError(
            f"model {settings.model!r} needs trained weights to search: pass --checkpoint PATH (a timm/PyTorch "
            "state_dict or .safetensors), or use the embedded default --model digits")
    model = create_model(settings.model, checkpoint=settings.checkpoint)
    return model, {"model": settings.model, "checkpoint": str(Path(settings.checkpoint).resolve()),
                   "sha256": file_sha256(settings.checkpoint)}


def load_predictor(settings: SearchSettings, base: nn.Module, *, progress: bool = True) -> Any:
    """The device's latency table for this model's geometry; on the local CPU a missing table is profiled."""
    from .latency import table as table_mod
    from .latency.devices import resolve
    from .latency.predict import Predictor
    from .models import geometry

    spec = resolve(settings.device, settings.tables)
    g = geometry(base)
    path = table_mod.table_path(settings.tables, settings.device, g, settings.batch)
    complete = path.exists() and table_mod.meta_path(path).exists() and \
        json.loads(table_mod.meta_path(path).read_text()).get("complete", False)
    if not complete:
        if spec.transport != "local":
            raise VitsearchError(
                f"no latency table for {g.key} at batch {settings.batch} on device {settings.device!r} ({path}): "
                f"profile it first with: vitsearch profile --device {settings.device} --model {settings.model} "
                f"--batch {settings.batch}")
        from .latency.profile import profile

        logger.info("no complete latency table at %s: profiling %s on %s first", path, g.key, settings.device)
        profile(settings.device, model=settings.model, batch=settings.batch, tables=settings.tables,
                progress=progress, model_kwargs={"num_classes": g.num_classes})
    return Predictor(table_mod.load(path, geometry=g, batch=settings.batch))


def block_curve(predictor: Any) -> PiecewiseLinear:
    """ms of one stock block at n tokens, read from the table (what the latency loss differentiates)."""
    rows = sorted((p.n, getattr(r, predictor.statistic)) for p, r in predictor.table.rows.items() if p.kind == "block")
    return PiecewiseLinear([n for n, _ in rows], [ms for _, ms in rows])


def fastest_config(space: SearchSpace, predictor: Any) -> tuple[PruneConfig, float]:
    """The fastest config the space allows: every placement of up to max_selectors selectors at keep_min."""
    best: tuple[PruneConfig, float] | None = None
    for method in space.methods:
        for n in range(1, space.max_selectors + 1):
            for blocks in itertools.combinations(space.blocks, n):
                config = PruneConfig(method, {b: space.keep_min for b in blocks})
                ms = predictor.predict(config).total_ms
                if best is None or ms < best[1]:
                    best = (config, ms)
    assert best is not None
    return best


def prepare(settings: SearchSettings, *, progress: bool = True) -> Setup:
    from .data import LoaderSettings, check_num_classes, load_dataset
    from .models import geometry

    if settings.strategy not in STRATEGIES:
        raise VitsearchError(f"unknown strategy {settings.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if settings.sampler not in SAMPLERS:
        raise VitsearchError(f"unknown sampler {settings.sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if settings.trials < 1:
        raise VitsearchError(f"--trials must be at least 1, got {settings.trials}")
    budget = parse_budget(settings.budget)
    base, base_info = load_base(settings)
    g = geometry(base)
    space = load_space(settings.space or default_space_file(settings.model), depth=g.depth)
    splits = load_dataset(settings.dataset, base, seed=settings.seed, max_train=settings.max_train,
                          max_val=settings.max_val, loading=LoaderSettings(settings.workers))
    check_num_classes(splits, base)
    predictor = load_predictor(settings, base, progress=progress)
    unpruned_ms = predictor.predict(PruneConfig()).total_ms
    budget_ms = budget.resolve(unpruned_ms)
    fastest = fastest_config(space, predictor)
    if budget_ms < fastest[1]:
        raise VitsearchError(
            f"budget {budget} ({budget_ms:.3f} ms) is below the fastest config this search space allows on "
            f"{settings.device}: {fastest[0]} at {fastest[1]:.3f} ms (unpruned: {unpruned_ms:.3f} ms). Give a budget "
            f"of at least {fastest[1]:.3f} ms ({100 * fastest[1] / unpruned_ms:.0f}%), or a space with lower keep ratios")
    folder = Path(settings.reports) / settings.name()
    return Setup(base, base_info, splits, predictor, space, budget, budget_ms, unpruned_ms, fastest, folder)


# ---------------------------------------------------------------------------------------------------------------
# The study folder: provenance, storage, trials, front, baselines, checkpoints.

def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def _versions() -> dict[str, str]:
    import optuna
    import timm

    import onnxruntime

    return {"vitsearch": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "optuna": optuna.__version__, "onnxruntime": onnxruntime.__version__}


# What must match for a re-run to continue a study rather than mix two searches in one folder.
_IDENTITY = ("model", "sha256", "dataset", "device", "batch", "budget_ms", "space", "strategy")


def write_provenance(setup: Setup, settings: SearchSettings) -> dict[str, Any]:
    """``study.json``: the resolved configuration. On resume it must describe the same search."""
    table = setup.predictor.table
    record = {
        "study": settings.name(), "settings": settings.to_dict(),
        "model": setup.base_info["model"], "checkpoint": setup.base_info["checkpoint"],
        "sha256": setup.base_info["sha256"], "dataset": settings.dataset,
        "dataset_description": setup.splits.description, "device": settings.device, "batch": settings.batch,
        "latency_table": str(table.path), "latency_table_meta": table.meta,
        "budget": str(setup.budget), "budget_ms": round(setup.budget_ms, 6), "unpruned_ms": setup.unpruned_ms,
        "fastest": {"config": str(setup.fastest[0]), "ms": setup.fastest[1]},
        "space": setup.space.to_dict(), "strategy": settings.strategy, "versions": _versions(),
        "objectives": ["accuracy (maximise)", "predicted latency ms (minimise)"], "metric": "top1",
    }
    record = json.loads(json.dumps(record, default=str))  # compare as it reads back: tuples become lists
    path = setup.folder / "study.json"
    if path.exists():
        old = json.loads(path.read_text())
        changed = [k for k in _IDENTITY if old.get(k) != record.get(k)]
        if changed:
            raise VitsearchError(
                f"study {settings.name()!r} in {setup.folder} was made with a different {', '.join(changed)}: "
                "pass --study NEW_NAME for a new search, or the same settings to resume it")
        record["created"] = old.get("created")
    record.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    record["created"] = record["created"] or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write_json(path, record)
    return record


def open_study(settings: SearchSettings, folder: Path) -> Any:
    import optuna

    sampler: Any
    if settings.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=settings.seed, population_size=12)
    elif settings.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=settings.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=8, multivariate=True)
    if settings.storage:
        storage: Any = _rdb_storage(settings.storage)
    else:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    return optuna.create_study(study_name=settings.name(), storage=storage, sampler=sampler,
                               directions=["maximize", "minimize"], load_if_exists=True)


def _rdb_storage(url: str, attempts: int = 3) -> Any:
    import optuna
    import sqlalchemy.exc

    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
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
            safe = url.split("@")[-1]
            raise VitsearchError(f"cannot open the study storage at {safe}: {str(e).splitlines()[0]}. "
                                 "Check the database URL, that the server is running and reachable") from None


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def recover_stale_trials(study: Any) -> int:
    """Trials left RUNNING by a killed worker on this host are failed and their configs enqueued again, so a
    resumed search neither loses nor repeats a completed trial. Other hosts' running trials are left alone."""
    import optuna

    host, recovered = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        w_host, _, pid = worker.rpartition(":")
        if w_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
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


# ---------------------------------------------------------------------------------------------------------------
# Evaluating candidates.

class Evaluator:
    """Turns a config into a Candidate: predicted latency, and if within budget brief training, accuracy, GMACs."""

    def __init__(self, setup: Setup, settings: SearchSettings) -> None:
        self.setup, self.settings = setup, settings
        self.latency = SoftLatency(block_curve(setup.predictor))
        self.supernet: nn.Module | None = None
        (setup.folder / "checkpoints").mkdir(parents=True, exist_ok=True)

    def predict(self, config: PruneConfig) -> Any:
        return self.setup.predictor.predict(config)

    def start_from(self) -> nn.Module:
        """The weights a candidate starts from: the base model, or the trained supernet (shared strategy)."""
        if self.settings.strategy == "shared":
            return self._shared()
        return self.setup.base

    def evaluate(self, config: PruneConfig, kind: str, *, trial: int | None = None,
                 checkpoint_name: str | None = None) -> Candidate:
        s, setup = self.settings, self.setup
        pred = self.predict(config)
        cand = Candidate(config, kind, pred.total_ms, trial=trial, selection_ms=pred.selection_ms,
                         block_tokens=token_schedule(config, depth=len(setup.base.blocks),
                                                     num_patches=setup.base.patch_embed.num_patches,
                                                     num_prefix=setup.base.num_prefix_tokens).block_tokens)
        # The unpruned baseline is the base model itself, whatever the strategy.
        model = fresh_model(self.start_from() if config.keep else setup.base, config, s.train.seed)
        steps = s.train.steps if s.strategy == "brief" else s.shared_finetune_steps
        if config.keep and steps > 0:
            result = train_candidate(model, setup.base, setup.splits, dataclasses.replace(s.train, steps=steps),
                                     latency=self.latency)
            cand.train_seconds = result.seconds
        cand.accuracy = accuracy(model, setup.splits)
        cand.gmacs = _gmacs(model)
        if checkpoint_name:
            path = setup.folder / "checkpoints" / checkpoint_name
            _save_checkpoint(model, config, path)
            cand.checkpoint = str(path.relative_to(setup.folder))
        return cand

    def _shared(self) -> nn.Module:
        if self.supernet is not None:
            return self.supernet
        s, setup, space = self.settings, self.setup, self.setup.space
        path = setup.folder / "supernet.pt"
        everywhere = [PruneConfig(m, {b: space.keep_max for b in space.blocks}) for m in space.methods]
        model = setup.base
        for config in everywhere:  # every selector and head the space can use, seeded like a brief candidate's
            model = fresh_model(model, config, s.train.seed)
        if path.exists():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
            logger.info("supernet from %s", path)
        else:
            rng_space = _Sampler(space)
            logger.info("training the shared supernet for %d steps", s.shared_steps)
            result = train_supernet(model, setup.base, setup.splits, rng_space.step_configs, everywhere,
                                    dataclasses.replace(s.train, steps=s.shared_steps), latency=self.latency)
            _save_checkpoint(model, PruneConfig(space.methods[0], {b: space.keep_max for b in space.blocks}), path,
                             extra={"train_seconds": result.seconds, "steps": s.shared_steps})
            _write_json(setup.folder / "supernet.json", {"train_seconds": result.seconds, "steps": s.shared_steps})
        self.supernet = model
        return model


class _Sampler:
    """Configs for supernet steps: the largest and the smallest of one method (alternating), plus a random one."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def step_configs(self, step: int, rng: random.Random) -> list[PruneConfig]:
        sp = self.space
        method = sp.methods[step % len(sp.methods)]
        largest = PruneConfig(method, {sp.blocks[-1]: sp.keep_max})
        smallest = PruneConfig(method, {b: sp.keep_min for b in sp.blocks[:sp.max_selectors]})
        n = rng.randint(1, sp.max_selectors)
        blocks = sorted(rng.sample(sp.blocks, min(n, len(sp.blocks))))
        random_config = PruneConfig(rng.choice(sp.methods), {b: rng.choice(sp.keep_choices) for b in blocks})
        return [largest, smallest, random_config]


def _gmacs(model: nn.Module) -> float:
    from .flops import count_macs

    return count_macs(model).matmul / 1e9


def _save_checkpoint(model: nn.Module, config: PruneConfig, path: Path, extra: dict | None = None) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "config": config.to_dict(), **(extra or {})}, tmp)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------------------
# Running it.

def evaluate_baselines(evaluator: Evaluator, study: Any) -> list[Candidate]:
    """The unpruned model and uniform keep ratios at the standard placements, evaluated like the candidates.
    Each is stored in the study's storage as it finishes, so an interrupted search keeps those already done
    and workers sharing a database share them too."""
    done = {k[len("baseline:"):]: v for k, v in study.user_attrs.items() if k.startswith("baseline:")}
    configs = [("unpruned", PruneConfig())] + [("uniform", c) for c in evaluator.setup.space.baselines()]
    out: list[Candidate] = []
    for kind, config in configs:
        if str(config) in done:
            out.append(_candidate_from_dict(done[str(config)]))
            continue
        cand = evaluator.evaluate(config, kind)
        cand.feasible = cand.predicted_ms <= evaluator.setup.budget_ms
        study.set_user_attr(f"baseline:{config}", cand.to_dict())
        out.append(cand)
        logger.info("baseline %s: accuracy %.4f, %.3f ms", config, cand.accuracy, cand.predicted_ms)
    return out


def _candidate_from_dict(d: dict[str, Any]) -> Candidate:
    fields = {f.name for f in dataclasses.fields(Candidate)}
    d = {k: v for k, v in d.items() if k in fields}
    d["config"] = PruneConfig.parse(d["config"])
    d["block_tokens"] = tuple(d.get("block_tokens", ()))
    return Candidate(**d)


def make_objective(evaluator: Evaluator) -> Callable[[Any], tuple[float, float]]:
    setup = evaluator.setup

    def objective(trial: Any) -> tuple[float, float]:
        trial.set_user_attr("worker", _worker_id())
        config = setup.space.suggest(trial)
        pred = evaluator.predict(config)
        over_ms = pred.total_ms - setup.budget_ms
        over_selectors = max(len(config.keep) - setup.space.max_selectors, 1 - len(config.keep))
        trial.set_user_attr("config", str(config))
        trial.set_user_attr("predicted_ms", pred.total_ms)
        trial.set_constraint("latency_ms", over_ms)
        trial.set_constraint("selectors", float(over_selectors))
        if over_ms > 0 or over_selectors > 0:
            why = (f"over budget by {over_ms:.3f} ms" if over_ms > 0 else
                   f"{len(config.keep)} selectors (allowed 1..{setup.space.max_selectors})")
            trial.set_user_attr("status", f"rejected before training: {why}")
            return 0.0, pred.total_ms  # infeasible by its constraints, so never on the front
        earlier = _trained_with(trial.study, str(config))
        if earlier is not None:
            # TPE re-suggests configs of a small discrete space; the seeded training would repeat itself exactly.
            # The earlier result is returned, so the sampler sees it again, and this trial is not counted as trained.
            trial.set_user_attr("same_as", earlier.number)
            trial.set_user_attr("status", f"same config as trial {earlier.number}: not trained again")
            return tuple(earlier.values)
        cand = evaluator.evaluate(config, "search", trial=trial.number, checkpoint_name=f"trial_{trial.number:04d}.pt")
        for key in ("accuracy", "gmacs", "train_seconds", "selection_ms", "checkpoint", "status"):
            trial.set_user_attr(key, getattr(cand, key))
        trial.set_user_attr("block_tokens", list(cand.block_tokens))
        return cand.accuracy, pred.total_ms

    return objective


def collect(study: Any, setup: Setup) -> list[Candidate]:
    """Every completed trial as a Candidate, in trial order; repeats of a trained config are left out (they hold
    nothing new, and their trial number stays in the storage with ``same_as``)."""
    import optuna

    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if "same_as" in t.user_attrs:
            continue
        config = PruneConfig.parse(t.user_attrs.get("config", "none"))
        feasible = all(v <= 0 for v in _constraints(t).values())
        out.append(Candidate(
            config, "search", float(t.user_attrs.get("predicted_ms", t.values[1])),
            accuracy=t.user_attrs.get("accuracy"), gmacs=t.user_attrs.get("gmacs"),
            train_seconds=float(t.user_attrs.get("train_seconds", 0.0)), trial=t.number, feasible=feasible,
            status=t.user_attrs.get("status", "trained"), block_tokens=tuple(t.user_attrs.get("block_tokens", ())),
            selection_ms=float(t.user_attrs.get("selection_ms", 0.0)), checkpoint=t.user_attrs.get("checkpoint")))
    return out


def _trained_with(study: Any, config: str) -> Any:
    """The first completed, trained trial of ``config`` in ``study``, if any."""
    import optuna

    return next((t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                 if t.user_attrs.get("config") == config and t.user_attrs.get("accuracy") is not None), None)


def _trained(study: Any, complete: Sequence[Any] | None = None) -> int:
    """Completed trials that were trained (``trials`` counts these; rejections before training cost nothing)."""
    import optuna

    if complete is None:
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sum(t.user_attrs.get("accuracy") is not None for t in complete)


def _constraints(trial: Any) -> dict[str, float]:
    return {k.split(":", 1)[1]: v for k, v in trial.system_attrs.items() if k.startswith("constraints:")}


def write_results(setup: Setup, trials: list[Candidate], baselines: list[Candidate]) -> list[Candidate]:
    """trials.csv/json, front.csv/json; checkpoints of configs off the front are removed."""
    import pandas as pd

    folder = setup.folder
    trained = [c for c in trials if c.feasible and c.accuracy is not None]
    front = [trained[i] for i in pareto_front([(c.accuracy, c.predicted_ms) for c in trained])]
    for name, rows in (("trials", trials), ("front", front), ("baselines", baselines)):
        records = [c.to_dict() for c in rows]
        _write_json(folder / f"{name}.json", records)
        frame = pd.DataFrame.from_records(records)
        frame.to_csv(folder / f"{name}.csv", index=False)
    keep = {c.checkpoint for c in front}
    for path in (folder / "checkpoints").glob("trial_*.pt"):
        if str(path.relative_to(folder)) not in keep:
            path.unlink()
    return front


def run_search(settings: SearchSettings, *, progress: bool = True) -> SearchResult:
    """Run (or resume) the search ``settings`` describe; returns the trials, the Pareto front and the baselines."""
    import optuna
    from tqdm.auto import tqdm

    setup = prepare(settings, progress=progress)
    setup.folder.mkdir(parents=True, exist_ok=True)
    write_provenance(setup, settings)
    study = open_study(settings, setup.folder)
    recover_stale_trials(study)
    evaluator = Evaluator(setup, settings)
    baselines = evaluate_baselines(evaluator, study)

    finished = (optuna.trial.TrialState.COMPLETE,)
    done = _trained(study)
    if done < settings.trials:
        bar = tqdm(total=settings.trials, initial=done, desc=f"search {settings.name()}", unit="trial", disable=not progress)
        attempts = settings.max_attempts or max(100, 10 * settings.trials)

        def tick(study: Any, trial: Any) -> None:
            acc = trial.user_attrs.get("accuracy")
            if acc is not None:
                bar.update(1)
            bar.set_postfix(config=trial.user_attrs.get("config", "?"), acc=f"{acc:.3f}" if acc is not None else "-")
            complete = study.get_trials(deepcopy=False, states=finished)
            trained = _trained(study, complete)
            # Running trials count too: workers sharing a database stop together at settings.trials.
            running = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
            if trained + running >= settings.trials:
                study.stop()
            elif len(complete) >= attempts:
                logger.warning("stopping after %d candidates: only %d of them fit the budget of %.3f ms and were "
                               "new configs; a larger budget or a larger search space finds more", len(complete),
                               trained, setup.budget_ms)
                study.stop()

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(make_objective(evaluator), callbacks=[tick], gc_after_trial=True)
        bar.close()
    trials = collect(study, setup)
    front = write_results(setup, trials, baselines)
    return SearchResult(setup.folder, setup.budget_ms, setup.unpruned_ms, trials, front, baselines)


def summary(result: SearchResult) -> dict[str, Any]:
    """The JSON line the CLI ends with."""
    best = result.best
    unpruned = next((b for b in result.baselines if b.kind == "unpruned"), None)
    return {
        "study": str(result.folder), "budget_ms": round(result.budget_ms, 4), "unpruned_ms": round(result.unpruned_ms, 4),
        "unpruned_accuracy": unpruned.accuracy if unpruned else None,
        "trials": len(result.trials), "trained": sum(c.accuracy is not None for c in result.trials),
        "front": [{"config": str(c.config), "accuracy": c.accuracy, "predicted_ms": round(c.predicted_ms, 4)}
                  for c in result.front],
        "best": None if best is None else {"config": str(best.config), "accuracy": best.accuracy,
                                           "predicted_ms": round(best.predicted_ms, 4), "gmacs": best.gmacs,
                                           "block_tokens": list(best.block_tokens)},
    }
