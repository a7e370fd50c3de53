"""Brief training of pruned candidates from the base checkpoint, with the computation-aware loss.

Two strategies share one loss and one step:
- ``train_candidate``: per-candidate fine-tuning (each candidate its own copy of the base model);
- ``train_supernet``: weight sharing: one model, SPViT selectors at every allowed block, trained on configs
  sampled from the search space (the largest and the smallest in every step, the sandwich rule, plus random
  ones); each candidate is then evaluated from it with few or no extra steps.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import PruneConfig
from ..pruning import apply, prune_state
from .losses import LossWeights, PiecewiseLinear, distill_loss, keep_ratio_loss, latency_loss, soft_block_tokens

logger = logging.getLogger(__name__)


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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SoftLatency:
    """The device's cost of one block at n tokens (from its latency table), for the latency term."""

    curve: PiecewiseLinear

    def target_ms(self, block_tokens: Sequence[int]) -> float:
        return float(sum(self.curve(torch.tensor(float(n))) for n in block_tokens))


@dataclass(frozen=True)
class TrainResult:
    steps: int
    seconds: float
    final_loss: dict[str, float]


def candidate_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor, weights: LossWeights,
    latency: SoftLatency | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One forward of a patched model in training mode and its computation-aware loss (see losses.py)."""
    config, schedule = model.prune_config, model.token_schedule
    logits = model(x)
    state = prune_state(model)
    parts = {"ce": F.cross_entropy(logits, y), "distill": distill_loss(logits, teacher_logits)}
    loss = parts["ce"] + weights.distill * parts["distill"]
    if config.method == "spvit" and state.keep_decisions:
        parts["ratio"] = keep_ratio_loss(state.keep_decisions, state.keep_targets)
        loss = loss + weights.ratio * parts["ratio"]
        if latency is not None and weights.latency > 0:
            soft = soft_block_tokens(state.keep_decisions, [s.block for s in schedule.selectors],
                                     depth=schedule.depth, num_prefix=schedule.num_prefix)
            parts["latency"] = latency_loss(soft, latency.curve, latency.target_ms(schedule.block_tokens))
            loss = loss + weights.latency * parts["latency"]
    if config.method == "evovit" and state.aux_logits is not None:
        parts["aux"] = F.cross_entropy(state.aux_logits, y)
        loss = (1 - weights.aux) * loss + weights.aux * parts["aux"]
    return loss, {k: float(v.detach()) for k, v in parts.items()} | {"total": float(loss.detach())}


def train_candidate(
    model: nn.Module, teacher: nn.Module, splits, settings: TrainSettings = TrainSettings(), *,
    latency: SoftLatency | None = None,
) -> TrainResult:
    """Fine-tune a patched ``model`` in place; ``teacher`` is the unpruned base model (self-distillation)."""
    return _train(model, teacher, splits, settings, lambda step: [model.prune_config], latency)


def train_supernet(
    model: nn.Module, teacher: nn.Module, splits,
    step_configs: Callable[[int, random.Random], Sequence[PruneConfig]], prepare: Sequence[PruneConfig],
    settings: TrainSettings = TrainSettings(), *, latency: SoftLatency | None = None,
) -> TrainResult:
    """Weight sharing: step ``i`` trains the configs ``step_configs(i, rng)`` on one batch, gradients summed.
    ``prepare`` is applied first, so every selector and head the space can use exists before the optimiser."""
    rng = random.Random(settings.seed)
    for config in prepare:
        apply(model, config)
    return _train(model, teacher, splits, settings, lambda step: step_configs(step, rng), latency)


def _train(model: nn.Module, teacher: nn.Module, splits, settings: TrainSettings,
           configs_of_step: Callable[[int], Sequence[PruneConfig]], latency: SoftLatency | None) -> TrainResult:
    teacher.eval()
    optimizer = torch.optim.AdamW(param_groups(model, settings), weight_decay=settings.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(settings.seed)
    start, parts = time.perf_counter(), {}
    with _seeded(settings.seed):
        batches = _batches(splits, settings.batch_size, settings.seed)
        for step in range(settings.steps):
            set_lr(optimizer, base_lrs, step, settings.warmup_steps, settings.steps)
            x, y, teacher_logits = next_batch(batches, splits, teacher, generator)
            optimizer.zero_grad(set_to_none=True)
            configs = configs_of_step(step)
            for config in configs:
                apply(model, config, evo_every_block=getattr(model, "evo_every_block", False))
                model.train()
                loss, parts = candidate_loss(model, x, y, teacher_logits, settings.weights, latency)
                (loss / len(configs)).backward()
            optimizer.step()
    prune_state(model).reset()  # drop the last forward's graph-holding tensors (and let the model deepcopy)
    model.eval()
    seconds = time.perf_counter() - start
    logger.debug("trained %d steps in %.1f s: %s", settings.steps, seconds, parts)
    return TrainResult(settings.steps, seconds, parts)


def fresh_model(base: nn.Module, config: PruneConfig, seed: int = 0) -> nn.Module:
    """A copy of ``base`` patched for ``config``; its new selectors / aux head initialised from ``seed``, so a
    candidate (and a run resumed from its checkpoint) starts from the same weights whatever ran before it."""
    with _seeded(seed):
        return apply(copy.deepcopy(base), config)


def param_groups(model: nn.Module, settings: TrainSettings) -> list[dict]:
    new = [p for n, p in model.named_parameters() if n.startswith(("token_selectors.", "head_aux."))]
    new_ids = {id(p) for p in new}
    base = [p for p in model.parameters() if id(p) not in new_ids]
    return [{"params": base, "lr": settings.lr}, {"params": new, "lr": settings.selector_lr}]


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def _batches(splits, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    return splits.train_batches(batch_size, seed)


def next_batch(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], splits, teacher: nn.Module,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The next training batch, augmented, with the teacher's logits for distillation."""
    x, y = next(batches)
    if splits.augment is not None:
        x = splits.augment(x, generator)
    with torch.no_grad():
        return x, y, teacher(x)


def set_lr(optimizer: torch.optim.Optimizer, base_lrs: Sequence[float], step: int, warmup: int, total: int) -> None:
    """Linear warm-up, then cosine decay to 0, applied to every parameter group's base learning rate."""
    factor = _lr_factor(step, warmup, total)
    for g, lr in zip(optimizer.param_groups, base_lrs):
        g["lr"] = lr * factor


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.inference_mode()
def accuracy(model: nn.Module, splits, *, batch_size: int = 256) -> float:
    """Top-1 on the held-out split with hard (inference) pruning."""
    model.eval()
    correct = total = 0
    for x, y in splits.held_out_batches(batch_size):
        correct += int((model(x).argmax(dim=-1) == y).sum())
        total += len(y)
    return correct / max(total, 1)
