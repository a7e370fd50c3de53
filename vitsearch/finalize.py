"""Finalize a chosen config of a study: its method's full training schedule, ONNX export, measured latency.

Brief training ranks candidates; the config a user ships gets the papers' recipe, from the *base* checkpoint:

- SPViT, **layer-to-phase progressive training**: selectors are inserted in block order. Phase k trains the
  config restricted to its first k selector groups (the new selector learns while the rest of the network
  fine-tunes), until the whole config is in; the computation-aware loss (keep ratio, latency from the device's
  table, distillation) throughout. ``merge_tol`` merges neighbouring selectors whose keep ratios differ by at
  most that much into one phase (inserted together): the paper merges similar selectors into phases, but its
  exact rule is not published (reference notes 1.4), so by default every selector gets its own phase. The
  chosen config itself is never changed: its token schedule is what was predicted and what gets measured.
- Evo-ViT, **layer-to-stage**: token selection at every block of a stage for the first ``evo_switch`` share of
  the steps, then only at the stage boundaries the config names; the assisted CLS loss throughout.

One optimiser and one warm-up + cosine learning-rate curve span all phases (selectors not yet inserted get no
gradient, so AdamW leaves them alone). Training state (weights, optimiser, RNG, step) is saved atomically at
every phase boundary and every ``checkpoint_every`` steps under ``reports/<study>/finalized/trial_N/``, so an
interrupted finalize resumes where it stopped and ends with the same weights as an uninterrupted one.

Then the model is exported to ONNX with static token counts (checked against PyTorch in onnxruntime) and timed
on the study's device like the latency table's validation (beside the drift reference, so it is recorded both as
measured and at the table's speed, see ``latency/reference.py``); the record lands in ``finalized.json``, which
``vitsearch report`` shows. An unreachable device keeps the trained model: re-running (or ``measure_only``)
retries the measurement alone.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from .config import PruneConfig, token_schedule
from .errors import VitsearchError
from .pruning import apply, prune_state
from .training import LossWeights, SoftLatency, TrainSettings, accuracy, candidate_loss, fresh_model
from .training.brief import _batches, _seeded, next_batch, param_groups, set_lr

logger = logging.getLogger(__name__)

SCHEDULES = ("progressive", "plain")  # plain: the whole config from step 0 (the comparison the benchmark makes)
FINALIZED_FILE = "finalized.json"


@dataclass(frozen=True)
class FinalizeSettings:
    steps: int = 600  # 10x the brief default: the chosen config earns the full recipe
    epochs: float | None = None  # if set, overrides steps: epochs over the study's training split
    batch_size: int = 64
    lr: float = 1e-4  # backbone: fine-tunes around the base checkpoint
    selector_lr: float = 1e-3  # selectors and the Evo-ViT aux head learn from scratch
    weight_decay: float = 0.05
    warmup_steps: int = 20
    weights: LossWeights = field(default_factory=LossWeights)
    schedule: str = "progressive"  # or "plain"
    switch: tuple[float, ...] | None = None  # phase boundaries as shares of the steps; None: the defaults below
    evo_switch: float = 0.5  # Evo-ViT: share of steps with selection at every block (the paper: 200 of 300 epochs
    # from scratch; we start from a trained base, so half)
    merge_tol: float = 0.0  # SPViT: neighbouring selectors within this keep-ratio difference share a phase
    checkpoint_every: int = 50  # steps between resumable checkpoints (phase boundaries always save)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def train_settings(self, steps: int) -> TrainSettings:
        return TrainSettings(steps=steps, batch_size=self.batch_size, lr=self.lr, selector_lr=self.selector_lr,
                             weight_decay=self.weight_decay, warmup_steps=self.warmup_steps, weights=self.weights,
                             seed=self.seed)


@dataclass(frozen=True)
class Phase:
    """Steps [start, end) train ``config``; Evo-ViT re-selects at every block of a stage while ``every_block``."""

    start: int
    end: int
    config: PruneConfig
    every_block: bool = False

    def describe(self) -> str:
        return f"{self.start}-{self.end}: {self.config}" + (" (every block)" if self.every_block else "")


# ---------------------------------------------------------------------------------------------------------------
# The schedule: a pure function of the config and the settings (tested without training).

def selector_groups(config: PruneConfig, merge_tol: float = 0.0) -> list[list[int]]:
    """Selector blocks in order, neighbours whose keep ratios differ by at most ``merge_tol`` in one group."""
    groups: list[list[int]] = []
    for block, ratio in config.keep.items():
        if groups and merge_tol > 0 and abs(config.keep[groups[-1][-1]] - ratio) <= merge_tol + 1e-9:
            groups[-1].append(block)
        else:
            groups.append([block])
    return groups


def _boundaries(steps: int, count: int, switch: Sequence[float] | None, what: str) -> list[int]:
    """``count`` phases over ``steps``: boundaries at the ``switch`` shares, or evenly spaced."""
    if switch is None:
        shares = [i / count for i in range(1, count)]
    else:
        shares = list(switch)
        if len(shares) != count - 1:
            raise VitsearchError(f"--switch gives {len(shares)} switch point(s), but {what} has {count} phases: "
                                 f"give {count - 1} increasing shares of the steps, e.g. "
                                 f"{','.join(f'{i / count:.2g}' for i in range(1, count)) or '(none)'}")
        if any(not 0 < s < 1 for s in shares) or shares != sorted(set(shares)):
            raise VitsearchError(f"--switch shares {shares} must increase strictly within (0, 1)")
    return [0] + [round(s * steps) for s in shares] + [steps]


def plan(config: PruneConfig, settings: FinalizeSettings, steps: int) -> list[Phase]:
    """The phases that train ``config`` for ``steps`` steps with its method's schedule."""
    config = PruneConfig.parse(config)
    if settings.schedule not in SCHEDULES:
        raise VitsearchError(f"unknown schedule {settings.schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if settings.schedule == "plain" or config.method == "none":
        return [Phase(0, steps, config)]
    if config.method == "evovit":
        switch = settings.switch if settings.switch is not None else (settings.evo_switch,)
        b = _boundaries(steps, 2, switch, "the Evo-ViT layer-to-stage schedule")
        return [Phase(b[0], b[1], config, every_block=True), Phase(b[1], b[2], config)]
    groups = selector_groups(config, settings.merge_tol)
    b = _boundaries(steps, len(groups), settings.switch, f"{config} (one phase per selector group {groups})")
    phases = []
    for k in range(len(groups)):
        inserted = {blk for g in groups[:k + 1] for blk in g}
        phases.append(Phase(b[k], b[k + 1], PruneConfig(config.method, {blk: r for blk, r in config.keep.items()
                                                                           if blk in inserted})))
    return [p for p in phases if p.end > p.start]


def describe(phases: Sequence[Phase]) -> str:
    return "; ".join(p.describe() for p in phases)


# ---------------------------------------------------------------------------------------------------------------
# Training with resumable checkpoints.

@dataclass
class TrainOutcome:
    steps: int
    seconds: float  # training time of this call plus the time recorded by the runs it resumed
    resumed_from: int  # step this call started at (0: fresh)
    final_loss: dict[str, float]


StepHook = Callable[[int, Phase], None]


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def train_schedule(model: nn.Module, teacher: nn.Module, splits: Any, config: PruneConfig, phases: Sequence[Phase],
                   settings: FinalizeSettings, *, latency: SoftLatency | None, state_path: Path,
                   on_step: StepHook | None = None, progress: bool = True) -> TrainOutcome:
    """Train the patched ``model`` through ``phases``, resuming from ``state_path`` when it holds a run of the
    same config and settings. ``on_step(step, phase)`` is called before every step (tests record the schedule)."""
    from tqdm.auto import tqdm

    steps = phases[-1].end if phases else 0
    apply(model, config)  # every selector / aux head exists before the optimiser sees the parameters
    train = settings.train_settings(steps)
    optimizer = torch.optim.AdamW(param_groups(model, train), weight_decay=train.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(settings.seed)
    # What must match for a saved state to continue this run (how often it is saved need not).
    recipe = {k: v for k, v in settings.to_dict().items() if k != "checkpoint_every"}
    identity = {"config": str(config), "settings": json.loads(json.dumps(recipe)), "steps": steps}
    start_step, seconds_before, parts = 0, 0.0, {}
    rng_state: torch.Tensor | None = None
    if state_path.is_file():
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        if saved.get("identity") != identity:
            raise VitsearchError(
                f"{state_path} holds an interrupted finalize with different settings: re-run with the same "
                "settings to resume it, or pass --restart to start over")
        model.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        rng_state, start_step, seconds_before = saved["rng"], int(saved["step"]), float(saved["seconds"])
        logger.info("resuming the finalize of %s at step %d of %d from %s", config, start_step, steps, state_path)
    teacher.eval()
    boundaries = {p.end for p in phases}
    started = time.perf_counter()

    def save(step: int) -> None:
        _save_atomic({"identity": identity, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "generator": generator.get_state(), "rng": torch.get_rng_state(), "step": step,
                      "seconds": seconds_before + time.perf_counter() - started}, state_path)

    bar = tqdm(total=steps, initial=start_step, desc=f"finalize {config}", unit="step", disable=not progress)
    with _seeded(settings.seed):
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        batches = _batches(splits, settings.batch_size, settings.seed)
        for _ in range(start_step):  # the same data order as an uninterrupted run
            next(batches)
        for step in range(start_step, steps):
            phase = next(p for p in phases if p.start <= step < p.end)
            if on_step is not None:
                on_step(step, phase)
            set_lr(optimizer, base_lrs, step, train.warmup_steps, steps)
            x, y, teacher_logits = next_batch(batches, splits, teacher, generator)
            apply(model, phase.config, evo_every_block=phase.every_block)
            model.train()
            optimizer.zero_grad(set_to_none=True)
            loss, parts = candidate_loss(model, x, y, teacher_logits, settings.weights, latency)
            loss.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(phase=str(phase.config), loss=f"{parts['total']:.3f}")
            done = step + 1
            if done < steps and (done in boundaries or done % settings.checkpoint_every == 0):
                prune_state(model).reset()
                save(done)
    bar.close()
    prune_state(model).reset()  # drop graph-holding tensors of the last forward
    apply(model, config)  # inference: the whole config, stage-wise
    model.eval()
    seconds = seconds_before + time.perf_counter() - started
    return TrainOutcome(steps, seconds, start_step, parts)


# ---------------------------------------------------------------------------------------------------------------
# The study: provenance checks, the chosen trial, measuring.

@dataclass
class StudyContext:
    """What finalizing needs from a study folder, loaded and checked once for all its trials."""

    folder: Path
    meta: dict[str, Any]
    trials: list[dict[str, Any]]
    front: list[dict[str, Any]]
    base: nn.Module
    splits: Any
    predictor: Any
    latency: SoftLatency


def study_folder(study: str | Path, reports: str | Path = "reports") -> Path:
    path = Path(study)
    folder = path if (path / "study.json").is_file() else Path(reports) / str(study)
    if not (folder / "study.json").is_file():
        raise VitsearchError(f"no study {study!r}: expected {folder / 'study.json'} (run vitsearch search first, or "
                             "give the study folder's path)")
    return folder


def _read(folder: Path, name: str) -> Any:
    path = folder / name
    if not path.is_file():
        raise VitsearchError(f"{path} is missing: the search of this study has not finished; resume it first")
    return json.loads(path.read_text())


def _search_settings(meta: Mapping[str, Any]) -> Any:
    from .study import SearchSettings

    s = dict(meta["settings"])
    train = dict(s.get("train") or {})
    train["weights"] = LossWeights(**train.get("weights", {}))
    s["train"] = TrainSettings(**train)
    known = {f.name for f in dataclasses.fields(SearchSettings)}
    return SearchSettings(**{k: v for k, v in s.items() if k in known})


def check_base(meta: Mapping[str, Any]) -> None:
    """The base checkpoint recorded in study.json must still be there, with the same bytes."""
    from .models import file_sha256

    path = Path(meta["checkpoint"])
    if not path.is_file():
        raise VitsearchError(
            f"the study's base checkpoint {path} has moved or was deleted (study.json records it with sha256 "
            f"{meta['sha256'][:16]}...): put it back at that path; finalizing starts from exactly those weights")
    digest = file_sha256(path)
    if digest != meta["sha256"]:
        raise VitsearchError(
            f"the study's base checkpoint {path} has changed: its sha256 is {digest[:16]}..., study.json records "
            f"{meta['sha256'][:16]}.... Restore the original weights, or run a new search on these ones")


def open_study(study: str | Path, reports: str | Path = "reports", *, workers: int = 0) -> StudyContext:
    from .data import LoaderSettings, load_dataset
    from .latency import table as table_mod
    from .latency.predict import Predictor
    from .models import geometry
    from .study import block_curve, load_base

    folder = study_folder(study, reports)
    meta = _read(folder, "study.json")
    trials, front = _read(folder, "trials.json"), _read(folder, "front.json")
    check_base(meta)
    settings = _search_settings(meta)
    base, info = load_base(settings)
    if info["sha256"] != meta["sha256"]:
        raise VitsearchError(
            f"the base model these settings load now ({info['checkpoint']}, sha256 {info['sha256'][:16]}...) is not "
            f"the study's ({meta['checkpoint']}, sha256 {meta['sha256'][:16]}...): the cached base model was rebuilt "
            "with other settings; run a new search")
    table_path = Path(meta["latency_table"])
    if not table_path.is_file():
        raise VitsearchError(f"the study's latency table {table_path} is missing: finalize reads it for the latency "
                             "loss and the prediction; run from the folder the search ran in, or restore the table")
    predictor = Predictor(table_mod.load(table_path, geometry=geometry(base), batch=int(meta["batch"])))
    splits = load_dataset(settings.dataset, base, seed=settings.seed, max_train=settings.max_train,
                          max_val=settings.max_val, loading=LoaderSettings(workers))
    return StudyContext(folder, meta, trials, front, base, splits, predictor, SoftLatency(block_curve(predictor)))


def choose_trial(ctx: StudyContext, trial: int) -> dict[str, Any]:
    """The trial record, if it exists and was trained within budget; else an error naming the front's trials."""
    on_front = ", ".join(str(t["trial"]) for t in ctx.front) or "none (no trial met the budget)"
    record = next((t for t in ctx.trials if t.get("trial") == trial), None)
    if record is None:
        raise VitsearchError(f"study {ctx.folder.name} has no trial {trial}: the Pareto front's trials are {on_front}")
    if not record.get("feasible") or record.get("accuracy") is None:
        why = record.get("status") or "infeasible"
        raise VitsearchError(f"trial {trial} ({record['config']}) cannot be finalized, it was {why}: the Pareto "
                             f"front's trials are {on_front}")
    return record


def measure(onnx_path: Path, model: nn.Module, ctx: StudyContext) -> dict[str, Any]:
    """Time the exported model end to end on the study's device with the latency table's settings (threads,
    warm-up, repeats), as the table's validation does: beside the drift reference where the table has one, so
    the result is also given at the table's speed. Raises VitsearchError when the device cannot be used."""
    from .latency import reference as ref
    from .latency.devices import Artefact, MeasureSettings, open_device

    table_meta = ctx.predictor.table.meta
    tables = (ctx.meta.get("settings") or {}).get("tables", "latency_tables")
    device = open_device(ctx.meta["device"], tables)
    settings = dataclasses.replace(MeasureSettings(**table_meta.get("settings", {})),
                                   threads=int(table_meta.get("threads", 0)))
    batch = int(ctx.meta["batch"])
    if device.needs == "torch":
        from .export import example_input

        artefact = Artefact("finalized", module=copy.deepcopy(model).eval(), inputs=(example_input(model, batch),))
    else:
        artefact = Artefact("finalized", onnx=onnx_path)
    runtime: dict[str, Any] = {}
    reference = None
    try:
        if ctx.predictor.reference_ms is not None:
            reference = ref.Reference.build(device, ctx.base, batch)
        for event, ref_ms in ref.measure(device, [artefact], settings, reference):
            if event["event"] == "runtime":
                runtime = {k: v for k, v in event.items() if k != "event"}
            elif event["event"] == "error":
                raise VitsearchError(f"measuring on {device.name} failed: {event['message']}")
            else:
                scale = ref.factor(ctx.predictor.reference_ms, ref_ms)
                return {"measured_ms": event["median_ms"], "measured_p90_ms": event.get("p90_ms"),
                        "measured_reference_ms": ref_ms,
                        "measured_at_table_speed_ms": None if scale is None else event["median_ms"] * scale,
                        "measured_runtime": runtime.get("runtime"), "measured_threads": runtime.get("threads")}
    except OSError as e:
        raise VitsearchError(f"cannot reach device {device.name}: {e}") from e
    finally:
        if reference is not None:
            reference.close()
    raise VitsearchError(f"device {device.name} returned no measurement")


# ---------------------------------------------------------------------------------------------------------------
# Finalizing one trial.

@dataclass
class Finalized:
    record: dict[str, Any]  # the finalized.json row
    folder: Path  # reports/<study>/finalized/trial_N
    measure_error: str | None = None


def _records(folder: Path) -> list[dict[str, Any]]:
    path = folder / FINALIZED_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def _store(folder: Path, record: dict[str, Any]) -> None:
    from .study import _write_json

    rows = [r for r in _records(folder) if r.get("trial") != record["trial"]] + [record]
    _write_json(folder / FINALIZED_FILE, sorted(rows, key=lambda r: r["trial"]))


def finalize_trial(ctx: StudyContext, trial: int, settings: FinalizeSettings = FinalizeSettings(), *,
                   measure_only: bool = False, restart: bool = False, on_step: StepHook | None = None,
                   progress: bool = True) -> Finalized:
    """Train trial ``trial``'s config with its schedule, export it, measure it, and record it in finalized.json.

    A finished model (``model.pt``) is not trained again; with ``measure_only`` only the measurement is
    (re)done, from it. A device error leaves the row with ``measured_ms`` None and ``measure_error`` set."""
    from .export import export_model
    from .study import _gmacs, _save_checkpoint

    record = choose_trial(ctx, trial)
    config = PruneConfig.parse(record["config"])
    out = ctx.folder / "finalized" / f"trial_{trial:04d}"
    out.mkdir(parents=True, exist_ok=True)
    model_path, state_path, onnx_path = out / "model.pt", out / "state.pt", out / "model.onnx"
    previous = next((r for r in _records(ctx.folder) if r.get("trial") == trial), None)
    if restart:
        for p in (model_path, state_path, onnx_path):
            p.unlink(missing_ok=True)
        previous = None
    if measure_only and (previous is None or not model_path.is_file() or not onnx_path.is_file()):
        raise VitsearchError(f"trial {trial} has no finalized model to measure in {out}: run finalize without "
                             "--measure-only first")

    model = fresh_model(ctx.base, config, settings.seed)
    if not model_path.is_file():
        steps = settings.steps if settings.epochs is None else max(1, math.ceil(
            settings.epochs * len(ctx.splits.train) / settings.batch_size))
        phases = plan(config, settings, steps)
        outcome = train_schedule(model, ctx.base, ctx.splits, config, phases, settings, latency=ctx.latency,
                                 state_path=state_path, on_step=on_step, progress=progress)
        _save_checkpoint(model, config, model_path, extra={
            "steps": steps, "seconds": outcome.seconds, "phases": describe(phases),
            "settings": json.loads(json.dumps(settings.to_dict()))})
        state_path.unlink(missing_ok=True)  # the finished model replaces the resumable state
        previous = None  # a new model: its record is rebuilt below
    else:
        logger.info("trial %d is already trained (%s): not training again (--restart trains it afresh)",
                    trial, model_path)
    saved = torch.load(model_path, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    if previous is None or not onnx_path.is_file():
        free = fresh_model(ctx.base, config, settings.seed)  # SPViT's selectors untrained: as initialised
        export = export_model(model, onnx_path, batch=int(ctx.meta["batch"]),
                              metadata={"study": ctx.folder.name, "trial": trial, "base_sha256": ctx.meta["sha256"]})
        g = token_schedule(config, depth=len(ctx.base.blocks), num_patches=ctx.base.patch_embed.num_patches,
                           num_prefix=ctx.base.num_prefix_tokens)
        previous = {
            "trial": trial, "config": str(config), "method": config.method, "kind": "finalized", "feasible": True,
            "accuracy": accuracy(model, ctx.splits), "accuracy_brief": record.get("accuracy"),
            "accuracy_training_free": accuracy(free, ctx.splits),
            "predicted_ms": ctx.predictor.predict(config).total_ms, "measured_ms": None, "gmacs": _gmacs(model),
            "block_tokens": list(g.block_tokens), "schedule": saved["settings"]["schedule"],
            "phases": saved["phases"], "steps": saved["steps"], "seconds": round(saved["seconds"], 1),
            "onnx": str(onnx_path.relative_to(ctx.folder)), "onnx_max_diff": export.max_abs_diff,
            "checkpoint": str(model_path.relative_to(ctx.folder)),
            "settings": saved["settings"],  # the base's sha256 travels in the ONNX metadata and study.json
        }
        _store(ctx.folder, previous)  # the trained model is recorded before the device is touched
    row = dict(previous)
    if row.get("measured_ms") is not None and not measure_only:
        return Finalized(row, out)
    try:
        row.update(measure(onnx_path, model, ctx), measure_error=None)
        error = None
    except VitsearchError as e:
        error = (f"trial {trial} is trained and exported ({onnx_path}), but measuring it on {ctx.meta['device']} "
                 f"failed: {e}. Retry the measurement alone with: vitsearch finalize {ctx.folder} --trial {trial} "
                 "--measure-only")
        row.update(measured_ms=None, measure_error=str(e))
        logger.warning("%s", error)
    _store(ctx.folder, row)
    return Finalized(row, out, error)


def finalize(study: str | Path, trials: Sequence[int] | None = None, settings: FinalizeSettings = FinalizeSettings(),
             *, reports: str | Path = "reports", measure_only: bool = False, restart: bool = False,
             workers: int = 0, progress: bool = True) -> list[Finalized]:
    """Finalize ``trials`` of a study (None: every trial on its Pareto front); ``workers`` DataLoader processes
    load ImageFolder images (speed only: a resumed finalize may use another number)."""
    ctx = open_study(study, reports, workers=workers)
    if trials is None:
        trials = [int(t["trial"]) for t in ctx.front]
        if not trials:
            raise VitsearchError(f"study {ctx.folder.name} has an empty Pareto front: no trial met the budget")
    for t in trials:  # every bad trial number fails before hours of training on the good ones
        choose_trial(ctx, t)
    return [finalize_trial(ctx, t, settings, measure_only=measure_only, restart=restart, progress=progress)
            for t in trials]
