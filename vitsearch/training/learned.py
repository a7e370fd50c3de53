"""Learned keep rates: SPViT's computation-aware training, in which each selector's pruning rate is a parameter.

Layer-to-phase: a selector is inserted at every block the schedule offers, one phase each, in block order; the new
selector learns while the ones before it keep learning and the backbone fine-tunes. Each has a keep rate
r = keep_min + (1 - keep_min) * sigmoid(u), u free. A training draw keeps exactly ``kept_tokens(n, r)`` of the n
tokens reaching the selector (the inference top-k's count) and passes the loss's gradient back to r
(:func:`vitsearch.pruning.methods.spvit.rate_surrogate`): the task loss pulls a rate up where its tokens matter.

The sparsity loss holds the model at the budget: ``w * |L(r) / budget - 1|``, L(r) the predicted latency of the
rates' config (``latency_of``), whose gradient in r is the device table's block curve (drift-scaled and monotone,
the predictor's) at the soft per-block token counts. Two-sided, like DynamicViT's and SPViT's ratio losses: with a
one-sided hinge, the rates' momentum carried them 13% under the budget in 80 steps and nothing brought them back (a
model that has not learned which tokens matter has little task-loss pull; tests/training/test_learned.py). So the
total settles at the budget, and where the tokens go is decided per selector: each one's rate moves with the task
loss where its tokens are worth more than they cost on the device, and against it where they cost more.

What the selectors learned is then merged into the few a deployed model can afford
(:mod:`vitsearch.search.learned`).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from ..pruning import PruneConfig, apply, prune_state
from .brief import TrainSettings, candidate_loss, param_groups
from .device import CPU, Precision
from .loop import batches, next_batch, seeded, step_log, train_steps

logger = logging.getLogger(__name__)

LatencyFn = Callable[[Mapping[int, torch.Tensor]], torch.Tensor]  # keep rates by block -> predicted ms, differentiable


@dataclass(frozen=True)
class LearnSettings:
    steps: int  # learning steps over all phases
    keep_min: float = 0.1  # the lowest rate a selector may learn (the search space's keep_min)
    init_keep: float = 0.9  # a newly inserted selector's rate: it starts by pruning little
    rate_lr: float = 0.05  # AdamW on the free parameter u; no weight decay (it would pull every rate to the middle)
    sparsity_weight: float = 5.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class KeepRates(nn.Module):
    """One learnable keep rate per selector block, in [keep_min, 1]."""

    def __init__(self, blocks: Sequence[int], keep_min: float, init_keep: float) -> None:
        super().__init__()
        self.keep_min = keep_min
        share = min(max((init_keep - keep_min) / (1 - keep_min), 1e-3), 1 - 1e-3)
        self.free = nn.ParameterDict({str(b): nn.Parameter(torch.tensor(math.log(share / (1 - share))))
                                      for b in blocks})

    def rates(self, blocks: Sequence[int]) -> dict[int, torch.Tensor]:
        return {b: self.keep_min + (1 - self.keep_min) * torch.sigmoid(self.free[str(b)]) for b in blocks}

    def values(self) -> dict[int, float]:
        return {int(b): float(r.detach()) for b, r in self.rates([int(b) for b in self.free]).items()}


def rates_config(rates: Mapping[int, float | torch.Tensor]) -> PruneConfig:
    """The SPViT config of keep rates (4 decimals: the config is what the predictor and the draws' counts read)."""
    return PruneConfig("spvit", {b: round(float(r.detach() if isinstance(r, torch.Tensor) else r), 4)
                                 for b, r in rates.items()})


def phase_of(step: int, steps: int, phases: int) -> int:
    """Layer-to-phase: the phase (0-based, = selectors inserted - 1) of ``step``, phases evenly spaced."""
    return min(phases - 1, step * phases // max(steps, 1))


@dataclass
class LearnedRun:
    rates: dict[int, float]  # the learned keep rate of every selector block
    history: list[dict[str, Any]]  # per phase end: its selectors' rates and the predicted latency
    seconds: float


def learn_rates(model: nn.Module, teacher: nn.Module, splits: Any, blocks: Sequence[int], latency_of: LatencyFn,
                budget_ms: float, train: TrainSettings, settings: LearnSettings, *, precision: Precision = CPU) -> LearnedRun:
    """Train the base copy ``model`` in place with a learnable-rate selector inserted at each of ``blocks`` in
    turn (layer-to-phase), under the sparsity loss against ``budget_ms``. Returns the learned rates."""
    blocks = sorted(blocks)
    if not blocks:
        raise ValueError("the learned strategy needs at least one block that may hold a selector")
    with seeded(train.seed):  # every selector exists before the optimiser sees the parameters
        apply(model, PruneConfig("spvit", {b: 0.5 for b in blocks}))
    rates = KeepRates(blocks, settings.keep_min, settings.init_keep).to(precision.device)
    groups = param_groups(model, train) + [{"params": list(rates.parameters()), "lr": settings.rate_lr,
                                            "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, weight_decay=train.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(train.seed)
    scaler = precision.scaler()
    weights = train.weights
    history: list[dict[str, Any]] = []
    log = step_log("learning keep rates", settings.steps, logger)
    teacher.eval()
    topk = replace(train, spvit_draw="topk")  # the draws the rates' gradient is written for
    started = time.perf_counter()
    with seeded(train.seed):
        data = batches(splits, train.batch_size, train.seed)

        def step(i: int) -> dict[str, float]:
            x, y, teacher_logits = next_batch(data, splits, teacher, generator, precision)
            inserted = blocks[:phase_of(i, settings.steps, len(blocks)) + 1]
            now = rates.rates(inserted)
            apply(model, rates_config(now))
            state = prune_state(model)
            state.progress, state.train, state.rates = i / max(settings.steps - 1, 1), topk, now
            model.train()
            with precision.autocast():
                loss, parts = candidate_loss(model, x, y, teacher_logits, weights, None)
            ms = latency_of(now)
            sparsity = (ms / budget_ms - 1.0).abs()
            scaler.backward(loss + settings.sparsity_weight * sparsity)
            return parts | {"predicted_ms": float(ms.detach()), "sparsity": float(sparsity.detach()),
                            "selectors": float(len(inserted))}

        def after(done: int, parts: dict[str, float]) -> None:
            log(done, parts)
            if done == settings.steps or phase_of(done, settings.steps, len(blocks)) != phase_of(
                    done - 1, settings.steps, len(blocks)):
                inserted = blocks[:phase_of(done - 1, settings.steps, len(blocks)) + 1]
                values = {b: round(v, 4) for b, v in rates.values().items() if b in inserted}
                history.append({"step": done, "rates": values, "predicted_ms": parts["predicted_ms"]})
                logger.info("learned rates after %d steps: %s, %.3f ms predicted (budget %.3f ms)", done,
                            values, parts["predicted_ms"], budget_ms)

        train_steps(optimizer, base_lrs, range(settings.steps), step, warmup=train.warmup_steps,
                    total=settings.steps, after=after, scaler=scaler)
    state = prune_state(model)
    state.reset()
    state.rates = None
    model.eval()
    return LearnedRun(rates.values(), history, time.perf_counter() - started)
