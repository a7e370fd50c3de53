"""What each training is told: the loss weights, brief training of a candidate (:class:`TrainSettings`), the full
schedule of a finalized config (:class:`FinalizeSettings`) and a base fitted to a data set
(:class:`FinetuneSettings`).

Plain dataclasses without torch: the CLI reads their defaults to build its options, and ``vitsearch --help``
answers without importing the training stack (the classes are also importable from the modules that use them).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import VitsearchError

if TYPE_CHECKING:
    from ..data import SplitFractions

SCHEDULES = ("progressive", "plain")  # plain: the whole config from step 0 (the comparison the benchmark makes)


@dataclass(frozen=True)
class LossWeights:
    ratio: float = 2.0  # SPViT/DynamicViT's ratio weight
    latency: float = 1.0
    distill: float = 0.5  # SPViT/DynamicViT's KL weight
    aux: float = 0.5  # Evo-ViT: 0.5 CE(cls head) + 0.5 CE(aux head)


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 40  # brief: ranks candidates; finalize trains the chosen one longer
    batch_size: int = 32  # small batches: more updates for the same compute, and the search must fit in minutes
    lr: float = 1e-4  # backbone: fine-tunes gently around the base checkpoint
    selector_lr: float = 1e-3  # new selector (and aux head) weights learn from scratch
    weight_decay: float = 0.05
    warmup_steps: int = 5
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    # SPViT's training draw (pruning.methods.spvit.TRAIN_DRAWS, whose first is this default, tests/training/test_settings):
    # "topk", exactly the target count, its noise annealed to the inference top-k, or "logodds", per-token decisions
    # around the target's log-odds (the rule before issue 14, which brief-trained to the same or lower accuracy on
    # digits: benchmarks/spvit_train_match.py).
    spvit_draw: str = "topk"

    def __post_init__(self) -> None:
        from ..pruning.methods.spvit import TRAIN_DRAWS  # torch: only where settings are made to train, never for --help

        # A NaN or negative rate trains a model of NaN weights (or away from the data) without a word.
        for name, value, option in (("lr", self.lr, "--lr"), ("selector_lr", self.selector_lr, "--selector-lr")):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise VitsearchError(f"learning rate {name}={value!r} must be a finite number above 0 ({option})")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise VitsearchError(f"weight_decay={self.weight_decay!r} must be a finite number >= 0")
        if self.batch_size < 1:
            raise VitsearchError(f"batch_size={self.batch_size} must be at least 1 (--train-batch)")
        if self.steps < 0 or self.warmup_steps < 0:
            raise VitsearchError(f"steps={self.steps} and warmup_steps={self.warmup_steps} must be 0 or more")
        if self.spvit_draw not in TRAIN_DRAWS:
            raise VitsearchError(f"spvit_draw {self.spvit_draw!r} is not a training draw rule: use one of "
                                 f"{', '.join(TRAIN_DRAWS)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FinalizeSettings:
    steps: int = 600  # 10x the brief default: the chosen config earns the full recipe
    epochs: float | None = None  # if set, overrides steps: epochs over the study's training split
    batch_size: int = 64
    lr: float = 1e-4  # backbone: fine-tunes around the base checkpoint
    selector_lr: float = 1e-3  # selectors and the Evo-ViT aux head learn from scratch
    weight_decay: float = 0.05
    warmup_steps: int = 20
    weights: LossWeights = field(default_factory=LossWeights)
    schedule: str = "progressive"  # or "plain"
    switch: tuple[float, ...] | None = None  # phase boundaries as shares of the steps; None: the defaults below
    evo_switch: float = 0.5  # Evo-ViT: share of steps with selection at every block (the paper: 200 of 300 epochs
    # from scratch; we start from a trained base, so half)
    merge_tol: float = 0.0  # SPViT: neighbouring selectors within this keep-ratio difference share a phase
    checkpoint_every: int = 50  # steps between resumable checkpoints (phase boundaries always save)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def train_settings(self, steps: int) -> TrainSettings:
        return TrainSettings(steps=steps, batch_size=self.batch_size, lr=self.lr, selector_lr=self.selector_lr,
                             weight_decay=self.weight_decay, warmup_steps=self.warmup_steps, weights=self.weights,
                             seed=self.seed)


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 300  # a new head and a gentle backbone update; the search's brief training starts from here
    batch_size: int = 32
    lr: float = 5e-5  # backbone
    head_lr: float = 1e-3  # the new head learns from scratch
    weight_decay: float = 0.05
    warmup_steps: int = 10
    seed: int = 0
    # The split of a folder without val/ or test/ (what the base must not train on); search and finalize read it
    # from the base's meta.json.
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0
    # Seeded subsets for a large folder (as ``search --max-train/--max-val``): the held-out files stay the split's,
    # so a search of the fitted base holds out exactly what it never trained on.
    max_train: int | None = None
    max_val: int | None = None

    def warmup(self, steps: int) -> int:
        """Warm-up steps of a run of ``steps``: ``warmup_steps``, at most a tenth of the run (``--steps 10`` would
        otherwise never leave its warm-up)."""
        return min(self.warmup_steps, steps // 10)

    @property
    def fractions(self) -> SplitFractions:
        from ..data import SplitFractions

        return SplitFractions(self.val_fraction, self.test_fraction)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
