"""ImageFolder trees (``ROOT/<class>/<image>``, or ``ROOT/train`` and ``ROOT/val``): timm's training transform for
the train split, its eval transform for held-out data, each image's augmentation seeded by its key."""
from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import VitsearchError


from .splits import DatasetSplits, model_input, split_sha256, stratified_split

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

_LAYOUT = ("an ImageNet-style folder: ROOT/<class>/<image>.jpg, or ROOT/train/<class>/... with "
           "ROOT/val/<class>/... beside it")


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


def image_folder_splits(root: str | Path, model: torch.nn.Module, *, val_fraction: float = 0.2,
                        seed: int = 0) -> DatasetSplits:
    """An ImageFolder tree for ``model``: timm's training transform on the train split, its eval transform on val.

    ``root/train`` and ``root/val`` are used as given; ``root/train`` alone, or a folder of class folders, is split
    with :func:`stratified_split`.
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

    train_dir, val_dir = path / "train", path / "val"
    if val_dir.is_dir() and not train_dir.is_dir():
        raise VitsearchError(f"{str(path)!r} has val/ but no train/: expected {_LAYOUT}")
    folder = train_dir if train_dir.is_dir() else path
    classes, samples = _scan(folder)
    if val_dir.is_dir():
        val_classes, val_samples = _scan(val_dir)
        if val_classes != classes:
            only_train = sorted(set(classes) - set(val_classes))[:5]
            only_val = sorted(set(val_classes) - set(classes))[:5]
            raise VitsearchError(
                f"train/ and val/ in {str(path)!r} hold different classes (only in train: {only_train}, only "
                f"in val: {only_val}): both need the same class folders")
        train, val, how = files(samples, True), files(val_samples, False), "train/ and val/ as given"
        digest = None  # val/ as given
    else:
        train_idx, val_idx = stratified_split([c for _, c in samples], val_fraction, seed)
        if len(val_idx) == 0:
            raise VitsearchError(f"{str(folder)!r} has too few images to hold some out: give each class at least two")
        train = files([samples[i] for i in train_idx], True)
        val = files([samples[i] for i in val_idx], False)
        how = f"stratified {1 - val_fraction:.0%}/{val_fraction:.0%} split, seed {seed}"
        digest = split_sha256(val_idx)
    description = (f"ImageFolder {str(path)!r}: {len(classes)} classes, {len(train)} train / {len(val)} val "
                   f"({how}); timm train transform for train, eval transform for val, at {tuple(cfg['input_size'])}")
    provenance = {"name": path.name, "source": str(path), "layout": how, "num_classes": len(classes),
                  "split_sha256": digest,
                  "train_size": len(train), "val_size": len(val), "input_size": list(cfg["input_size"]),
                  "mean": list(cfg["mean"]), "std": list(cfg["std"]), "transforms": "timm create_transform"}
    return DatasetSplits(path.name, train, val, len(classes), tuple(classes), description, provenance)


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
