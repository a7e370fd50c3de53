"""Finalize a chosen config of a study: its method's full training schedule, ONNX export, measured latency.

Brief training ranks candidates; the config a user ships gets the papers' recipe, from the *base* checkpoint
(:mod:`vitsearch.training.progressive`: SPViT's layer-to-phase, Evo-ViT's layer-to-stage schedule), with
resumable training state under ``reports/<study>/finalized/trial_N/``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch.nn as nn

from .data import inference_inputs
from .errors import Interrupted, RunFailure, VitsearchError
from .files import load_torch
from .flops import gmacs
from .models import load_state_dict
from .pruning import PruneConfig, token_schedule
from .search import SearchSettings, load_base, load_splits
from .studyfolder import StudyFolder
from .training import CPU, PiecewiseLinear, Precision, SoftLatency, accuracy, fresh_model
from .training.progressive import SCHEDULES, FinalizeSettings, StepHook, describe, plan, train_schedule

__all__ = ["SCHEDULES", "ExportOptions", "FinalizeSettings", "FinalizeContext", "Finalized", "choose_trial", "finalize",
           "finalize_trial", "load_context", "measure"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# The study: provenance checks, the chosen trial, measuring.

@dataclass
class FinalizeContext:
    """What finalizing needs from a study folder, loaded and checked once for all its trials."""

    folder: StudyFolder
    meta: dict[str, Any]
    trials: list[dict[str, Any]]
    front: list[dict[str, Any]]
    base: nn.Module
    splits: Any
    predictor: Any
    latency: SoftLatency
    precision: Precision = CPU  # training and held-out evaluation run on its device
    teacher: nn.Module | None = None  # the base on that device (``base`` stays on the CPU for export and measuring)


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


def load_context(study: str | Path, reports: str | Path = "reports", *, workers: int = 0,
                 precision: Precision = CPU) -> FinalizeContext:
    from .latency import table as table_mod
    from .latency.predict import Predictor
    from .latency.registry import resolve
    from .models import geometry

    folder = StudyFolder.find(study, reports)
    meta = folder.read_study()
    resolve(str(meta.get("device")), meta["settings"].get("tables", "latency_tables"))  # checked like --device is
    trials, front = folder.require_records("trials"), folder.require_records("front")
    check_base(meta)
    settings = SearchSettings.from_dict(meta["settings"])
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
    predictor = Predictor(table_mod.load(table_path, geometry=geometry(base), batch=int(meta["batch"]),
                                         precision=settings.precision))
    # workers change only the speed of loading, so finalize may use another number than the search did
    splits = load_splits(dataclasses.replace(settings, workers=workers), base, meta.get("split") or info["split"],
                         pin_memory=precision.device.type == "cuda")
    latency = SoftLatency(PiecewiseLinear(*predictor.block_curve()))
    teacher = base if precision.device.type == "cpu" else copy.deepcopy(base).to(precision.device)
    return FinalizeContext(folder, meta, trials, front, base, splits, predictor, latency, precision, teacher)


def choose_trial(ctx: FinalizeContext, trial: int) -> dict[str, Any]:
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


def measure(onnx_path: Path, model: nn.Module, ctx: FinalizeContext) -> dict[str, Any]:
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
            reference = ref.Reference.build(device, ctx.base, batch, ctx.predictor.table.precision)
        for event, ref_ms in ref.measure(device, [artefact], settings, reference):
            if event["event"] == "runtime":
                runtime = {k: v for k, v in event.items() if k != "event"}
            elif event["event"] == "error":
                raise RunFailure(f"measuring on {device.name} failed: {event['message']}")
            else:
                scale = ref.factor(ctx.predictor.reference_ms, ref_ms)
                return {"measured_ms": event["median_ms"], "measured_p90_ms": event.get("p90_ms"),
                        "measured_reference_ms": ref_ms,
                        "measured_at_table_speed_ms": None if scale is None else event["median_ms"] * scale,
                        "measured_runtime": runtime.get("runtime"), "measured_threads": runtime.get("threads")}
    except OSError as e:
        raise RunFailure(f"cannot reach device {device.name}: {e}") from e
    finally:
        if reference is not None:
            reference.close()
    raise VitsearchError(f"device {device.name} returned no measurement")


# ---------------------------------------------------------------------------------------------------------------
# Finalizing one trial.

@dataclass(frozen=True)
class ExportOptions:
    """How finalize exports: ``model.onnx`` is always at the study's batch (what is measured and compared with the
    prediction); a ``batch`` other than that adds ``model_bB.onnx``. ``opset`` None: vitsearch's default;
    ``dynamo``: the torch.export-based exporter."""

    batch: int | None = None
    opset: int | None = None
    dynamo: bool = False

    def describe(self) -> dict[str, Any]:
        """What a finalized row records of its export: another one means exporting (and measuring) again."""
        from .export import DEFAULT_OPSET

        return {"onnx_opset": DEFAULT_OPSET if self.opset is None else self.opset,
                "onnx_exporter": "dynamo" if self.dynamo else "torchscript"}


@dataclass
class Finalized:
    record: dict[str, Any]  # the finalized.json row
    folder: Path  # reports/<study>/finalized/trial_N
    measure_error: str | None = None


def finalize_trial(ctx: FinalizeContext, trial: int, settings: FinalizeSettings = FinalizeSettings(), *,
                   measure_only: bool = False, restart: bool = False, on_step: StepHook | None = None,
                   progress: bool = True, export: ExportOptions = ExportOptions(),
                   onnx_precision: str = "fp32") -> Finalized:
    """Train trial ``trial``'s config with its schedule, export it, measure it, and record it in finalized.json.

    A finished model (``model.pt``) is not trained again; with ``measure_only`` only the measurement is
    (re)done, from it. An export with other ``export`` options than the row records is redone (and measured
    again). A device error leaves the row with ``measured_ms`` None and ``measure_error`` set.
    ``onnx_precision`` "int8" also ships the model in int8 (:func:`_int8`), beside the fp32 one."""
    from .export import export_model

    record = choose_trial(ctx, trial)
    config = PruneConfig.parse(record["config"])
    out = ctx.folder.finalized_dir(trial)
    out.mkdir(parents=True, exist_ok=True)
    model_path, state_path, onnx_path = out / "model.pt", out / "state.pt", out / "model.onnx"
    int8_path = out / "model-int8.onnx"
    previous = next((r for r in ctx.folder.finalized() if r.get("trial") == trial), None)
    if restart:
        for p in (model_path, state_path, onnx_path, int8_path):
            p.unlink(missing_ok=True)
        previous = None
    if measure_only and (previous is None or not model_path.is_file() or not onnx_path.is_file()):
        raise VitsearchError(f"trial {trial} has no finalized model to measure in {out}: run finalize without "
                             "--measure-only first")

    inputs = inference_inputs(ctx.base, ctx.splits.classes)  # preprocessing and class names
    export_metadata = {"study": ctx.folder.name, "trial": trial, "base_sha256": ctx.meta["sha256"],
                       "model": ctx.meta["model"], **inputs}
    device, teacher = ctx.precision.device, ctx.teacher if ctx.teacher is not None else ctx.base
    model = fresh_model(ctx.base, config, settings.seed).to(device)
    if not model_path.is_file():
        steps = settings.steps if settings.epochs is None else max(1, math.ceil(
            settings.epochs * len(ctx.splits.train) / settings.batch_size))
        phases = plan(config, settings, steps)
        outcome = train_schedule(model, teacher, ctx.splits, config, phases, settings, latency=ctx.latency,
                                 state_path=state_path, on_step=on_step, progress=progress, precision=ctx.precision)
        ctx.folder.save_checkpoint(model, config, model_path, extra={
            "steps": steps, "seconds": outcome.seconds, "phases": describe(phases),
            "settings": json.loads(json.dumps(settings.to_dict())),
            # what rebuilds and exports it alone (vitsearch export --checkpoint model.pt)
            "model": ctx.meta["model"], "study": ctx.folder.name, "trial": trial, "base_sha256": ctx.meta["sha256"],
            **inputs})
        state_path.unlink(missing_ok=True)  # the finished model replaces the resumable state
        previous = None  # a new model: its record is rebuilt below
    else:
        logger.info("trial %d is already trained (%s): not training again (--restart trains it afresh)",
                    trial, model_path)
    retrain = "pass --restart to train this trial again"
    saved = load_torch(model_path, retrain)
    load_state_dict(model, saved["state_dict"], source=str(model_path), name=str(config),
                    fix=f"It was trained by another vitsearch version or for another model: {retrain}")
    model.eval()
    batch = int(ctx.meta["batch"])
    exported = export.describe()
    if previous is not None and any(previous.get(k, v) != v for k, v in exported.items()):
        logger.info("trial %d was exported with %s: exporting and measuring again with %s", trial,
                    {k: previous.get(k) for k in exported}, exported)
        previous = None
    if previous is None or not onnx_path.is_file():
        logger.info("trial %d: evaluating on val and test, then exporting to ONNX", trial)
        free = fresh_model(ctx.base, config, settings.seed).to(device)  # SPViT's selectors untrained: as initialised
        # accuracy: on test, the model's accuracy as stated; val (what the search chose by) beside it
        accuracies = {"accuracy": accuracy(model, ctx.splits, precision=ctx.precision, split="test"),
                      "val_accuracy": accuracy(model, ctx.splits, precision=ctx.precision),
                      "accuracy_brief": record.get("accuracy"), "val_accuracy_brief": record.get("val_accuracy"),
                      "accuracy_training_free": accuracy(free, ctx.splits, precision=ctx.precision, split="test")}
        model.cpu()  # exported and measured from the CPU, as the search's latency tables were made
        written = export_model(model, onnx_path, batch=batch, opset=export.opset, dynamo=export.dynamo,
                               metadata=export_metadata)
        g = token_schedule(config, depth=len(ctx.base.blocks), num_patches=ctx.base.patch_embed.num_patches,
                           num_prefix=ctx.base.num_prefix_tokens)
        previous = {
            "trial": trial, "config": str(config), "method": config.method, "kind": "finalized", "feasible": True,
            **accuracies, "training": ctx.precision.to_dict(),
            "predicted_ms": ctx.predictor.predict(config).total_ms, "measured_ms": None, "gmacs": gmacs(model),
            "block_tokens": list(g.block_tokens), "schedule": saved["settings"]["schedule"],
            "phases": saved["phases"], "steps": saved["steps"], "seconds": round(saved["seconds"], 1),
            "onnx": ctx.folder.relative(onnx_path), "onnx_max_diff": written.max_abs_diff, **exported,
            "checkpoint": ctx.folder.relative(model_path),
            "settings": saved["settings"],  # the base's sha256 travels in the ONNX metadata and study.json
        }
        ctx.folder.store_finalized(previous)  # the trained model is recorded before the device is touched
    model.cpu()
    row = dict(previous)
    if export.batch is not None and export.batch != batch:  # seconds: written again on every run that asks for it
        extra = export_model(model, out / f"model_b{export.batch}.onnx", batch=export.batch, opset=export.opset,
                             dynamo=export.dynamo, metadata=export_metadata)
        row["onnx_batches"] = {**row.get("onnx_batches", {}), str(export.batch): ctx.folder.relative(extra.path)}
    error = None
    if row.get("measured_ms") is None or measure_only:
        error = _measure_into(row, onnx_path, model, ctx, trial, "")
        if error is None:  # the budget's promise, as measured: at the table's speed where the drift reference gave it
            row["within_budget"] = within_budget(row, ctx)
    if onnx_precision == "int8":
        error = _int8(row, onnx_path, out / "model-int8.onnx", model, ctx, trial, measure_only) or error
    ctx.folder.store_finalized(row)
    return Finalized(row, out, error)


def within_budget(measured: dict[str, Any], ctx: FinalizeContext) -> bool:
    """Whether a measurement (at the table's speed where the drift reference gave it) keeps the study's budget."""
    return (measured["measured_at_table_speed_ms"] or measured["measured_ms"]) <= float(ctx.meta["budget_ms"])


def _measure_into(row: dict[str, Any], onnx_path: Path, model: nn.Module, ctx: FinalizeContext, trial: int,
                  flag: str) -> str | None:
    """Measure ``onnx_path`` into ``row`` (``measured_ms`` ...; ``measure_error`` where the device failed: the
    message is returned, the row kept)."""
    try:
        row.update(measure(onnx_path, model, ctx), measure_error=None)
        return None
    except VitsearchError as e:
        error = (f"trial {trial} is trained and exported ({onnx_path}), but measuring it on {ctx.meta['device']} "
                 f"failed: {e}. Retry the measurement alone with: vitsearch finalize {ctx.folder.path} --trial {trial} "
                 f"--measure-only{flag}")
        row.update(measured_ms=None, measure_error=str(e))
        logger.warning("%s", error)
        return error


def _int8(row: dict[str, Any], onnx_path: Path, int8_path: Path, model: nn.Module, ctx: FinalizeContext,
          trial: int, measure_only: bool) -> str | None:
    """The trial shipped in int8 (:mod:`vitsearch.quantized`): quantized from the exported fp32 graph, calibrated on
    training images, its test accuracy run by onnxruntime beside the fp32 graph's, and its latency measured on the
    study's device; recorded under ``row["int8"]``. Done once; ``measure_only`` measures again."""
    from .quantized import quantize_exported

    record = dict(row.get("int8") or {})
    if not record or not int8_path.is_file():
        if measure_only:
            raise VitsearchError(f"trial {trial} has no int8 model to measure in {int8_path.parent}: run finalize "
                                 "--precision int8 without --measure-only first")
        q = quantize_exported(onnx_path, int8_path, ctx.splits)
        record = {**q.to_dict(), "onnx": ctx.folder.relative(int8_path), "accuracy_fp32": row.get("accuracy"),
                  "predicted_ms": row["predicted_ms"] if ctx.predictor.table.precision == "int8" else None,
                  "measured_ms": None}
    error = None
    if record.get("measured_ms") is None or measure_only:
        measured: dict[str, Any] = {}
        error = _measure_into(measured, int8_path, model, ctx, trial, " --precision int8")
        if error is None and ctx.predictor.table.precision == "int8":  # an int8 study's budget is int8 latency
            measured["within_budget"] = within_budget(measured, ctx)
        record.update(measured)
    row["int8"] = record
    return error


def finalize(study: str | Path, trials: Sequence[int] | None = None, settings: FinalizeSettings = FinalizeSettings(),
             *, reports: str | Path = "reports", measure_only: bool = False, restart: bool = False,
             workers: int = 0, progress: bool = True, precision: Precision = CPU,
             export: ExportOptions = ExportOptions(), onnx_precision: str = "fp32") -> list[Finalized]:
    """Finalize ``trials`` of a study (None: every trial on its Pareto front); ``workers`` DataLoader processes
    load ImageFolder images (speed only: a resumed finalize may use another number). ``onnx_precision`` "int8"
    also ships each in int8 (calibrated, quantized, evaluated and measured; fp16 is not offered: no CPU kernels)."""
    from .latency.precision import check_runs, parse
    from .latency.registry import resolve
    from .quantized import check_calibration

    onnx_precision = parse(onnx_precision)
    if onnx_precision == "fp16":
        raise VitsearchError("finalize ships fp32 and int8 models: fp16 is not offered (onnxruntime's CPU provider "
                             "has no float16 kernels to measure it with); use --precision int8 or fp32")
    logger.info("finalize of %s: loading the base model, the data and the latency table", study)
    ctx = load_context(study, reports, workers=workers, precision=precision)
    if onnx_precision == "int8":  # before hours of training: the device must run it and the data calibrate it
        check_runs("int8", resolve(str(ctx.meta["device"]), (ctx.meta.get("settings") or {}).get("tables",
                                                                                            "latency_tables")))
        check_calibration(ctx.splits)
    if trials is None:
        trials = [int(t["trial"]) for t in ctx.front]
        if not trials:
            raise VitsearchError(f"study {ctx.folder.name} has an empty Pareto front: no trial met the budget")
    for t in trials:  # every bad trial number fails before hours of training on the good ones
        choose_trial(ctx, t)
    done = []
    for t in trials:
        try:
            done.append(finalize_trial(ctx, t, settings, measure_only=measure_only, restart=restart,
                                       progress=progress, export=export, onnx_precision=onnx_precision))
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (the CLI's handler)
            kept = f"; trials {', '.join(str(d.record['trial']) for d in done)} are finalized" if done else ""
            raise Interrupted(f"interrupted while finalizing trial {t}: its training state (saved every "
                              f"{settings.checkpoint_every} steps) is kept in {ctx.folder.finalized_dir(t)}{kept}; "
                              "run the same command to resume") from None
    return done
