"""Brief training of pruned candidates from the base checkpoint, with the computation-aware loss (whose keep-ratio
and latency terms are 0 under the default top-k draw, the keep ratios being the sampled config's; see losses.py).

Two strategies share one loss and one step:
- ``train_candidate``: per-candidate fine-tuning (each candidate its own copy of the base model);
- ``train_supernet``: weight sharing: one model, SPViT selectors at every allowed block, trained on configs
  sampled from the search space (the largest and the smallest in every step, the sandwich rule, plus random
  ones); each candidate is then evaluated from it with few or no extra steps.
"""
from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..pruning import METHODS, PruneConfig, apply, prune_state
from .device import CPU, Precision
from .loop import AfterFn, batches, next_batch, seeded, step_log, train_steps
from .losses import LossWeights, PiecewiseLinear, distill_loss, latency_loss
from .settings import TrainSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SoftLatency:
    """The device's cost of one block at n tokens (from its latency table), for the latency term."""

    curve: PiecewiseLinear

    def target_ms(self, block_tokens: Sequence[int]) -> float:
        return float(sum(self.curve(torch.tensor(float(n))) for n in block_tokens))

    def loss(self, soft_tokens: Sequence[torch.Tensor], block_tokens: Sequence[int]) -> torch.Tensor:
        """The latency term of soft per-block token counts against the schedule's ``block_tokens``."""
        return latency_loss(soft_tokens, self.curve, self.target_ms(block_tokens))


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
    logits = model(x)
    state = prune_state(model)
    parts = {"ce": F.cross_entropy(logits, y), "distill": distill_loss(logits, teacher_logits)}
    loss = parts["ce"] + weights.distill * parts["distill"]
    loss = model.prune_method.loss(loss, parts, state, model.token_schedule, y, weights, latency)
    return loss, {k: float(v.detach()) for k, v in parts.items()} | {"total": float(loss.detach())}


def train_candidate(
    model: nn.Module, teacher: nn.Module, splits, settings: TrainSettings = TrainSettings(), *,
    latency: SoftLatency | None = None, precision: Precision = CPU, after: AfterFn | None = None,
) -> TrainResult:
    """Fine-tune a patched ``model`` in place; ``teacher`` is the unpruned base model (self-distillation). Both
    are on ``precision``'s device. ``after(steps done, loss parts)`` follows every step."""
    return _train(model, teacher, splits, settings, lambda step: [model.prune_config], latency, precision,
                  f"training {model.prune_config}", after)


def train_supernet(
    model: nn.Module, teacher: nn.Module, splits,
    step_configs: Callable[[int, random.Random], Sequence[PruneConfig]], prepare: Sequence[PruneConfig],
    settings: TrainSettings = TrainSettings(), *, latency: SoftLatency | None = None, precision: Precision = CPU,
    after: AfterFn | None = None,
) -> TrainResult:
    """Weight sharing: step ``i`` trains the configs ``step_configs(i, rng)`` on one batch, gradients summed.
    ``prepare`` is applied first, so every selector and head the space can use exists before the optimiser."""
    rng = random.Random(settings.seed)
    for config in prepare:
        apply(model, config)
    return _train(model, teacher, splits, settings, lambda step: step_configs(step, rng), latency, precision,
                  "training the supernet", after)


def _train(model: nn.Module, teacher: nn.Module, splits, settings: TrainSettings,
           configs_of_step: Callable[[int], Sequence[PruneConfig]], latency: SoftLatency | None,
           precision: Precision, what: str, after: AfterFn | None = None) -> TrainResult:
    teacher.eval()
    scaler = precision.scaler()
    optimizer = torch.optim.AdamW(param_groups(model, settings), weight_decay=settings.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(settings.seed)
    start = time.perf_counter()
    with seeded(settings.seed):
        data = batches(splits, settings.batch_size, settings.seed)

        def step(i: int) -> dict[str, float]:
            x, y, teacher_logits = next_batch(data, splits, teacher, generator, precision)
            configs, parts = configs_of_step(i), {}
            for config in configs:
                apply(model, config, every_block=getattr(model, "every_block", False))
                state = prune_state(model)
                state.progress, state.train = i / max(settings.steps - 1, 1), settings
                model.train()
                with precision.autocast():
                    loss, parts = candidate_loss(model, x, y, teacher_logits, settings.weights, latency)
                scaler.backward(loss / len(configs))
            return parts

        log = step_log(what, settings.steps, logger)

        def after_step(done: int, parts: dict[str, float]) -> None:
            log(done, parts)
            if after is not None:
                after(done, parts)

        parts = train_steps(optimizer, base_lrs, range(settings.steps), step, warmup=settings.warmup_steps,
                            total=settings.steps, scaler=scaler, after=after_step)
    prune_state(model).reset()  # drop the last forward's graph-holding tensors (and let the model deepcopy)
    model.eval()
    seconds = time.perf_counter() - start
    logger.debug("trained %d steps in %.1f s: %s", settings.steps, seconds, parts)
    return TrainResult(settings.steps, seconds, parts)


def fresh_model(base: nn.Module, config: PruneConfig, seed: int = 0) -> nn.Module:
    """A copy of ``base`` patched for ``config``; its new selectors / aux head initialised from ``seed``, so a
    candidate (and a run resumed from its checkpoint) starts from the same weights whatever ran before it."""
    with seeded(seed):
        return apply(copy.deepcopy(base), config)


def param_groups(model: nn.Module, settings: TrainSettings) -> list[dict]:
    prefixes = tuple(prefix for m in METHODS.values() for prefix in m.new_parameters)
    new = [p for n, p in model.named_parameters() if n.startswith(prefixes)]
    new_ids = {id(p) for p in new}
    base = [p for p in model.parameters() if id(p) not in new_ids]
    return [{"params": base, "lr": settings.lr}, {"params": new, "lr": settings.selector_lr}]
