"""The pieces a search needs, each resolved once: base model, data, latency predictor, space and budget."""
from __future__ import annotations

import itertools
import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from .. import versions
from ..data import SplitFractions, inference_inputs
from ..errors import VitsearchError
from ..files import check_writable
from ..latency.validate import Headroom, measured_headroom
from ..pruning import PruneConfig
from ..studyfolder import StudyFolder
from ..training import Precision
from .budget import Budget, parse_budget
from .settings import SAMPLERS, STRATEGIES, SearchSettings
from .space import SearchSpace, default_space_file, load_space
from .storage_url import redact

logger = logging.getLogger(__name__)

# Pruned models a search measures whole against a table it profiled itself, for its headroom: two of the
# validation's chunks, 20 s on the digits model at load 5 (benchmarks/validity.py's smoke run, 2026-12-07).
AUTO_VALIDATE = 12


@dataclass
class Setup:
    base: nn.Module
    base_info: dict[str, Any]
    splits: Any
    predictor: Any
    space: SearchSpace
    budget: Budget
    budget_ms: float  # the user's budget
    unpruned_ms: float
    fastest: tuple[PruneConfig, float]
    folder: StudyFolder
    precision: Precision  # the training device (the base model lives there) and its autocast dtype
    headroom: Headroom  # what the search leaves under the budget for the table's error
    limit_ms: float  # the predicted latency a config may have: the budget less the headroom


def pretrain_command(settings: SearchSettings, *, checkpoint: str | None = None) -> str:
    """The ``vitsearch pretrain`` command that fits ``settings.checkpoint`` (or ``checkpoint``) to the search's data
    set, with the user's own values."""
    weights = checkpoint or shlex.quote(str(settings.checkpoint or "PATH"))
    return (f"vitsearch pretrain --model {shlex.quote(settings.model)} --checkpoint {weights} "
            f"--dataset {shlex.quote(str(settings.dataset))}")


def load_base(settings: SearchSettings) -> tuple[nn.Module, dict[str, Any]]:
    """The base model and where its weights came from (path and hash, checked again on resume)."""
    from ..models import EMBEDDED, create_model, embedded_task, file_sha256

    task = embedded_task(settings.model)
    if task is not None and settings.checkpoint is None:
        from ..pretrain import base_model, recipe

        model, meta = base_model(recipe(task.name))
        weights = Path(meta["path"]) / "model.pt"
        data = meta.get("dataset_provenance", {})
        # The held-out digits are those the base model was not trained on: its own split, whatever the search's seed.
        spec = meta["settings"]["data"]
        split = {"seed": spec["seed"], "val_fraction": spec["val_fraction"], "test_fraction": spec["test_fraction"],
                 "sha256": data.get("split_sha256")}
        return model, {"model": task.name, "checkpoint": str(weights), "sha256": file_sha256(weights),
                       "base_accuracy_at_pretrain": meta.get("test_accuracy"), "split": split}
    if settings.checkpoint is None:
        raise VitsearchError(
            f"model {settings.model!r} needs trained weights to search: pass --checkpoint PATH (a timm/PyTorch "
            f"state_dict or .safetensors), or use an embedded model: --model {' or '.join(EMBEDDED)}")
    model = create_model(settings.model, checkpoint=settings.checkpoint)
    return model, {"model": settings.model, "checkpoint": str(Path(settings.checkpoint).resolve()),
                   "sha256": file_sha256(settings.checkpoint), "split": checkpoint_split(Path(settings.checkpoint))}


def checkpoint_split(checkpoint: Path) -> dict[str, Any]:
    """The split a checkpoint's base was trained with: a base `vitsearch pretrain --dataset` fitted records it in
    the meta.json beside its weights (with the held-out files' sha256, so data changed since is refused); any
    other checkpoint carries none, and what a folder does not give is split with seed 0 and the default fractions,
    never the search's seed."""
    from ..finetune import FINETUNED

    meta_file = checkpoint.with_name("meta.json")
    if checkpoint.name == "model.pt" and meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError) as e:
            raise VitsearchError(f"{meta_file} beside the checkpoint cannot be read ({e}): it records the split the "
                                 "base was fitted with; fit it again with: vitsearch pretrain --model NAME "
                                 "--checkpoint PATH --dataset DIR --retrain") from e
        if isinstance(meta, dict) and meta.get("kind") == FINETUNED and isinstance(meta.get("split"), dict):
            return {k: meta["split"].get(k) for k in ("seed", "val_fraction", "test_fraction", "sha256")}
    fractions = SplitFractions()
    return {"seed": 0, "val_fraction": fractions.val, "test_fraction": fractions.test, "sha256": None}


def load_splits(settings: SearchSettings, base: nn.Module, split: dict[str, Any], *, pin_memory: bool = False) -> Any:
    """The data with the base model's held-out splits (``split``: seed, fractions and the sha256 of the val and
    test members, as the base model or ``study.json`` records them); a different split is refused."""
    from ..data import LoaderSettings, load_dataset

    default = SplitFractions()
    fractions = SplitFractions(split.get("val_fraction", default.val), split.get("test_fraction", default.test))
    splits = load_dataset(settings.dataset, base, fractions=fractions, seed=settings.seed, split_seed=split["seed"],
                          max_train=settings.max_train, max_val=settings.max_val,
                          max_test=settings.max_test,
                          loading=LoaderSettings(settings.workers, pin_memory=pin_memory))
    digest = splits.provenance.get("split_sha256")
    if split.get("sha256") and digest != split["sha256"]:
        raise VitsearchError(
            f"the held-out splits of {settings.dataset!r} drawn now (sha256 {str(digest)[:16]}...) are not the base "
            f"model's (sha256 {split['sha256'][:16]}...): val and test would hold images the model was trained on. "
            "Use the data set and base model the study was made with; for a folder whose images changed, fit the "
            f"base to it again ({pretrain_command(settings, checkpoint='PATH')} --retrain, PATH the checkpoint "
            "it was fitted from) and run a new search")
    return splits


def load_predictor(settings: SearchSettings, base: nn.Module, *, progress: bool = True) -> Any:
    """The device's latency table for this model's geometry; on the local CPU a missing table is profiled."""
    from ..latency import table as table_mod
    from ..latency.registry import resolve
    from ..latency.predict import Predictor
    from ..models import geometry

    spec = resolve(settings.device, settings.tables)
    g = geometry(base)
    path = table_mod.table_path(settings.tables, settings.device, g, settings.batch, settings.precision)
    meta = json.loads(table_mod.meta_path(path).read_text()) if path.exists() and table_mod.meta_path(path).exists() else {}
    complete = meta.get("complete", False)
    if complete and settings.threads is not None and meta.get("threads") != settings.threads:
        raise VitsearchError(
            f"the latency table {path} was profiled with {meta.get('threads')} threads, not the {settings.threads} "
            f"asked for: drop --threads to use it, or profile again with: vitsearch profile --device "
            f"{settings.device} --model {settings.model} --batch {settings.batch} --threads {settings.threads} --restart")
    # A table profiled before a method's kinds existed lacks their rows: only those are measured (profile resumes).
    missing = table_mod.load(path).missing_kinds if complete else ()
    if not complete or missing:
        command = (f"vitsearch profile --device {settings.device} --model {settings.model} --batch {settings.batch} "
                   f"--precision {settings.precision}")
        if spec.transport != "local" and missing:
            raise VitsearchError(
                f"the latency table {path} has no rows of {', '.join(missing)} (profiled before the methods that "
                f"run them existed): measure just those with: {command} (the rows it has are kept)")
        if spec.transport != "local":
            raise VitsearchError(
                f"no latency table for {g.key} at batch {settings.batch} in {settings.precision} on device "
                f"{settings.device!r} ({path}): profile it first with: {command}")
        from ..latency.profile import profile

        if missing:
            logger.info("the latency table %s has no rows of %s: measuring those first", path, ", ".join(missing))
        else:
            logger.info("no complete latency table at %s: profiling %s on %s first", path, g.key, settings.device)
        table = profile(settings.device, model=settings.model, batch=settings.batch, tables=settings.tables,
                        threads=settings.threads or 0, progress=progress, model_kwargs={"num_classes": g.num_classes},
                        precision=settings.precision)
        if settings.headroom is None and not missing:  # a completed table keeps its validation
            from ..latency.validate import validate

            logger.info("measuring %d pruned models whole against the new table, for the headroom the search leaves "
                        "under its budget", AUTO_VALIDATE)
            validate(table, AUTO_VALIDATE, tables=settings.tables, progress=progress,
                     model_kwargs={"num_classes": g.num_classes})
    return Predictor(table_mod.load(path, geometry=g, batch=settings.batch, precision=settings.precision))


def resolve_headroom(settings: SearchSettings, table_path: Path, folder: StudyFolder) -> Headroom:
    """``--headroom`` as given; else the study's own (a resumed study keeps the limit its trials were judged by);
    else the table's validation; else none, with a line saying how to measure it."""
    if settings.headroom is not None:
        return Headroom(settings.headroom, "--headroom")
    if folder.study_file.exists():
        recorded = folder.read_study().get("headroom")
        if recorded:
            return Headroom(float(recorded["fraction"]), recorded["source"])
    measured = measured_headroom(table_path)
    if measured is not None:
        return measured
    logger.warning("the latency table %s has no validation: the search takes its predictions as exact. Measure its "
                   "error with: vitsearch profile --device %s --model %s --batch %d --validate 30 (the search then "
                   "leaves that headroom under the budget)", table_path, settings.device, settings.model, settings.batch)
    return Headroom(0.0, "none: the table has no validation")


def fastest_config(space: SearchSpace, predictor: Any) -> tuple[PruneConfig, float]:
    """The fastest config the space allows: every placement of up to max_selectors selectors at keep_min (or at
    the largest token count, for a method whose setting is one), and the largest count for every block."""
    best: tuple[PruneConfig, float] | None = None
    for method, n in space.strata():
        extreme = max(space.choices(method)) if space.counts(method) else space.keep_min
        configs = ([PruneConfig(method, every=max(space.every_choices))] if n == 0 else
                   [PruneConfig(method, {b: extreme for b in blocks}) for blocks in itertools.combinations(space.blocks, n)])
        for config in configs:
            ms = predictor.predict(config).total_ms
            if best is None or ms < best[1]:
                best = (config, ms)
    assert best is not None
    return best


def prepare(settings: SearchSettings, *, progress: bool = True) -> Setup:
    from ..data import check_num_classes
    from ..models import geometry

    if settings.strategy not in STRATEGIES:
        raise VitsearchError(f"unknown strategy {settings.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if settings.sampler not in SAMPLERS:
        raise VitsearchError(f"unknown sampler {settings.sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if settings.trials < 1:
        raise VitsearchError(f"--trials must be at least 1, got {settings.trials}")
    settings.name()  # a bad --study is refused before anything is loaded
    check_writable(settings.reports, "reports folder", "pass --reports DIR with a folder you can write")
    budget = parse_budget(settings.budget)
    precision = Precision.resolve(settings.train_device, amp=settings.amp)  # a missing GPU fails before any work
    base, base_info = load_base(settings)
    g = geometry(base)
    space = load_space(settings.space or default_space_file(settings.model), depth=g.depth)
    splits = load_splits(settings, base, base_info["split"], pin_memory=precision.device.type == "cuda")
    base_info["split"] = {**base_info["split"], "sha256": splits.provenance.get("split_sha256")}
    check_num_classes(splits, base, pretrain_command(settings))
    predictor = load_predictor(settings, base, progress=progress)
    unpruned_ms = predictor.predict(PruneConfig()).total_ms
    budget_ms = budget.resolve(unpruned_ms)
    fastest = fastest_config(space, predictor)
    if budget_ms < fastest[1]:
        raise VitsearchError(
            f"budget {budget} ({budget_ms:.3f} ms) is below the fastest config this search space allows on "
            f"{settings.device}: {fastest[0]} at {fastest[1]:.3f} ms (unpruned: {unpruned_ms:.3f} ms). Give a budget "
            f"of at least {fastest[1]:.3f} ms ({100 * fastest[1] / unpruned_ms:.0f}%), or a space with lower keep ratios")
    folder = StudyFolder(Path(settings.reports) / settings.name())
    headroom = resolve_headroom(settings, predictor.table.path, folder)
    limit_ms = headroom.limit_ms(budget_ms)
    if headroom.fraction > 0:
        logger.info("searching under %.3f ms, %.1f%% below the budget of %.3f ms: the table under-predicts whole models "
                    "(%s), and this keeps the pick within the budget when measured (--headroom 0: search up to it)",
                    limit_ms, 100 * (1 - limit_ms / budget_ms), budget_ms, headroom.source)
    if limit_ms < fastest[1]:
        raise VitsearchError(
            f"with the headroom of {100 * headroom.fraction:.1f}% the table's error calls for ({headroom.source}), no "
            f"config of this space fits the budget {budget} ({budget_ms:.3f} ms): the fastest, {fastest[0]}, is "
            f"predicted at {fastest[1]:.3f} ms. Give a budget of at least {fastest[1] * (1 + headroom.fraction):.3f} ms, "
            "or --headroom 0 to search up to the budget itself")
    logger.info("training on %s (%s)", precision.device, precision.name)
    return Setup(base.to(precision.device), base_info, splits, predictor, space, budget, budget_ms, unpruned_ms,
                 fastest, folder, precision, headroom, limit_ms)


def write_provenance(setup: Setup, settings: SearchSettings) -> dict[str, Any]:
    """``study.json``: the resolved configuration. On resume it must describe the same search."""
    table = setup.predictor.table
    record = {
        "study": settings.name(), "settings": {**settings.to_dict(), "storage": settings.storage and redact(settings.storage)},
        "model": setup.base_info["model"], "checkpoint": setup.base_info["checkpoint"],
        "sha256": setup.base_info["sha256"], "dataset": settings.dataset, "split": setup.base_info["split"],
        "dataset_description": setup.splits.description, "device": settings.device, "batch": settings.batch,
        "latency_table": str(table.path), "latency_table_meta": table.meta,
        "budget": str(setup.budget), "budget_ms": round(setup.budget_ms, 6), "unpruned_ms": setup.unpruned_ms,
        "headroom": setup.headroom.to_dict(), "limit_ms": round(setup.limit_ms, 6),
        "fastest": {"config": str(setup.fastest[0]), "ms": setup.fastest[1]},
        **inference_inputs(setup.base, setup.splits.classes),  # what running the model on an image needs
        "space": setup.space.to_dict(), "strategy": settings.strategy, "training": setup.precision.to_dict(), "versions": versions(),
        "scoring": settings.scoring(),  # the accuracy is the float model's, whatever the latency's precision
        "objectives": ["val_accuracy (maximise)", "predicted latency ms (minimise)"], "metric": "top1",
        # The search decides on val; the accuracy it states is test's, which no decision reads.
        "splits": {"decides_by": "val", "states": "test", "split_sha256": setup.splits.provenance.get("split_sha256"),
                   **{f"{k}_size": len(getattr(setup.splits, k)) for k in ("train", "val", "test")}},
    }
    return setup.folder.write_study(record)
