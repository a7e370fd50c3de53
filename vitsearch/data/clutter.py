"""The built-in cluttered digits: scikit-learn's 1,797 real 8x8 hand-written digits (shipped with scikit-learn, no
download), each upscaled onto a larger canvas among fragments of other digits, in the style of the cluttered
translated MNIST that attention models are tested on (Mnih et al. 2014, "Recurrent Models of Visual Attention").

Unlike :mod:`.digits`, where every patch off the digit is blank, most patches here hold ink: a model must find
the one whole digit among pieces of others, so the tokens a pruning method keeps decide what it can still read.

The digits are split into train / val / test by source image (stratified, seeded) before anything is rendered:
a held-out digit never appears in a training image, and every image's clutter comes from other digits of its
own split. Each held-out digit is rendered ``renders`` times (placement and clutter drawn anew), so val and test
hold about 1,400 images each. Training images are made on the fly: the stored train split holds each training
digit alone on its canvas, and :class:`ClutterAugment` (the splits' ``augment``) moves it and draws fresh clutter
from the training digits for every batch, so training never sees the same image twice.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import VitsearchError
from .splits import DatasetSplits, SplitFractions, TensorImageDataset, model_input, split_sha256, stratified_split

CLUTTER = "clutter"

INK = 0.5  # a fragment shows a stroke: at least one of its pixels this dark (sklearn's 0..16 scaled to 0..1)
PLACEMENT_TRIES = 32  # places tried for a fragment before it is left out (the target's box may fill the canvas)


@dataclass(frozen=True)
class ClutterSpec:
    """How the cluttered canvases are made; part of the clutter base model's cache key."""

    canvas: int = 96  # side of the square canvas in pixels: 12x12 = 144 patch tokens of 8 pixels
    scale: int = 3  # 8x8 digits are upscaled (nearest) to 24x24: 3x3 patches of vit_clutter when grid-aligned
    step: int = 8  # the target digit sits on a grid of this many pixels (the model's patch size)
    fragments: int = 12  # clutter pieces pasted around the target digit of each image
    fragment: int = 4  # side of a piece in digit pixels (of 8), upscaled like the digit; placed at any pixel
    renders: int = 4  # each held-out digit is rendered this many times (placement and clutter drawn anew)
    val_fraction: float = 0.2  # share of each class held out for val (what a search selects on)
    test_fraction: float = 0.2  # share of each class held out for test (what a report states)
    seed: int = 0  # fixes the split, the placements and the clutter

    @property
    def fractions(self) -> SplitFractions:
        return SplitFractions(self.val_fraction, self.test_fraction)

    @property
    def glyph(self) -> int:
        return 8 * self.scale

    @property
    def piece(self) -> int:
        """Side of a clutter fragment on the canvas, in pixels."""
        return self.fragment * self.scale

    def __post_init__(self) -> None:
        if self.glyph > self.canvas:
            raise VitsearchError(f"clutter: digits of {self.glyph}px do not fit a {self.canvas}px canvas")
        if not 1 <= self.fragment <= 8:
            raise VitsearchError(f"clutter: fragment side {self.fragment} is outside 1..8 digit pixels")
        if self.fragments < 0 or self.renders < 1 or self.step < 1 or self.scale < 1:
            raise VitsearchError(f"clutter: fragments >= 0, renders, step and scale >= 1 expected, got {self}")
        SplitFractions(self.val_fraction, self.test_fraction)  # the one normaliser of split shares checks them


class Clutter:
    """Fragments of a pool of digits, pasted around a target: the only way clutter gets into an image.

    ``pool`` (P, C, g, g) holds the upscaled digits normalised like the model's input and ``sources`` (P,) their
    ``load_digits`` indices. A fragment is a ``spec.piece``-pixel square of one pool digit, cut on its 8x8 grid
    where it shows a stroke, pasted at any pixel outside the target's box (overlapping ink keeps the darker pixel).
    """

    def __init__(self, pool: torch.Tensor, sources: np.ndarray, spec: ClutterSpec) -> None:
        self.pool = pool.numpy()  # (P, C, g, g) normalised; numpy, whose slices cost a tenth of torch's
        self.sources = np.asarray(sources)  # (P,) load_digits indices
        self.spec = spec
        s, f = spec.scale, spec.fragment
        ink = pool[:, 0, ::s, ::s]  # (P, 8, 8): the digit's own pixels, normalised (darker is larger)
        ink_level = float(ink.amin()) + INK * (float(ink.amax()) - float(ink.amin())) if len(pool) else 0.0
        crops = [(j, a, b) for a in range(9 - f) for b in range(9 - f)
                 for j in torch.nonzero(ink[:, a:a + f, b:b + f].amax(dim=(1, 2)) >= ink_level).flatten().tolist()]
        if spec.fragments and not crops:
            raise VitsearchError("clutter: the pool of digits holds no fragment with ink")
        self.crops = torch.tensor(sorted(crops), dtype=torch.long).view(-1, 3)  # (K, 3): pool index, row, col

    def paste(self, canvases: torch.Tensor, boxes: np.ndarray, generator: torch.Generator,
              exclude: np.ndarray | None = None) -> list[tuple[int, ...]]:
        """Paste ``spec.fragments`` pieces into each of ``canvases`` (B, C, H, W) in place, none overlapping its
        box (``boxes`` (B, 4): rows r0:r1, cols c0:c1), none from the digit whose source index is its
        ``exclude`` (B,); returns the sources each image's pieces were cut from."""
        n, F, s = self.spec.fragments, self.spec.piece, self.spec.scale
        B, _, H, W = canvases.shape
        if n == 0 or B == 0:
            return [()] * B
        picks = self.crops[torch.randint(len(self.crops), (B, n), generator=generator)].numpy()  # (B, n, 3)
        if exclude is not None:  # redraw the target's own fragments (rare: one digit of the pool)
            own = self.sources[picks[..., 0]] == np.asarray(exclude)[:, None]  # (B, n)
            while own.any():
                redraw = self.crops[torch.randint(len(self.crops), (int(own.sum()),), generator=generator)]
                picks[own] = redraw.numpy()
                own = self.sources[picks[..., 0]] == np.asarray(exclude)[:, None]
        rows = torch.randint(H - F + 1, (B, n, PLACEMENT_TRIES), generator=generator).numpy()  # corners tried
        cols = torch.randint(W - F + 1, (B, n, PLACEMENT_TRIES), generator=generator).numpy()
        r0, r1, c0, c1 = (boxes[:, k, None, None] for k in range(4))
        free = ~((rows < r1) & (rows + F > r0) & (cols < c1) & (cols + F > c0))  # (B, n, tries): misses the box
        first = free.argmax(axis=2)[..., None]  # (B, n, 1): the first place that misses it
        placed = free.any(axis=2)  # (B, n)
        rows = np.take_along_axis(rows, first, 2)[..., 0].tolist()
        cols = np.take_along_axis(cols, first, 2)[..., 0].tolist()
        pixels = canvases.numpy()  # the same memory
        used: list[tuple[int, ...]] = []
        for i, (ok_i, rows_i, cols_i, picks_i) in enumerate(zip(placed.tolist(), rows, cols, picks.tolist())):
            here: list[int] = []
            for ok, r, c, (j, a, b) in zip(ok_i, rows_i, cols_i, picks_i):
                if ok:
                    piece = self.pool[j, :, a * s:a * s + F, b * s:b * s + F]  # (C, F, F)
                    np.maximum(pixels[i, :, r:r + F, c:c + F], piece, out=pixels[i, :, r:r + F, c:c + F])
                    here.append(int(self.sources[j]))
            used.append(tuple(here))
        return used


def ink_boxes(canvases: torch.Tensor, background: torch.Tensor) -> np.ndarray:
    """(B, 4): rows r0:r1 and cols c0:c1 of what is drawn on each of ``canvases`` (B, C, H, W) over
    ``background`` (C, 1, 1); (0, 0, 0, 0) for a blank one."""
    content = np.abs(canvases.numpy() - background.numpy()).max(axis=1) > 1e-5  # (B, H, W)
    rows, cols = content.any(axis=2), content.any(axis=1)  # (B, H), (B, W)
    H, W = rows.shape[1], cols.shape[1]
    r0, c0 = rows.argmax(axis=1), cols.argmax(axis=1)
    r1, c1 = H - rows[:, ::-1].argmax(axis=1), W - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([r0, r1, c0, c1], axis=1)
    boxes[~rows.any(axis=1)] = 0
    return boxes


class ClutterAugment:
    """The training images, made per batch: each clean training digit moved whole to a random place of its
    canvas on the ``step`` grid, then cluttered with fragments of the training digits only."""

    def __init__(self, clutter: Clutter, background: torch.Tensor, step: int) -> None:
        self.clutter = clutter  # its pool is the train split's digits
        self.background = background  # (C, 1, 1) a blank pixel, normalised
        self.step = step

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # images: (B, C, H, W), each a training digit alone on its canvas
        B, C, H, W = images.shape
        boxes = ink_boxes(images, self.background)  # (B, 4)
        out = self.background.expand(B, C, H, W).clone()
        # Shifts by multiples of step that keep the digit inside: from -(r0 // step) to (H - r1) // step.
        lo = -(boxes[:, [0, 2]] // self.step)  # (B, 2) rows, cols
        hi = np.stack([(H - boxes[:, 1]) // self.step, (W - boxes[:, 3]) // self.step], axis=1)
        u = torch.rand(B, 2, generator=generator, dtype=torch.float64).numpy()
        shift = self.step * (lo + np.floor(u * (hi - lo + 1)).astype(np.int64))  # (B, 2)
        src, dst = images.numpy(), out.numpy()
        for i, ((r0, r1, c0, c1), (dr, dc)) in enumerate(zip(boxes.tolist(), shift.tolist())):
            dst[i, :, r0 + dr:r1 + dr, c0 + dc:c1 + dc] = src[i, :, r0:r1, c0:c1]
        self.clutter.paste(out, boxes + shift[:, [0, 0, 1, 1]], generator)
        return out


@dataclass(frozen=True)
class ClutterSplit:
    """One split's images with where each came from (``load_digits`` indices), for provenance and tests."""

    images: torch.Tensor  # (N, C, H, W) normalised
    labels: torch.Tensor  # (N,) int64
    sources: np.ndarray  # (N,) the target digit of each image
    clutter: tuple[tuple[int, ...], ...]  # per image, the digits its fragments were cut from (train: none stored)

    def dataset(self) -> TensorImageDataset:
        return TensorImageDataset(self.images, self.labels)


@dataclass(frozen=True)
class ClutterData:
    train: ClutterSplit  # each training digit once, alone: augment clutters it per batch
    val: ClutterSplit
    test: ClutterSplit
    augment: ClutterAugment
    background: tuple[float, ...]  # a blank pixel, normalised


def clutter_data(spec: ClutterSpec, cfg: Mapping[str, Any]) -> ClutterData:
    """The three splits for a model whose input is ``cfg`` (timm's data config, see :func:`.splits.model_input`)."""
    from sklearn.datasets import load_digits

    c, h, w = cfg["input_size"]
    if (h, w) != (spec.canvas, spec.canvas):
        raise VitsearchError(
            f"data set {CLUTTER!r} is drawn on {spec.canvas}x{spec.canvas} canvases, for vit_clutter's input; this "
            f"model takes {h}x{w} images: use --model {CLUTTER}, or a model built for a {spec.canvas}-pixel input")
    digits = load_digits()
    labels = torch.from_numpy(digits.target).long()
    mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(c, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32).view(c, 1, 1)
    glyphs = torch.from_numpy(digits.images / 16.0).float()  # (N, 8, 8), sklearn's range is 0..16
    glyphs = glyphs.repeat_interleave(spec.scale, 1).repeat_interleave(spec.scale, 2)  # (N, g, g)
    glyphs = (glyphs.unsqueeze(1).expand(-1, c, -1, -1) - mean) / std  # (N, C, g, g), the model's input range
    background = (-mean / std)  # (C, 1, 1)
    # split by source digit before anything is drawn: no digit is in two splits
    train_idx, val_idx, test_idx = stratified_split(digits.target, spec.fractions, spec.seed)

    def render(idx: np.ndarray, renders: int, stream: int, clutter: Clutter | None) -> ClutterSplit:
        generator = torch.Generator().manual_seed(1000 * spec.seed + stream)
        sources = np.repeat(idx, renders)  # each digit's renders side by side
        cells = (spec.canvas - spec.glyph) // spec.step + 1
        corners = torch.randint(cells, (len(sources), 2), generator=generator) * spec.step  # (N, 2) row, col
        images = background.expand(len(sources), c, spec.canvas, spec.canvas).clone()
        for i, (src, (r, col)) in enumerate(zip(sources, corners.tolist())):
            images[i, :, r:r + spec.glyph, col:col + spec.glyph] = glyphs[src]
        used = [()] * len(sources) if clutter is None else clutter.paste(
            images, ink_boxes(images, background), generator, exclude=sources)
        return ClutterSplit(images, labels[torch.from_numpy(sources)], sources, tuple(used))

    def pool(idx: np.ndarray) -> Clutter:
        return Clutter(glyphs[torch.from_numpy(idx)], idx, spec)

    train_pool = pool(train_idx)
    return ClutterData(
        train=render(train_idx, 1, 0, None),
        val=render(val_idx, spec.renders, 1, pool(val_idx)),
        test=render(test_idx, spec.renders, 2, pool(test_idx)),
        augment=ClutterAugment(train_pool, background, spec.step),
        background=tuple(background.flatten().tolist()),
    )


def clutter_splits(model: torch.nn.Module, spec: ClutterSpec = ClutterSpec()) -> DatasetSplits:
    """The cluttered digits for ``model`` (vit_clutter, or any timm ViT with a ``spec.canvas``-pixel input)."""
    cfg = model_input(model)
    data = clutter_data(spec, cfg)
    n_train, n_val, n_test = len(data.train.sources), len(np.unique(data.val.sources)), len(np.unique(data.test.sources))
    description = (f"{CLUTTER}: scikit-learn load_digits (1,797 real 8x8 hand-written digits) split by digit "
                   f"{n_train} train / {n_val} val / {n_test} test (stratified, seed {spec.seed}), upscaled "
                   f"{spec.scale}x on {spec.canvas}x{spec.canvas} canvases among {spec.fragments} fragments of other "
                   f"digits of the same split; {len(data.val.labels)} val / {len(data.test.labels)} test images "
                   f"({spec.renders} renders per digit), training images drawn per batch; input "
                   f"{tuple(cfg['input_size'])}")
    provenance = {"name": CLUTTER, "source": "sklearn.datasets.load_digits", **asdict(spec),
                  "split_sha256": split_sha256({"val": np.unique(data.val.sources),
                                                "test": np.unique(data.test.sources)}),
                  "input_size": list(cfg["input_size"]), "mean": list(cfg["mean"]), "std": list(cfg["std"]),
                  "train_size": n_train, "val_size": len(data.val.labels), "test_size": len(data.test.labels),
                  "num_classes": 10}
    return DatasetSplits(CLUTTER, data.train.dataset(), data.val.dataset(), data.test.dataset(), 10,
                         tuple(str(d) for d in range(10)), description, provenance, augment=data.augment)
