"""The splits a training loop reads: in-memory tensors or image files, batched without end for training and once
for held-out evaluation on val or test (``LoaderSettings``: DataLoader workers, pinned memory), and the one seeded,
stratified three-way split (:class:`SplitFractions`, :func:`stratified_split`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import VitsearchError



# A batch-level training augmentation: (images (B, C, H, W), generator) -> images of the same shape.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]



@dataclass(frozen=True)
class LoaderSettings:
    """How batches are made. Speed only: which images a step sees, and how they are augmented, never depend on it."""

    # DataLoader processes decoding and transforming ImageFolder images beside the training (0: in the training
    # process). In-memory data (digits) is sliced in the training process whatever this says: a worker would only
    # copy tensors that are already there.
    workers: int = 0
    pin_memory: bool = False  # page-locked batches, so copies to a CUDA device can overlap compute

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise VitsearchError(f"workers must be 0 (load in the training process) or more, got {self.workers}")


# A batch of images (B, C, H, W) float32, normalised, and their labels (B,) int64.
Batch = tuple[torch.Tensor, torch.Tensor]


class TensorImageDataset(Dataset):
    """Images and labels held in memory as tensors; ``dataset[i] -> (image (C, H, W), label)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images  # (N, C, H, W) float32, normalised
        self.labels = labels  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def select(self, indices: Sequence[int]) -> TensorImageDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorImageDataset(self.images[idx], self.labels[idx])



class _EpochKeys(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, augmentation seed)`` keys, endlessly: epoch ``e`` in the order seeded by ``seed + e``,
    its last batch smaller (every image once per epoch, as a shuffling DataLoader gives them). ``start`` skips that
    many batches without making them."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0) -> None:
        if n < 1 or batch_size < 1:
            raise VitsearchError(f"cannot make batches of {batch_size} from {n} training images")
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_epoch = math.ceil(self.n / self.batch_size)
        epoch, skip = divmod(self.start, per_epoch)
        while True:
            g = torch.Generator().manual_seed(self.seed + epoch)
            # The draw a seeded DataLoader makes before it shuffles: digits runs keep the batches of earlier
            # versions, whose results benchmarks/RESULTS.md records.
            torch.empty((), dtype=torch.int64).random_(generator=g)
            order = torch.randperm(self.n, generator=g).tolist()
            seeds = torch.randint(2**31 - 1, (self.n,), generator=g).tolist()
            for b in range(skip, per_epoch):
                lo, hi = b * self.batch_size, (b + 1) * self.batch_size
                yield list(zip(order[lo:hi], seeds[lo:hi]))
            epoch, skip = epoch + 1, 0


HELD_OUT = ("val", "test")  # the held-out splits: val is what a search selects on, test what results state


@dataclass(frozen=True)
class DatasetSplits:
    """Train, val and test splits of one data set, ready for one model's input.

    Three splits, each with one job: candidates learn from ``train``; a search ranks and selects on ``val``; the
    accuracy a result states (reports, the front's accuracy column, ``finalize``) is measured on ``test``, which no
    decision of the search reads. No image is in two of them.
    """

    name: str  # "digits" or the folder's name
    train: Dataset
    val: Dataset  # held out: what a search ranks candidates by and selects on
    test: Dataset  # held out: the accuracy results state; never read by the search's decisions
    num_classes: int
    classes: tuple[str, ...]
    description: str  # one line of provenance for logs and reports
    provenance: Mapping[str, Any] = field(default_factory=dict)  # source, settings and sizes, JSON-ready
    augment: Augment | None = None  # training-time batch augmentation suited to this data, if any
    loading: LoaderSettings = LoaderSettings()

    def train_batches(self, batch_size: int, seed: int, *, start: int = 0) -> Iterator[Batch]:
        """Training batches without end: epoch ``e`` shuffled by ``seed + e``, ImageFolder images through timm's
        training transform (each seeded by its key). ``start`` resumes at that batch of the same sequence without
        decoding the ones before. Batch-level ``augment`` (digits) is the caller's to apply."""
        keys = _EpochKeys(len(self.train), batch_size, seed, start)  # type: ignore[arg-type]
        if isinstance(self.train, TensorImageDataset):
            return self._sliced(self.train, ([i for i, _ in batch] for batch in keys))
        # A generator of its own: without one, a DataLoader draws its workers' base seed from torch's global
        # generator, which would move the training's random stream (dropout, Gumbel noise) with every loader.
        return iter(DataLoader(self.train, batch_sampler=keys, num_workers=self.loading.workers,
                               pin_memory=self.loading.pin_memory, generator=torch.Generator().manual_seed(seed)))

    def held_out(self, split: str) -> Dataset:
        """The held-out split named ``split``: ``"val"`` or ``"test"``."""
        if split not in HELD_OUT:
            raise ValueError(f"held-out split must be one of {HELD_OUT}, got {split!r}")
        return self.val if split == "val" else self.test

    def held_out_batches(self, batch_size: int, split: str = "val") -> Iterator[Batch]:
        """The held-out ``split`` (``"val"`` or ``"test"``) once, in order, through the eval transform."""
        data = self.held_out(split)
        if isinstance(data, TensorImageDataset):
            n = len(data)
            return self._sliced(data, (range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)))
        return iter(DataLoader(data, batch_size=batch_size, num_workers=self.loading.workers,
                               pin_memory=self.loading.pin_memory, generator=torch.Generator().manual_seed(0)))

    def _sliced(self, data: TensorImageDataset, batches: Iterator[Sequence[int]]) -> Iterator[Batch]:
        pin = self.loading.pin_memory and torch.cuda.is_available()  # as a DataLoader does: no GPU, no pinning
        for idx in batches:
            i = torch.as_tensor(idx, dtype=torch.long)
            x, y = data.images[i], data.labels[i]
            yield (x.pin_memory(), y.pin_memory()) if pin else (x, y)



# --- input contract of the model --------------------------------------------------------------------------------

def model_input(model: torch.nn.Module) -> dict[str, Any]:
    """timm's data config for ``model``, with the size the model was actually built for.

    ``resolve_data_config`` reads the pretrained cfg, which keeps 224 when a model is built with ``img_size=32``.
    """
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    pe = model.patch_embed  # type: ignore[union-attr]
    h, w = (pe.img_size, pe.img_size) if isinstance(pe.img_size, int) else pe.img_size
    in_chans = int(pe.proj.in_channels)
    cfg["input_size"] = (in_chans, int(h), int(w))
    for key in ("mean", "std"):  # a 3-channel cfg on a 1-channel model (or the reverse) is broadcast/averaged
        values = tuple(cfg[key])
        if len(values) != in_chans:
            cfg[key] = (float(np.mean(values)),) * in_chans
    return cfg


def inference_inputs(model: torch.nn.Module, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """What running the model on an image needs, JSON-ready, recorded with the base, the study, finalized models and
    every ONNX file: ``preprocessing`` (timm's eval transform for :func:`model_input`: resize the shorter side to
    ``size / crop_pct`` with ``interpolation``, centre-crop to ``input_size`` (C, H, W), scale to [0, 1], subtract
    ``mean``, divide by ``std``; an input of 1 channel is grey) and, where known, the ``classes`` in output order."""
    cfg = model_input(model)
    pre = {"input_size": [int(v) for v in cfg["input_size"]], "mean": [float(v) for v in cfg["mean"]],
           "std": [float(v) for v in cfg["std"]], "interpolation": str(cfg.get("interpolation", "bicubic")),
           "crop_pct": float(cfg.get("crop_pct", 1.0)), "crop_mode": str(cfg.get("crop_mode", "center"))}
    return {"preprocessing": pre, **({"classes": [str(c) for c in classes]} if classes is not None else {})}


@dataclass(frozen=True)
class SplitFractions:
    """The shares of each class (of its source images) held out as val and as test; train keeps the rest.

    The one normaliser of split fractions: each in [0, 1), together under 1. A share of 0 holds nothing out for that
    split (an ImageFolder whose val/ folder is given splits only test off train). Every class needs at least one
    image in train and in each split with a share above 0 (:meth:`images_needed`)."""

    val: float = 0.2
    test: float = 0.2

    def __post_init__(self) -> None:
        for name, value in (("val", self.val), ("test", self.test)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value < 1.0):
                raise VitsearchError(f"{name} fraction {value!r} is outside [0, 1): give a share such as 0.2")
        if self.val + self.test >= 1.0:
            raise VitsearchError(
                f"val fraction {self.val:g} and test fraction {self.test:g} sum to {self.val + self.test:g}, leaving "
                "nothing to train on: give fractions that sum to less than 1 (e.g. 0.2 and 0.2)")

    @property
    def images_needed(self) -> int:
        """Fewest images (source images) a class needs: one for train and one for each split with a share."""
        return 1 + (self.val > 0) + (self.test > 0)

    def describe(self) -> str:
        return f"{1 - self.val - self.test:.0%}/{self.val:.0%}/{self.test:.0%} train/val/test"


def stratified_split(labels: Sequence[int] | np.ndarray, fractions: SplitFractions, seed: int, *,
                     groups: Sequence[int] | np.ndarray | None = None,
                     classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, test), sorted and disjoint, with each class's share of ``fractions`` in val and test.

    ``groups`` (one id per item, default: each item its own) keeps every item of one source (one image rendered
    several ways) in the same split; each group belongs to one class. A split with a share above 0 gets at least
    one group of every class, train keeps at least one, so a class needs ``fractions.images_needed`` groups; fewer
    is refused, naming the class (``classes[label]`` where given).
    """
    labels = np.asarray(labels)
    group_ids = np.arange(len(labels)) if groups is None else np.asarray(groups)
    if len(group_ids) != len(labels):
        raise ValueError(f"{len(group_ids)} group ids for {len(labels)} labels")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        sources = rng.permutation(np.unique(group_ids[members]))
        n = len(sources)
        if n < fractions.images_needed:
            name = classes[int(c)] if classes is not None else str(int(c))
            raise VitsearchError(
                f"class {name!r} has {n} image{'s' if n != 1 else ''}, too few to split: a {fractions.describe()} "
                f"split needs at least {fractions.images_needed} per class (one for each split); add images to it")
        counts = [max(1, round(n * f)) if f > 0 else 0 for f in (fractions.val, fractions.test)]
        while n - sum(counts) < 1:  # rounding up small classes: shrink the larger held-out share, keeping one each
            counts[int(np.argmax(counts))] -= 1
        n_val, n_test = counts
        chosen = {"val": sources[:n_val], "test": sources[n_val:n_val + n_test], "train": sources[n_val + n_test:]}
        for split, ids in chosen.items():
            parts[split].append(members[np.isin(group_ids[members], ids)])
    train, val, test = (np.sort(np.concatenate(parts[k])) for k in ("train", "val", "test"))
    return train, val, test


def split_sha256(held_out: Mapping[str, Sequence[Any] | np.ndarray]) -> str:
    """A fingerprint of the held-out splits (``{"val": ..., "test": ...}``: sorted indices, or the files'
    relative paths), recorded with the base model and the study, so a later run can check it holds out the same."""
    import hashlib
    import json

    blob = {k: np.asarray(held_out[k]).tolist() for k in sorted(held_out)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()
