"""Data sets: the built-in digits canvases (default), the built-in cluttered digits and ImageFolder trees, as
train / val / test splits.

:func:`load_dataset` is the one entry point: a built-in name (:data:`EMBEDDED_DATA`) or a folder path in, :class:`DatasetSplits` out, with
images sized and normalised the way the given model expects (timm's ``pretrained_cfg``) and a provenance
description. Splits are seeded and stratified, so every run sees the same images in the same split. Each split has
one job: train is learned from, val is what a search ranks and selects on, test is the accuracy results state
(the search's decisions never read it).

Training code asks the splits for batches through two calls: :meth:`DatasetSplits.train_batches` (endless,
shuffled per epoch, augmented) and :meth:`DatasetSplits.held_out_batches` (val or test in order, never
augmented). Digits live in memory as tensors and are sliced in the training process; ImageFolder images stream
through a ``torch.utils.data.DataLoader`` (``LoaderSettings``: worker processes, pinned memory) with timm's
training transforms for the train split and its eval transforms for held-out data. Each training image's random
augmentation is seeded by its place in the seeded epoch order, so batches repeat exactly under a seed whatever the
number of workers. Every image of a folder is checked once before the first training (:mod:`vitsearch.image_check`).

The digits data: scikit-learn's 1,797 real 8x8 hand-written digits (shipped with scikit-learn, no download),
each upscaled and pasted at a seeded random place of a patch-aligned grid on a larger blank canvas. Most patches
are then background, which is the redundancy token pruning removes. The cluttered digits (:mod:`.clutter`) put a
larger digit among fragments of other digits, so which tokens a model keeps decides what it can read.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import VitsearchError


from .clutter import CLUTTER, ClutterSpec, clutter_data, clutter_splits
from .digits import DIGITS, DigitsSpec, digits_canvases, digits_splits, translate_within_canvas
from .imagefolder import FolderLayout, ImageFiles, image_folder_splits, scan_image_folder, subset
from .splits import (HELD_OUT, Augment, Batch, DatasetSplits, LoaderSettings, SplitFractions, TensorImageDataset,
                     inference_inputs, model_input, split_sha256, stratified_split)

__all__ = ["CLUTTER", "DIGITS", "EMBEDDED_DATA", "HELD_OUT", "Augment", "Batch", "ClutterSpec", "DatasetSplits",
           "DigitsSpec", "EmbeddedData", "FolderLayout", "ImageFiles", "LoaderSettings", "SplitFractions",
           "TensorImageDataset", "check_num_classes", "clutter_data", "clutter_splits", "digits_canvases",
           "digits_splits", "embedded_data_of", "image_folder_splits", "inference_inputs", "load_dataset", "model_input",
           "scan_image_folder", "split_sha256", "stratified_split", "translate_within_canvas"]


@dataclass(frozen=True)
class EmbeddedData:
    """A built-in data set: its name (what ``--dataset`` takes), its settings type (defaults make the data set
    the embedded model of the same name is trained on) and the function that renders it for a model."""

    name: str
    spec: type  # a frozen dataclass with ``val_fraction`` and ``seed`` (DigitsSpec, ClutterSpec)
    splits: Callable[[torch.nn.Module, Any], DatasetSplits]


EMBEDDED_DATA: dict[str, EmbeddedData] = {d.name: d for d in (
    EmbeddedData(DIGITS, DigitsSpec, digits_splits),
    EmbeddedData(CLUTTER, ClutterSpec, clutter_splits),
)}


def embedded_data_of(spec: Any) -> EmbeddedData:
    """The built-in data set whose settings ``spec`` is (a DigitsSpec or a ClutterSpec)."""
    found = next((d for d in EMBEDDED_DATA.values() if type(spec) is d.spec), None)
    if found is None:
        raise TypeError(f"{type(spec).__name__} is not the settings of a built-in data set")
    return found


def load_dataset(
    spec: str | Path,
    model: torch.nn.Module,
    *,
    fractions: SplitFractions = SplitFractions(),
    seed: int = 0,
    split_seed: int = 0,
    max_train: int | None = None,
    max_val: int | None = None,
    max_test: int | None = None,
    loading: LoaderSettings = LoaderSettings(),
) -> DatasetSplits:
    """The data set ``spec`` names, prepared for ``model``: ``"digits"`` or ``"clutter"`` (built in) or an
    ImageFolder path, as train / val / test.

    ``fractions`` and ``split_seed`` split off what a folder does not give as ``val/`` or ``test/`` (and the
    built-in data): the split belongs to the base model (what it was trained on must stay out of val and test),
    never to a search's ``seed``. ``max_train`` / ``max_val`` / ``max_test`` keep a random subset of that split
    seeded by ``seed``, e.g. a few thousand ImageNet images for a search. Every image of a folder that the splits
    use is checked here, before any training (``loading.workers`` processes check in parallel).
    """
    if str(spec) in EMBEDDED_DATA:
        data = EMBEDDED_DATA[str(spec)]
        splits = data.splits(model, data.spec(val_fraction=fractions.val, test_fraction=fractions.test,
                                              seed=split_seed))
    else:
        splits = image_folder_splits(spec, model, fractions=fractions, seed=split_seed)
    if max_train is not None or max_val is not None or max_test is not None:
        train = subset(splits.train, max_train, seed)
        val = subset(splits.val, max_val, seed + 1)
        test = subset(splits.test, max_test, seed + 2)
        splits = dataclasses.replace(
            splits, train=train, val=val, test=test,
            description=f"{splits.description}; subset {len(train)} train / {len(val)} val / {len(test)} test "
                        f"(seed {seed})",
            provenance={**splits.provenance, "train_size": len(train), "val_size": len(val), "test_size": len(test)})
    if isinstance(splits.train, ImageFiles):
        from ..image_check import check_images

        check_images(splits.train.root, [p for ds in (splits.train, splits.val, splits.test)
                                         for p, _ in ds.samples], workers=loading.workers)
    return dataclasses.replace(splits, loading=loading)


def check_num_classes(splits: DatasetSplits, model: torch.nn.Module,
                      fit: str = "vitsearch pretrain --model NAME --checkpoint PATH --dataset DIR") -> None:
    """Raise unless the model's head has one output per class of the data; ``fit`` is the command that fits the
    base to it, with the caller's own values where it knows them."""
    model_classes = int(getattr(model, "num_classes"))
    if model_classes != splits.num_classes:
        raise VitsearchError(
            f"data set {splits.name!r} has {splits.num_classes} classes but the model's head has {model_classes}: "
            f"fit the base to it first with: {fit} (a new head for its classes), and pass the checkpoint it writes to --checkpoint")

