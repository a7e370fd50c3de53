"""The embedded base models (digits, clutter): trained once on their built-in data, cached by their settings,
loaded from then on. :func:`recipe` gives each embedded task's settings.

The cache lives in ``$VITSEARCH_CACHE`` (default ``~/.cache/vitsearch``) under
``base_models/<task>-<hash of the settings>/``: ``model.pt`` (a plain state_dict, loadable with
``weights_only=True``) and ``meta.json`` (settings, val and test accuracy, package versions, date). The settings
include the data's train/val/test split (``DigitsSpec``, ``ClutterSpec``), so another split is another cache
entry. A run writes
into a temporary folder and renames it into place, so an interrupted training never leaves a broken entry, and a
file lock makes concurrent callers wait for one training instead of each running their own.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from filelock import FileLock
from timm.models.vision_transformer import VisionTransformer
from tqdm import tqdm

from . import versions
from .data import ClutterSpec, DigitsSpec, LoaderSettings, embedded_data_of, inference_inputs
from .errors import VitsearchError
from .files import CACHE_FIX, cache_dir, check_writable
from .models import CLUTTER, CLUTTER_MODEL_ARGS, DIGITS, DIGITS_MODEL_ARGS, create_model, load_state_dict
from .training.device import CPU, Precision
from .training.loop import accuracy, step_log, train_steps

logger = logging.getLogger(__name__)

# Bump when the training code changes in a way the settings below do not capture, so old caches are not reused.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class PretrainSettings:
    """Everything that determines the trained weights; its hash keys the cache. The defaults are the digits
    model's; :func:`recipe` gives every embedded task's. The data settings' type names the task."""

    model: dict[str, Any] = field(default_factory=lambda: dict(DIGITS_MODEL_ARGS))  # the task's architecture
    data: DigitsSpec | ClutterSpec = DigitsSpec()
    # Measured on the shared 2-core machine (seed 0, 1,438 train images before the test split): 15 epochs reached
    # 96.4% held out, 10 only 94.4%; 30 epochs in batches of 64 with weight decay 0.05 reached 95.3% in twice the
    # time. Small batches give a ViT the many updates it needs on ~1,000 images; strong weight decay keeps it from
    # memorising them.
    epochs: int = 15
    batch_size: int = 32
    lr: float = 2e-3  # AdamW peak, reached after the warm-up, then cosine decay to 0
    warmup_epochs: int = 1
    weight_decay: float = 0.3
    label_smoothing: float = 0.1
    # the data's training augmentation: digits re-placed on their canvas every epoch (data.translate_within_canvas);
    # clutter's training images are made by it (data.clutter.ClutterAugment), so it must stay on there
    augment: bool = True
    seed: int = 0
    threads: int = 1  # fixed so results repeat across machines; 1 because OpenMP threads on a busy CPU stall each other
    recipe: int = RECIPE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def task(self) -> str:
        """The embedded task (model and data set name) these settings train."""
        return embedded_data_of(self.data).name

    @property
    def key(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def recipe(task: str) -> PretrainSettings:
    """The pretraining settings of the embedded task ``task`` ("digits", "clutter")."""
    if task not in RECIPES:
        raise VitsearchError(f"no built-in model {task!r} to pretrain: the embedded ones are {', '.join(RECIPES)}")
    return RECIPES[task]


def base_model_dir(settings: PretrainSettings | None = None, root: str | Path | None = None) -> Path:
    """Where the model trained with ``settings`` is cached under ``root`` (default :func:`cache_dir`)."""
    settings = settings or PretrainSettings()
    return Path(root or cache_dir()).expanduser() / "base_models" / f"{settings.task}-{settings.key}"


def base_model(
    settings: PretrainSettings | None = None, *, root: str | Path | None = None, retrain: bool = False,
    loading: LoaderSettings = LoaderSettings(), precision: Precision = CPU,
) -> tuple[VisionTransformer, dict[str, Any]]:
    """The trained embedded model ``settings`` describe (default: digits; see :func:`recipe`), in eval mode on the
    CPU, and its metadata, trained (on ``precision``'s device) and
    cached on first use; ``loading`` says how batches are made (speed only, not part of the cache key)."""
    settings = settings or PretrainSettings()
    target = base_model_dir(settings, root)
    if not retrain and (target / "meta.json").is_file() and not os.access(target.parent, os.W_OK):
        # A read-only cache (shared, or on a read-only mount) holding the model: an entry is whole once its
        # meta.json is there (written by one rename), and nobody can write beside it, so no lock is needed.
        model, meta = _cached(target, settings)
    else:
        check_writable(target.parent, "cache folder", CACHE_FIX)  # the lock file goes there, trained or not
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if retrain and target.exists():
                shutil.rmtree(target)
            if not (target / "meta.json").is_file():
                logger.info("training the %s base model (settings %s) into %s", settings.task, settings.key, target)
                model, meta = train_base_model(settings, loading=loading, precision=precision)
                write_cache_entry(target, model, meta)
                meta["cached"] = False
            else:
                model, meta = _cached(target, settings)
    meta["path"] = str(target)
    model.eval()
    return model, meta


def _cached(target: Path, settings: PretrainSettings) -> tuple[VisionTransformer, dict[str, Any]]:
    """The model and metadata of a complete cache entry."""
    meta = json.loads((target / "meta.json").read_text())
    meta["cached"] = True
    model = create_model(settings.task, num_classes=settings.model["num_classes"], **_arch_kwargs(settings))
    state = torch.load(target / "model.pt", map_location="cpu", weights_only=True)
    load_state_dict(model, state, source=str(target / "model.pt"), name=settings.task)
    logger.info("%s base model from cache %s (test accuracy %.2f%%, val %.2f%%)", settings.task, target,
                100 * meta["test_accuracy"], 100 * meta["val_accuracy"])
    return model, meta


def _arch_kwargs(settings: PretrainSettings) -> dict[str, Any]:
    return {k: v for k, v in settings.model.items() if k != "num_classes"}


def write_cache_entry(target: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache entry is readable like any other cached file
        torch.save(model.state_dict(), tmp / "model.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n")
        os.replace(tmp, target)  # atomic on one file system; target does not exist (checked under the lock)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_base_model(settings: PretrainSettings | None = None, *, loading: LoaderSettings = LoaderSettings(),
                     precision: Precision = CPU) -> tuple[VisionTransformer, dict[str, Any]]:
    """Train the task's model (vit_digits, vit_clutter) from scratch on its train split alone (on
    ``precision``'s device); returns the model, on the CPU, and its metadata (accuracy on val and on test)."""
    settings = settings or PretrainSettings()
    if settings.epochs < 1:
        raise VitsearchError(f"epochs must be at least 1, got {settings.epochs}")
    torch.manual_seed(settings.seed)
    task = settings.task
    model = create_model(task, num_classes=settings.model["num_classes"], **_arch_kwargs(settings))
    splits = dataclasses.replace(embedded_data_of(settings.data).splits(model, settings.data), loading=loading)
    train_x, train_y = splits.train.images, splits.train.labels  # type: ignore[attr-defined]
    generator = torch.Generator().manual_seed(settings.seed)
    steps_per_epoch = math.ceil(len(train_y) / settings.batch_size)
    total, warmup = settings.epochs * steps_per_epoch, settings.warmup_epochs * steps_per_epoch
    model.to(precision.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scaler = precision.scaler()

    start = time.perf_counter()
    with _torch_threads(settings.threads):
        bar = tqdm(range(settings.epochs), desc=f"pretrain {task}", unit="epoch", disable=None, leave=False)
        progress = step_log(f"pretrain {task}", total, logger)  # within an epoch too: a loaded machine is slow
        for epoch in bar:
            model.train()
            order = torch.randperm(len(train_y), generator=generator)
            first = epoch * steps_per_epoch
            losses: list[float] = []  # per-sample sums, for the epoch's mean

            def step(i: int) -> dict[str, float]:
                idx = order[(i - first) * settings.batch_size:(i - first + 1) * settings.batch_size]
                x, y = train_x[idx], train_y[idx]
                if settings.augment and splits.augment is not None:
                    x = splits.augment(x, generator)
                x, y = precision.move(x), precision.move(y)
                with precision.autocast():
                    loss = F.cross_entropy(model(x), y, label_smoothing=settings.label_smoothing)
                scaler.backward(loss)
                losses.append(loss.item() * len(idx))
                return {"ce": losses[-1] / len(idx)}

            train_steps(optimizer, [settings.lr], range(first, first + steps_per_epoch), step, warmup=warmup,
                        total=total, scaler=scaler, after=progress)
            bar.set_postfix(loss=f"{sum(losses) / len(train_y):.3f}")
            logger.info("pretrain %s: epoch %d/%d, train loss %.4f, %.0f s so far", task, epoch + 1, settings.epochs,
                        sum(losses) / len(train_y), time.perf_counter() - start)  # one line per few seconds
            if logger.isEnabledFor(logging.DEBUG):  # a learning curve for whoever tunes the recipe; uses no RNG
                logger.debug("epoch %d/%d: train loss %.4f, val accuracy %.4f", epoch + 1, settings.epochs,
                             sum(losses) / len(train_y), accuracy(model, splits, precision=precision))
        seconds = time.perf_counter() - start
        val_accuracy = accuracy(model, splits, precision=precision)
        test_accuracy = accuracy(model, splits, precision=precision, split="test")
    logger.info("%s base model trained in %.1f s: test accuracy %.2f%% (val %.2f%%)", task, seconds,
                100 * test_accuracy, 100 * val_accuracy)
    meta = {
        "model": task,
        "settings": settings.to_dict(),
        "settings_key": settings.key,
        "val_accuracy": val_accuracy,
        "test_accuracy": test_accuracy,
        "train_seconds": round(seconds, 2),
        "training": precision.to_dict(),
        "dataset": splits.description,
        "dataset_provenance": dict(splits.provenance),
        **inference_inputs(model, splits.classes),  # preprocessing and class names, for whoever runs it
        "versions": versions(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    model.cpu().eval()
    return model, meta


RECIPES: dict[str, PretrainSettings] = {
    DIGITS: PretrainSettings(),
    # The digits recipe for 20 epochs (680 steps of 32: each training digit is drawn anew every epoch). Measured
    # on the shared 2-core machine: 14% held out after 136 steps, 61% after 272, still rising
    # (benchmarks/RESULTS.md#claim-clutter).
    CLUTTER: PretrainSettings(model=dict(CLUTTER_MODEL_ARGS), data=ClutterSpec(), epochs=20),
}
