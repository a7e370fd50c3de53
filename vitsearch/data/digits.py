"""The built-in digits data: scikit-learn's 1,797 real 8x8 hand-written digits (shipped with scikit-learn, no
download), each upscaled and pasted at a seeded random place of a patch-aligned grid on a larger blank canvas. Most
patches are then background, which is the redundancy token pruning removes."""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VitsearchError


from .splits import DatasetSplits, SplitFractions, TensorImageDataset, model_input, split_sha256, stratified_split

DIGITS = "digits"


@dataclass(frozen=True)
class DigitsSpec:
    """How the digits canvases are made; part of the digits base model's cache key."""

    canvas: int = 64  # side of the blank square canvas, in pixels
    scale: int = 2  # 8x8 digits are upscaled (nearest) to 16x16: 2x2 patches of vit_digits, each a quarter digit
    # Digits sit on a grid of this many pixels (the model's patch size), so each patch holds the same quarter of
    # a digit wherever it is: a ViT learns from 1,079 images what to attend to, not every sub-patch shift.
    step: int = 8
    val_fraction: float = 0.2  # share of each class held out as val (what a search selects on)
    test_fraction: float = 0.2  # share of each class held out as test (what results state)
    seed: int = 0  # fixes both the placements and the split

    @property
    def fractions(self) -> SplitFractions:
        return SplitFractions(self.val_fraction, self.test_fraction)

    @property
    def glyph(self) -> int:
        return 8 * self.scale

    def __post_init__(self) -> None:
        if self.glyph > self.canvas:
            raise VitsearchError(f"digits of {self.glyph}px do not fit a {self.canvas}px canvas")


# --- digits -----------------------------------------------------------------------------------------------------



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
    """The digits canvases as train / val / test, resized and normalised for ``model`` (any timm ViT).

    Stratified by class; each canvas is one source digit, so no digit is in two splits."""
    images, labels = digits_canvases(spec)
    train_idx, val_idx, test_idx = stratified_split(labels.numpy(), spec.fractions, spec.seed)
    cfg = model_input(model)
    prepared = _prepare(images, cfg)
    train, val, test = (TensorImageDataset(prepared[i], labels[i]) for i in (train_idx, val_idx, test_idx))
    background = tuple((-m / s) for m, s in zip(cfg["mean"], cfg["std"]))  # a blank pixel, normalised
    description = (f"digits: scikit-learn load_digits (1,797 real 8x8 hand-written digits), upscaled {spec.scale}x "
                   f"at seeded {spec.step}-pixel grid positions on {spec.canvas}x{spec.canvas} canvases; "
                   f"{len(train)} train / {len(val)} val / {len(test)} test "
                   f"(stratified, seed {spec.seed}); input {tuple(cfg['input_size'])}")
    provenance = {"name": DIGITS, "source": "sklearn.datasets.load_digits", **asdict(spec),
                  "split_sha256": split_sha256({"val": val_idx, "test": test_idx}),
                  "input_size": list(cfg["input_size"]), "mean": list(cfg["mean"]), "std": list(cfg["std"]),
                  "train_size": len(train), "val_size": len(val), "test_size": len(test), "num_classes": 10}
    return DatasetSplits(DIGITS, train, val, test, 10, tuple(str(d) for d in range(10)), description, provenance,
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

    The digits' training augmentation: placements seen in training then cover the canvas, not just the 1,079
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


