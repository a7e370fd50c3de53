"""Data sets: the built-in digits canvases (default) and ImageFolder trees, as train / val splits.

:func:`load_dataset` is the one entry point: ``"digits"`` or a folder path in, :class:`DatasetSplits` out, with
tensors sized and normalised the way the given model expects (timm's ``pretrained_cfg``) and a provenance
description. Splits are seeded and stratified, so every run sees the same images in the same split.

The digits data: scikit-learn's 1,797 real 8x8 hand-written digits (shipped with scikit-learn, no download),
each upscaled and pasted at a seeded random place of a patch-aligned grid on a larger blank canvas. Most patches
are then background, which is the redundancy token pruning removes.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from .errors import VitsearchError

logger = logging.getLogger(__name__)

DIGITS = "digits"

# A batch-level training augmentation: (images (B, C, H, W), generator) -> images of the same shape.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class DigitsSpec:
    """How the digits canvases are made; part of the digits base model's cache key."""

    canvas: int = 64  # side of the blank square canvas, in pixels
    scale: int = 2  # 8x8 digits are upscaled (nearest) to 16x16: 2x2 patches of vit_digits, each a quarter digit
    # Digits sit on a grid of this many pixels (the model's patch size), so each patch holds the same quarter of
    # a digit wherever it is: a ViT learns from 1,438 images what to attend to, not every sub-patch shift.
    step: int = 8
    val_fraction: float = 0.2  # held-out share of each class
    seed: int = 0  # fixes both the placements and the split

    @property
    def glyph(self) -> int:
        return 8 * self.scale

    def __post_init__(self) -> None:
        if self.glyph > self.canvas:
            raise VitsearchError(f"digits of {self.glyph}px do not fit a {self.canvas}px canvas")


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


@dataclass(frozen=True)
class DatasetSplits:
    """Train and held-out val splits of one data set, ready for one model's input."""

    name: str  # "digits" or the folder's name
    train: Dataset
    val: Dataset  # held out: accuracy is measured here
    num_classes: int
    classes: tuple[str, ...]
    description: str  # one line of provenance for logs and reports
    provenance: Mapping[str, Any] = field(default_factory=dict)  # source, settings and sizes, JSON-ready
    augment: Augment | None = None  # training-time batch augmentation suited to this data, if any

    def loader(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0,
               num_workers: int = 0) -> DataLoader:
        """A DataLoader over ``"train"`` or ``"val"``; shuffling is seeded so runs repeat."""
        if split not in ("train", "val"):
            raise ValueError(f"unknown split {split!r}: expected 'train' or 'val'")
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(getattr(self, split), batch_size=batch_size, shuffle=shuffle, generator=generator,
                          num_workers=num_workers)


def load_dataset(
    spec: str | Path,
    model: torch.nn.Module,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    split_seed: int = 0,
    max_train: int | None = None,
    max_val: int | None = None,
) -> DatasetSplits:
    """The data set ``spec`` names, prepared for ``model``: ``"digits"`` (built in) or an ImageFolder path.

    ``val_fraction`` and ``split_seed`` split a folder that has no ``val/`` (and the digits): the split belongs to
    the base model (what it was trained on must stay out of val), never to a search's ``seed``. ``max_train`` /
    ``max_val`` keep a random subset seeded by ``seed``, e.g. a few thousand ImageNet images for a search.
    """
    if str(spec) == DIGITS:
        splits = digits_splits(model, DigitsSpec(val_fraction=val_fraction, seed=split_seed))
    else:
        splits = image_folder_splits(spec, model, val_fraction=val_fraction, seed=split_seed)
    if max_train is None and max_val is None:
        return splits
    train = _subset(splits.train, max_train, seed)
    val = _subset(splits.val, max_val, seed + 1)
    prov = {**splits.provenance, "train_size": len(train), "val_size": len(val)}
    desc = f"{splits.description}; subset {len(train)} train / {len(val)} val (seed {seed})"
    return DatasetSplits(splits.name, train, val, splits.num_classes, splits.classes, desc, prov, splits.augment)


def check_num_classes(splits: DatasetSplits, model: torch.nn.Module) -> None:
    """Raise unless the model's head has one output per class of the data."""
    model_classes = int(getattr(model, "num_classes"))
    if model_classes != splits.num_classes:
        raise VitsearchError(
            f"data set {splits.name!r} has {splits.num_classes} classes but the model's head has {model_classes}: "
            f"pass --num-classes {splits.num_classes} (a new head is then trained) or a checkpoint fine-tuned on it")


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


# --- digits -----------------------------------------------------------------------------------------------------

def split_sha256(val_idx: Sequence[int] | np.ndarray) -> str:
    """A fingerprint of a held-out split (its sorted indices), recorded with the base model and the study."""
    import hashlib

    return hashlib.sha256(np.asarray(val_idx, dtype=np.int64).tobytes()).hexdigest()


def stratified_split(labels: Sequence[int] | np.ndarray, val_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with ``val_fraction`` of every class in val (at least one where a class has two)."""
    if not 0.0 < val_fraction < 1.0:
        raise VitsearchError(f"val fraction {val_fraction:g} is outside (0, 1)")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction))) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def digits_canvases(spec: DigitsSpec = DigitsSpec()) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits on their canvases: images (N, 1, canvas, canvas) in [0, 1] and labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    glyphs = torch.from_numpy(digits.images / 16.0).float()  # (N, 8, 8), sklearn's range is 0..16
    glyphs = glyphs.repeat_interleave(spec.scale, 1).repeat_interleave(spec.scale, 2)  # (N, g, g)
    rng = np.random.default_rng(spec.seed)
    n, g = len(glyphs), spec.glyph
    cells = (spec.canvas - g) // spec.step + 1
    positions = rng.integers(0, cells, size=(n, 2)) * spec.step  # top-left corner (row, col) of each digit
    images = torch.zeros(n, 1, spec.canvas, spec.canvas)
    for i, (r, c) in enumerate(positions):
        images[i, 0, r:r + g, c:c + g] = glyphs[i]
    return images, torch.from_numpy(digits.target).long()


def digits_splits(model: torch.nn.Module, spec: DigitsSpec = DigitsSpec()) -> DatasetSplits:
    """The digits canvases as train / val, resized and normalised for ``model`` (any timm ViT)."""
    images, labels = digits_canvases(spec)
    train_idx, val_idx = stratified_split(labels.numpy(), spec.val_fraction, spec.seed)
    cfg = model_input(model)
    prepared = _prepare(images, cfg)
    train = TensorImageDataset(prepared[train_idx], labels[train_idx])
    val = TensorImageDataset(prepared[val_idx], labels[val_idx])
    background = tuple((-m / s) for m, s in zip(cfg["mean"], cfg["std"]))  # a blank pixel, normalised
    description = (f"digits: scikit-learn load_digits (1,797 real 8x8 hand-written digits), upscaled {spec.scale}x "
                   f"at seeded {spec.step}-pixel grid positions on {spec.canvas}x{spec.canvas} canvases; "
                   f"{len(train)} train / {len(val)} val "
                   f"(stratified, seed {spec.seed}); input {tuple(cfg['input_size'])}")
    provenance = {"name": DIGITS, "source": "sklearn.datasets.load_digits", **asdict(spec),
                  "split_sha256": split_sha256(val_idx),
                  "input_size": list(cfg["input_size"]), "mean": list(cfg["mean"]), "std": list(cfg["std"]),
                  "train_size": len(train), "val_size": len(val), "num_classes": 10}
    return DatasetSplits(DIGITS, train, val, 10, tuple(str(d) for d in range(10)), description, provenance,
                         augment=functools.partial(translate_within_canvas, background=background, step=spec.step))


def _prepare(images: torch.Tensor, cfg: Mapping[str, Any]) -> torch.Tensor:
    """[0, 1] grey canvases (N, 1, h, w) -> the model's input (N, C, H, W), normalised."""
    c, h, w = cfg["input_size"]
    if images.shape[-2:] != (h, w):
        images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    images = images.expand(-1, c, -1, -1)
    mean = torch.tensor(cfg["mean"]).view(1, c, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, c, 1, 1)
    return ((images - mean) / std).contiguous()


def translate_within_canvas(images: torch.Tensor, generator: torch.Generator, *,
                            background: Sequence[float], step: int = 1) -> torch.Tensor:
    """Move each image's content to a random place where it still fits, filling with ``background``.

    The digits' training augmentation: placements seen in training then cover the canvas, not just the 1,438
    fixed ones, which a ViT with learned position embeddings needs to generalise to held-out placements.
    Shifts are multiples of ``step`` (the model's input pixels), so grid-aligned content stays aligned.
    """
    bg = torch.tensor(background, dtype=images.dtype).view(1, -1, 1, 1)
    out = bg.expand_as(images).clone()
    content = (images - bg).abs().amax(dim=1) > 1e-5  # (B, H, W)
    _, H, W = content.shape
    rows, cols = content.any(dim=2), content.any(dim=1)  # (B, H), (B, W)
    for i in range(len(images)):
        r = torch.nonzero(rows[i]).flatten()
        c = torch.nonzero(cols[i]).flatten()
        if len(r) == 0:  # blank image: nothing to move
            out[i] = images[i]
            continue
        r0, r1, c0, c1 = int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1
        # Shift (dr, dc) by multiples of step, keeping the content inside the canvas.
        dr = step * int(torch.randint(-(r0 // step), (H - r1) // step + 1, (1,), generator=generator))
        dc = step * int(torch.randint(-(c0 // step), (W - c1) // step + 1, (1,), generator=generator))
        out[i, :, r0 + dr:r1 + dr, c0 + dc:c1 + dc] = images[i, :, r0:r1, c0:c1]
    return out


# --- ImageFolder ------------------------------------------------------------------------------------------------

_LAYOUT = ("an ImageNet-style folder: ROOT/<class>/<image>.jpg, or ROOT/train/<class>/... with "
           "ROOT/val/<class>/... beside it")


def _open_image(path: str, mode: str) -> Any:
    from PIL import Image

    with open(path, "rb") as f:
        return Image.open(f).convert(mode)


def image_folder_splits(root: str | Path, model: torch.nn.Module, *, val_fraction: float = 0.2,
                        seed: int = 0) -> DatasetSplits:
    """An ImageFolder tree with timm's eval transforms for ``model``.

    ``root/train`` and ``root/val`` are used as given; ``root/train`` alone, or a folder of class folders, is split
    with :func:`stratified_split`.
    """
    from timm.data import create_transform

    path = Path(root).expanduser()
    if not path.exists():
        raise VitsearchError(f"data set path {str(path)!r} does not exist: expected 'digits' or {_LAYOUT}")
    if not path.is_dir():
        raise VitsearchError(f"data set path {str(path)!r} is not a folder: expected 'digits' or {_LAYOUT}")
    cfg = model_input(model)
    transform = create_transform(**cfg, is_training=False)
    loader = functools.partial(_open_image, mode="L" if cfg["input_size"][0] == 1 else "RGB")
    train_dir, val_dir = path / "train", path / "val"
    if val_dir.is_dir() and not train_dir.is_dir():
        raise VitsearchError(f"{str(path)!r} has val/ but no train/: expected {_LAYOUT}")
    if train_dir.is_dir():
        train_full = _image_folder(train_dir, transform, loader)
        if val_dir.is_dir():
            val_full = _image_folder(val_dir, transform, loader)
            if val_full.classes != train_full.classes:
                only_train = sorted(set(train_full.classes) - set(val_full.classes))[:5]
                only_val = sorted(set(val_full.classes) - set(train_full.classes))[:5]
                raise VitsearchError(
                    f"train/ and val/ in {str(path)!r} hold different classes (only in train: {only_train}, only "
                    f"in val: {only_val}): both need the same class folders")
            train: Dataset = train_full
            val: Dataset = val_full
            how, digest = "train/ and val/ as given", None
        else:
            train, val, how, digest = _split(train_full, val_fraction, seed)
        classes = train_full.classes
    else:
        full = _image_folder(path, transform, loader)
        train, val, how, digest = _split(full, val_fraction, seed)
        classes = full.classes
    description = (f"ImageFolder {str(path.resolve())!r}: {len(classes)} classes, {len(train)} train / {len(val)} "
                   f"val ({how}); timm eval transform at {tuple(cfg['input_size'])}")
    provenance = {"name": path.name, "source": str(path.resolve()), "layout": how, "num_classes": len(classes),
                  "split_sha256": digest,  # None: val/ as given
                  "train_size": len(train), "val_size": len(val), "input_size": list(cfg["input_size"]),
                  "mean": list(cfg["mean"]), "std": list(cfg["std"])}
    return DatasetSplits(path.name, train, val, len(classes), tuple(classes), description, provenance)


def _image_folder(path: Path, transform: Any, loader: Callable[[str], Any]) -> Any:
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(path), transform=transform, loader=loader)
    except FileNotFoundError as e:  # torchvision's words for "no class folders" and "a class without images"
        raise VitsearchError(f"no images found in {str(path)!r} ({e}): expected {_LAYOUT}") from e


def _split(full: Any, val_fraction: float, seed: int) -> tuple[Dataset, Dataset, str, str]:
    train_idx, val_idx = stratified_split(full.targets, val_fraction, seed)
    if len(val_idx) == 0:
        raise VitsearchError(f"{str(full.root)!r} has too few images to hold some out: give each class at least two")
    how = f"stratified {1 - val_fraction:.0%}/{val_fraction:.0%} split, seed {seed}"
    return Subset(full, train_idx.tolist()), Subset(full, val_idx.tolist()), how, split_sha256(val_idx)


def _subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    n = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return dataset
    if limit < 1:
        raise VitsearchError(f"subset size {limit} must be at least 1")
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return Subset(dataset, idx.tolist())
