"""The training floor every stage stands on: seeded RNG, batches, the learning-rate curve, the step loop and
accuracy. Brief training, the supernet, finalize's progressive schedules and digits pretraining all use these,
so a change to how a step is taken is made once."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn

from ..errors import VitsearchError
from .device import CPU, LossScaler, Precision

Batch = tuple[torch.Tensor, torch.Tensor]  # images (B, C, H, W), labels (B,)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global RNG seeded to ``seed``; the caller's RNG state is restored after."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def batches(splits: Any, batch_size: int, seed: int) -> Iterator[Batch]:
    """Shuffled training batches without end (the data's own iterator: ``DatasetSplits.train_batches``)."""
    return splits.train_batches(batch_size, seed)


def next_batch(batches: Iterator[Batch], splits: Any, teacher: nn.Module, generator: torch.Generator,
               precision: Precision = CPU) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The next training batch, augmented (on the CPU, with its CPU generator), on the training device, with the
    teacher's logits for distillation."""
    x, y = next(batches)
    if splits.augment is not None:
        x = splits.augment(x, generator)
    x, y = precision.move(x), precision.move(y)
    with torch.no_grad(), precision.autocast():
        return x, y, teacher(x)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def set_lr(optimizer: torch.optim.Optimizer, base_lrs: Sequence[float], step: int, warmup: int, total: int) -> None:
    """Every parameter group's base learning rate times :func:`lr_factor` at ``step``."""
    factor = lr_factor(step, warmup, total)
    for g, lr in zip(optimizer.param_groups, base_lrs):
        g["lr"] = lr * factor


StepFn = Callable[[int], dict[str, float]]  # forward(s) and backward(s) of one step; returns the loss parts
AfterFn = Callable[[int, dict[str, float]], None]  # called with the number of steps done and the step's parts


PROGRESS_EVERY_S = 10.0  # at most this long between a training's progress lines


def step_log(what: str, total: int, log: Any, *, every_s: float | None = None, first: int = 0) -> AfterFn:
    """An ``after`` hook that logs ``what``'s progress in steps (with the time per step) at most every
    ``every_s`` seconds (:data:`PROGRESS_EVERY_S`), so no training is silent for long; ``first``: the step a
    resumed training starts from."""
    import time

    start = last = time.perf_counter()

    def after(done: int, parts: dict[str, float]) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last >= (PROGRESS_EVERY_S if every_s is None else every_s) and done < total:
            last = now
            log.info("%s: step %d/%d, %.2f s/step, loss %.3f", what, done, total, (now - start) / (done - first),
                     parts.get("total", parts.get("ce", float("nan"))))

    return after


class TrainingDiverged(VitsearchError):
    """The loss or the weights are no longer finite numbers: the learning rate is too high for this model."""


DIVERGED_FIX = "lower the learning rate (--lr, and --selector-lr for the selectors) and run again"


def check_finite(parts: dict[str, float], step: int, total: int, base_lrs: Sequence[float],
                 fix: str = DIVERGED_FIX) -> None:
    """Stop a training whose loss is no longer a finite number: every later step would only train NaN weights,
    which a search would then store as a trained trial."""
    loss = parts.get("total", parts.get("ce"))
    if loss is not None and not math.isfinite(loss):
        rates = ", ".join(f"{lr:g}" for lr in base_lrs)
        raise TrainingDiverged(f"the training diverged: its loss is {loss} at step {step + 1} of {total} (learning "
                             f"rates {rates}): {fix}")


def train_steps(optimizer: torch.optim.Optimizer, base_lrs: Sequence[float], steps: range, step: StepFn, *,
                warmup: int, total: int, after: AfterFn | None = None,
                scaler: LossScaler | None = None, fix: str = DIVERGED_FIX) -> dict[str, float]:
    """The step loop: for each step ``i`` in ``steps``, the learning rate of step ``i`` on the curve over
    ``total`` (from ``base_lrs``, the groups' rates as the optimiser was made), cleared gradients, ``step(i)``
    (which computes the loss and calls ``backward``, through ``scaler`` where there is one), one optimiser step,
    then ``after(i + 1, parts)``. Returns the last step's loss parts.

    A loss that is NaN or infinite, or weights that are after the last step, raise :class:`TrainingDiverged`
    with ``fix`` (what to change), so no caller keeps a model of NaN weights."""
    scaler = scaler or LossScaler()
    parts: dict[str, float] = {}
    for i in steps:
        set_lr(optimizer, base_lrs, i, warmup, total)
        optimizer.zero_grad(set_to_none=True)
        parts = step(i)
        check_finite(parts, i, total, base_lrs, fix)
        scaler.step(optimizer)
        if after is not None:
            after(i + 1, parts)
    with torch.no_grad():
        finite = all(bool(torch.isfinite(p).all()) for g in optimizer.param_groups for p in g["params"])
    if not finite:
        raise TrainingDiverged(f"the training diverged: its weights hold NaN or infinite values after step "
                             f"{steps.stop} of {total}: {fix}")
    return parts


@torch.inference_mode()
def accuracy(model: nn.Module, splits: Any, *, batch_size: int = 256, precision: Precision = CPU,
             split: str = "val") -> float:
    """Top-1 on the held-out ``split`` (``"val"``: what a search selects on; ``"test"``: what a result states),
    with hard, inference-mode pruning for a pruned model, on ``precision``'s device."""
    model.eval()
    correct = total = 0
    for x, y in splits.held_out_batches(batch_size, split):
        with precision.autocast():
            logits = model(precision.move(x))
        correct += int((logits.argmax(dim=-1).cpu() == y).sum())
        total += len(y)
    return correct / max(total, 1)
