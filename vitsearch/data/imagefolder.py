"""ImageFolder trees (``ROOT/<class>/<image>``, or ``ROOT/train`` with ``ROOT/val`` and ``ROOT/test``): timm's
training transform for the train split, its eval transform for held-out data, each image's augmentation seeded by
its key."""
from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import VitsearchError


from .splits import HELD_OUT, DatasetSplits, SplitFractions, model_input, split_sha256, stratified_split


class ImageFiles(Dataset):
    """Image files and their class indices, decoded and transformed on access.

    ``dataset[(i, seed)]`` draws the transform's randomness (Python's, NumPy's and torch's global generators, which
    timm's and torchvision's transforms use) from ``seed`` alone and restores the generators afterwards, so an
    augmented image is a function of its key: not of the worker process that decodes it, nor of what ran before.
    ``dataset[i]`` is ``dataset[(i, i)]``. The eval transform has no randomness (``augmented=False``) and is not seeded.
    """

    def __init__(self, root: Path, samples: Sequence[tuple[str, int]], transform: Callable[[Any], torch.Tensor],
                 mode: str, *, augmented: bool) -> None:
        self.root = root  # the data set folder, for messages
        self.samples = list(samples)  # (path, class index)
        self.transform = transform
        self.mode = mode  # PIL mode the model takes: "RGB", or "L" for a one-channel model
        self.augmented = augmented

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, seed = (key, key) if isinstance(key, int) else key
        path, label = self.samples[i]
        image = _open_image(path, self.mode)
        if not self.augmented:
            return self.transform(image), label
        with _seeded_generators(seed):
            return self.transform(image), label

    def select(self, indices: Sequence[int]) -> ImageFiles:
        return ImageFiles(self.root, [self.samples[i] for i in indices], self.transform, self.mode,
                          augmented=self.augmented)


# --- ImageFolder ------------------------------------------------------------------------------------------------

_LAYOUT = ("an ImageNet-style folder: ROOT/<class>/<image>.jpg, or ROOT/train/<class>/... with ROOT/val/<class>/... "
           "(and ROOT/test/<class>/...) beside it")


def _open_image(path: str, mode: str) -> Any:
    from PIL import Image

    with open(path, "rb") as f:
        return Image.open(f).convert(mode)


@contextlib.contextmanager
def _seeded_generators(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's global generators seeded from ``seed`` inside, restored after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def image_folder_splits(root: str | Path, model: torch.nn.Module, *, fractions: SplitFractions = SplitFractions(),
                        seed: int = 0) -> DatasetSplits:
    """An ImageFolder tree for ``model`` as train / val / test: timm's training transform on train, its eval
    transform on the held-out splits.

    Folders given are used as given: ``root/train`` with ``root/val`` and ``root/test``. A held-out folder that is
    missing is split off train (seeded by ``seed``, stratified by class, its share from ``fractions``): with
    ``val/`` alone beside ``train/``, test is ``fractions.test`` of train's images (and the reverse); ``root/train``
    alone, or a folder of class folders, is split three ways.
    """
    from timm.data import create_transform

    path = Path(root).expanduser()
    if not path.exists():
        raise VitsearchError(f"data set path {str(path)!r} does not exist: expected 'digits' or {_LAYOUT}")
    if not path.is_dir():
        raise VitsearchError(f"data set path {str(path)!r} is not a folder: expected 'digits' or {_LAYOUT}")
    path = path.resolve()
    cfg = model_input(model)
    mode = "L" if cfg["input_size"][0] == 1 else "RGB"

    def files(samples: Sequence[tuple[str, int]], training: bool) -> ImageFiles:
        return ImageFiles(path, samples, create_transform(**cfg, is_training=training), mode, augmented=training)

    train_dir = path / "train"
    given = {split: path / split for split in HELD_OUT if (path / split).is_dir()}
    if given and not train_dir.is_dir():
        raise VitsearchError(f"{str(path)!r} has {'/ and '.join(given)}/ but no train/: expected {_LAYOUT}")
    folder = train_dir if train_dir.is_dir() else path
    classes, samples = _scan(folder)
    held: dict[str, list[tuple[str, int]]] = {}
    for split, split_dir in given.items():
        split_classes, split_samples = _scan(split_dir)
        if split_classes != classes:
            only_train = sorted(set(classes) - set(split_classes))[:5]
            only_split = sorted(set(split_classes) - set(classes))[:5]
            raise VitsearchError(
                f"train/ and {split}/ in {str(path)!r} hold different classes (only in train: {only_train}, only "
                f"in {split}: {only_split}): both need the same class folders")
        held[split] = split_samples
    # What the folders do not give is split off train: only the missing splits get a share.
    missing = SplitFractions(0.0 if "val" in held else fractions.val, 0.0 if "test" in held else fractions.test)
    if missing.val or missing.test:
        try:
            train_idx, val_idx, test_idx = stratified_split([c for _, c in samples], missing, seed, classes=classes)
        except VitsearchError as e:
            raise VitsearchError(f"{str(folder)!r}: {e}") from e
        held.setdefault("val", [samples[i] for i in val_idx])
        held.setdefault("test", [samples[i] for i in test_idx])
        samples = [samples[i] for i in train_idx]
        shares = {k: v for k, v in (("val", missing.val), ("test", missing.test)) if v}
        how = (", ".join(f"{k}/ as given" for k in given) + "; " if given else "") + (
            f"{' and '.join(f'{k} {v:.0%}' for k, v in shares.items())} of "
            f"{'train/' if folder == train_dir else 'each class'} held out (stratified, seed {seed})")
    else:
        how = "train/, val/ and test/ as given"
    train, val, test = files(samples, True), files(held["val"], False), files(held["test"], False)
    digest = split_sha256({k: [os.path.relpath(p, path) for p, _ in held[k]] for k in HELD_OUT})
    description = (f"ImageFolder {str(path)!r}: {len(classes)} classes, {len(train)} train / {len(val)} val / "
                   f"{len(test)} test ({how}); timm train transform for train, eval transform for val and test, at "
                   f"{tuple(cfg['input_size'])}")
    provenance = {"name": path.name, "source": str(path), "layout": how, "num_classes": len(classes),
                  "split_seed": seed, "split_sha256": digest,
                  "train_size": len(train), "val_size": len(val), "test_size": len(test),
                  "input_size": list(cfg["input_size"]),
                  "mean": list(cfg["mean"]), "std": list(cfg["std"]), "transforms": "timm create_transform"}
    return DatasetSplits(path.name, train, val, test, len(classes), tuple(classes), description, provenance)


def _scan(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class folder names and (path, class index) of every image, as torchvision's ImageFolder finds them."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(str(folder))
        return classes, make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:  # torchvision's words for "no class folders" and "a class without images"
        raise VitsearchError(f"no images found in {str(folder)!r} ({e}): expected {_LAYOUT}") from e


def subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    n = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return dataset
    if limit < 1:
        raise VitsearchError(f"subset size {limit} must be at least 1")
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return dataset.select(idx.tolist())  # type: ignore[attr-defined]
