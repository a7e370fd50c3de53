"""ImageFolder trees (``ROOT/<class>/<image>``, or ``ROOT/train`` with ``ROOT/val`` and ``ROOT/test``): timm's
training transform for the train split, its eval transform for held-out data, each image's augmentation seeded by
its key."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import VitsearchError


from .splits import HELD_OUT, DatasetSplits, SplitFractions, model_input, split_sha256, stratified_split

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class FolderLayout:
    """An ImageFolder's files as train / val / test, before any model: what is split, and how."""

    root: Path  # the data set folder, resolved
    classes: tuple[str, ...]
    splits: Mapping[str, list[tuple[str, int]]]  # "train", "val", "test" -> (path, class index), disjoint
    how: str  # which splits were given as folders and which were held out of train, for the description
    seed: int
    fractions: SplitFractions

    def split_sha256(self) -> str:
        """The held-out splits' fingerprint: their files' paths relative to the root."""
        return split_sha256({k: [os.path.relpath(p, self.root) for p, _ in self.splits[k]] for k in HELD_OUT})

    def content_sha256(self) -> str:
        """A fingerprint of what the splits hold: each file's split, relative path, size and modification time.
        Adding, removing, replacing or moving an image changes it (what a cache keyed by the data needs)."""
        h = hashlib.sha256()
        for split in ("train", *HELD_OUT):
            for p, label in self.splits[split]:
                st = os.stat(p)
                h.update(f"{split}\0{os.path.relpath(p, self.root)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n"
                         .encode())
        return h.hexdigest()


def scan_image_folder(root: str | Path, *, fractions: SplitFractions = SplitFractions(),
                      seed: int = 0) -> FolderLayout:
    """An ImageFolder tree's files as train / val / test (see :func:`image_folder_splits`); needs no model."""
    path = Path(root).expanduser()
    if not path.exists():
        raise VitsearchError(f"data set path {str(path)!r} does not exist: expected 'digits' or {_LAYOUT}")
    if not path.is_dir():
        raise VitsearchError(f"data set path {str(path)!r} is not a folder: expected 'digits' or {_LAYOUT}")
    path = path.resolve()
    train_dir = path / "train"
    given = {split: path / split for split in HELD_OUT if (path / split).is_dir()}
    if given and not train_dir.is_dir():
        raise VitsearchError(f"{str(path)!r} has {'/ and '.join(given)}/ but no train/: expected {_LAYOUT}")
    folder = train_dir if train_dir.is_dir() else path
    classes, samples, files = _scan(folder)
    owner = {key: ("train", p) for key, p in files.items()}  # file identity -> (split folder, path)
    held: dict[str, list[tuple[str, int]]] = {}
    for split, split_dir in given.items():
        split_classes, split_samples, split_files = _scan(split_dir)
        if split_classes != classes:
            only_train = sorted(set(classes) - set(split_classes))[:5]
            only_split = sorted(set(split_classes) - set(classes))[:5]
            raise VitsearchError(
                f"train/ and {split}/ in {str(path)!r} hold different classes (only in train: {only_train}, only "
                f"in {split}: {only_split}): {split}/ needs exactly the class folders of train/")
        twice = sorted((owner[k], p) for k, p in split_files.items() if k in owner)
        if twice:
            (other, first), second = twice[0]
            raise VitsearchError(
                f"{os.path.relpath(first, path)!r} and {os.path.relpath(second, path)!r} in {str(path)!r} are one "
                f"file (hard links; {len(twice)} such) in {other}/ and {split}/: an image in two splits is scored on "
                "what the model trained on or selected by. Keep each image in one split folder")
        owner.update((k, (split, p)) for k, p in split_files.items())
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
    return FolderLayout(path, tuple(classes), {"train": samples, **held}, how, seed, fractions)


def image_folder_splits(root: str | Path, model: torch.nn.Module, *, fractions: SplitFractions = SplitFractions(),
                        seed: int = 0) -> DatasetSplits:
    """An ImageFolder tree for ``model`` as train / val / test: timm's training transform on train, its eval
    transform on the held-out splits.

    Folders given are used as given: ``root/train`` with ``root/val`` and ``root/test``. A held-out folder that is
    missing is split off train (seeded by ``seed``, stratified by class, its share from ``fractions``): with
    ``val/`` alone beside ``train/``, test is ``fractions.test`` of train's images (and the reverse); ``root/train``
    alone, or a folder of class folders, is split three ways. No file is in two splits: a folder is walked without
    following symlinked folders, a symlinked image counts only where it points inside its own split folder, and
    one file (one inode: hard links, symlinks) counts once; one file in two given split folders is refused.
    """
    from timm.data import create_transform

    layout = scan_image_folder(root, fractions=fractions, seed=seed)
    path = layout.root
    cfg = model_input(model)
    mode = "L" if cfg["input_size"][0] == 1 else "RGB"

    def files(split: str) -> ImageFiles:
        training = split == "train"
        return ImageFiles(path, layout.splits[split], create_transform(**cfg, is_training=training), mode,
                          augmented=training)

    train, val, test = files("train"), files("val"), files("test")
    classes = layout.classes
    description = (f"ImageFolder {str(path)!r}: {len(classes)} classes, {len(train)} train / {len(val)} val / "
                   f"{len(test)} test ({layout.how}); timm train transform for train, eval transform for val and "
                   f"test, at {tuple(cfg['input_size'])}")
    provenance = {"name": path.name, "source": str(path), "layout": layout.how, "num_classes": len(classes),
                  "split_seed": seed, "val_fraction": fractions.val, "test_fraction": fractions.test,
                  "split_sha256": layout.split_sha256(), "content_sha256": layout.content_sha256(),
                  "train_size": len(train), "val_size": len(val), "test_size": len(test),
                  "input_size": list(cfg["input_size"]),
                  "mean": list(cfg["mean"]), "std": list(cfg["std"]), "transforms": "timm create_transform"}
    return DatasetSplits(path.name, train, val, test, len(classes), tuple(classes), description, provenance)


def _scan(folder: Path) -> tuple[list[str], list[tuple[str, int]], dict[tuple[int, int], str]]:
    """Class folder names, (path, class index) of every image in torchvision's ImageFolder order, and each
    image's file identity (device, inode) -> its path.

    Unlike torchvision's ``make_dataset`` (``os.walk(followlinks=True)``), symlinked folders are not followed
    (``c0/loop -> .`` would list the class again, without end), a symlinked image counts only where it points
    inside ``folder``, and one file reached by two names (hard links, symlinks) counts once, under its first name.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = str(folder.resolve())
    try:
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False))
    except OSError as e:
        raise VitsearchError(f"cannot read {root!r} ({e.strerror}): expected {_LAYOUT}") from e
    if not classes:
        raise VitsearchError(f"no class folders found in {root!r}: expected {_LAYOUT}")
    samples: list[tuple[str, int]] = []
    seen: dict[tuple[int, int], str] = {}
    skipped = {"symlinked folders (not followed)": 0, "symlinks to outside the folder": 0,
               "second names (links) of files already listed": 0}
    for idx, c in enumerate(classes):
        found = 0
        for dirpath, dirnames, filenames in sorted(os.walk(os.path.join(root, c), followlinks=False)):
            skipped["symlinked folders (not followed)"] += sum(os.path.islink(os.path.join(dirpath, d)) for d in dirnames)
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                if not name.lower().endswith(IMG_EXTENSIONS):
                    continue
                real = os.path.realpath(p)
                if os.path.commonpath([real, root]) != root or not os.path.isfile(real):
                    skipped["symlinks to outside the folder"] += 1
                    continue
                st = os.stat(real)
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    skipped["second names (links) of files already listed"] += 1
                    continue
                seen[key] = p
                samples.append((p, idx))
                found += 1
        if not found:
            raise VitsearchError(f"no images found in class folder {os.path.join(root, c)!r}: give every class at "
                                 f"least one image ({', '.join(ext for ext in IMG_EXTENSIONS)}), or remove the "
                                 f"folder; expected {_LAYOUT}")
    if any(skipped.values()):
        logger.warning("%s: left out %s", root, "; ".join(f"{what}: {n}" for what, n in skipped.items() if n))
    return classes, samples, seen


def subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    n = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return dataset
    if limit < 1:
        raise VitsearchError(f"subset size {limit} must be at least 1")
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return dataset.select(idx.tolist())  # type: ignore[attr-defined]
