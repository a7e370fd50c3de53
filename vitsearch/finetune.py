"""A base that fits the data: a timm model's checkpoint (an ImageNet one, say) fine-tuned on the train split with a
new head for an ImageFolder's classes (timm's ``reset_classifier``), cached like the digits model and keyed by the
model, the checkpoint's bytes, the data's content (every file's split, path, size and modification time: adding an
image is another key) and the settings, the split among them. ``search``/``finalize`` then take the cached file as
their ``--checkpoint`` (its head gives the number of classes) and read its split from the ``meta.json`` beside it,
so they hold out exactly the images it did not train on."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from filelock import FileLock

from . import versions
from .data import DIGITS, DigitsSpec, LoaderSettings, inference_inputs, load_dataset, scan_image_folder
from .errors import VitsearchError
from .files import CACHE_FIX, cache_dir, check_writable, write_bytes
from .models import create_model, file_sha256
from .pretrain import write_cache_entry
from .training.device import CPU, Precision
from .training.settings import FinetuneSettings
from .training.loop import accuracy, seeded, step_log, train_steps

logger = logging.getLogger(__name__)

FINETUNED = "finetuned"  # meta.json's kind: a base fitted to a data set, its split recorded beside its weights


def finetuned_base(model_name: str, checkpoint: str | Path, dataset: str | Path,
                   settings: FinetuneSettings = FinetuneSettings(), *, root: str | Path | None = None,
                   retrain: bool = False, loading: LoaderSettings = LoaderSettings(),
                   precision: Precision = CPU) -> dict[str, Any]:
    """The fine-tuned base's metadata (``path``: its folder, ``checkpoint``: the file to pass to ``--checkpoint``),
    trained on ``precision``'s device on first use and cached."""
    if settings.steps < 1:
        raise VitsearchError(f"--steps must be at least 1, got {settings.steps}")
    if not Path(checkpoint).is_file():
        raise VitsearchError(f"checkpoint {checkpoint} does not exist: pass the base weights to fine-tune")
    identity = {"model": model_name, "sha256": file_sha256(checkpoint), **data_identity(dataset, settings),
                "settings": settings.to_dict()}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    target = Path(root or cache_dir()).expanduser() / "base_models" / f"{model_name}-{key}"
    check_writable(target.parent, "cache folder", CACHE_FIX)  # before the fine-tuning, not after it
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if retrain and (target / "meta.json").is_file():
            shutil.rmtree(target)
        if (target / "meta.json").is_file():
            meta = json.loads((target / "meta.json").read_text()) | {"cached": True}
        else:
            model, meta = _finetune(model_name, checkpoint, dataset, settings, loading, precision)
            write_cache_entry(target, model, meta | identity)
            meta = meta | identity | {"cached": False}
    return meta | {"path": str(target), "checkpoint": str(target / "model.pt")}


def hub_weights(model_name: str, *, root: str | Path | None = None) -> Path:
    """timm's pretrained weights for ``model_name`` (the Hugging Face Hub, or its cache offline) as a local file,
    ``<cache>/hub_weights/<name>.pt``, so that a base fitted from them is keyed by their bytes like any checkpoint."""
    import io

    model = create_model(model_name, pretrained=True)
    path = Path(root or cache_dir()).expanduser() / "hub_weights" / f"{model_name.replace('/', '_')}.pt"
    check_writable(path.parent, "cache folder", CACHE_FIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    write_bytes(path, buffer.getvalue())
    logger.info("timm's pretrained %s (%s) saved to %s", model_name, model.pretrained_cfg.get("hf_hub_id"), path)
    return path


def data_identity(dataset: str | Path, settings: FinetuneSettings) -> dict[str, Any]:
    """What the fine-tuned base's cache key takes from the data: the folder, a fingerprint of its content, and the
    split (seed, fractions, and the held-out files' fingerprint the search checks)."""
    fractions = settings.fractions
    if str(dataset) == DIGITS:
        spec = DigitsSpec(val_fraction=fractions.val, test_fraction=fractions.test, seed=settings.split_seed)
        return {"dataset": DIGITS, "content_sha256": None,
                "split": {"seed": spec.seed, "val_fraction": fractions.val, "test_fraction": fractions.test,
                          "sha256": None, "digits": asdict(spec)}}
    layout = scan_image_folder(dataset, fractions=fractions, seed=settings.split_seed)
    return {"dataset": str(layout.root), "content_sha256": layout.content_sha256(),
            "split": {"seed": settings.split_seed, "val_fraction": fractions.val, "test_fraction": fractions.test,
                      "sha256": layout.split_sha256()}}


def _finetune(model_name: str, checkpoint: str | Path, dataset: str | Path, settings: FinetuneSettings,
              loading: LoaderSettings, precision: Precision) -> tuple[torch.nn.Module, dict[str, Any]]:
    model = create_model(model_name, checkpoint=checkpoint)
    splits = load_dataset(dataset, model, fractions=settings.fractions, seed=settings.seed,
                          split_seed=settings.split_seed, max_train=settings.max_train, max_val=settings.max_val,
                          loading=loading)
    before = int(model.num_classes)
    with seeded(settings.seed):
        model.reset_classifier(splits.num_classes)  # a new head, one output per class of the folder
    model.to(precision.device)
    head = {id(p) for p in model.get_classifier().parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in head], "lr": settings.lr},
              {"params": [p for p in model.parameters() if id(p) in head], "lr": settings.head_lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    scaler = precision.scaler()
    warmup = settings.warmup(settings.steps)
    logger.info("fine-tuning %s (head %d -> %d classes) on %s for %d steps (%d of warm-up) on %s (%s)", model_name,
                before, splits.num_classes, splits.description, settings.steps, warmup, precision.device,
                precision.name)
    start = time.perf_counter()
    with seeded(settings.seed):
        data = splits.train_batches(settings.batch_size, settings.seed)

        def step(i: int) -> dict[str, float]:
            x, y = next(data)
            model.train()
            with precision.autocast():
                loss = F.cross_entropy(model(precision.move(x)), precision.move(y))
            scaler.backward(loss)
            return {"ce": float(loss.detach())}

        train_steps(optimizer, [g["lr"] for g in groups], range(settings.steps), step, warmup=warmup,
                    total=settings.steps, scaler=scaler, after=step_log(f"fine-tuning {model_name}", settings.steps,
                                                                        logger))
    val_accuracy = accuracy(model, splits, precision=precision)
    test_accuracy = accuracy(model, splits, precision=precision, split="test")
    seconds = time.perf_counter() - start
    logger.info("fine-tuned in %.0f s: test accuracy %.2f%% (val %.2f%%)", seconds, 100 * test_accuracy,
                100 * val_accuracy)
    meta = {"kind": FINETUNED, "num_classes": splits.num_classes, "classes_before": before, "val_accuracy": val_accuracy,
            "test_accuracy": test_accuracy,
            "train_seconds": round(seconds, 2), "dataset_description": splits.description,
            "sizes": {k: len(getattr(splits, k)) for k in ("train", "val", "test")},
            "training": precision.to_dict(), "versions": versions(),
            **inference_inputs(model, splits.classes),  # preprocessing and class names, for whoever runs it
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    return model.cpu().eval(), meta
