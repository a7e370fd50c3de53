"""The splits a training loop reads: in-memory tensors or image files, batched without end for training and once
for held-out evaluation (``LoaderSettings``: DataLoader workers, pinned memory)."""
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

    def held_out_batches(self, batch_size: int) -> Iterator[Batch]:
        """The val split once, in order, through the eval transform."""
        if isinstance(self.val, TensorImageDataset):
            n = len(self.val)
            return self._sliced(self.val, (range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)))
        return iter(DataLoader(self.val, batch_size=batch_size, num_workers=self.loading.workers,
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


def split_sha256(val_idx: Sequence[int] | np.ndarray) -> str:
    """A fingerprint of a held-out split (its sorted indices), recorded with the base model and the study."""
    import hashlib

    return hashlib.sha256(np.asarray(val_idx, dtype=np.int64).tobytes()).hexdigest()
