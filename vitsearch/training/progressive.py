"""Progressive training schedules: the papers' recipes for the config a user ships (``vitsearch finalize``).

- SPViT, **layer-to-phase progressive training**: selectors are inserted in block order. Phase k trains the
  config restricted to its first k selector groups (the new selector learns while the rest of the network
  fine-tunes), until the whole config is in; cross-entropy and distillation throughout. The keep ratios are the
  chosen config's, fixed: under the default top-k draw the keep-ratio and latency terms of the loss are exactly 0
  (their gradient too); rates move under the sparsity loss only in ``search --learned`` (training/learned.py). ``merge_tol`` merges neighbouring selectors whose keep ratios differ by at
  most that much into one phase (inserted together): the paper merges similar selectors into phases, but its
  exact rule is not published (reference notes 1.4), so by default every selector gets its own phase. The
  chosen config itself is never changed: its token schedule is what was predicted and what gets measured.
- Evo-ViT, **layer-to-stage**: token selection at every block of a stage for the first ``evo_switch`` share of
  the steps, then only at the stage boundaries the config names; the assisted CLS loss throughout.

One optimiser and one warm-up + cosine learning-rate curve span all phases (selectors not yet inserted get no
gradient, so AdamW leaves them alone). Training state (weights, optimiser, RNG, step) is saved atomically at
every phase boundary and every ``checkpoint_every`` steps, so an interrupted run resumes where it stopped and
ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from ..errors import VitsearchError
from ..files import load_torch, save_torch
from ..models import load_state_dict
from ..pruning import PruneConfig, apply, method_of, prune_state
from .brief import SoftLatency, candidate_loss, param_groups
from .device import CPU, Precision
from .loop import batches, next_batch, seeded, step_log, train_steps
from .settings import SCHEDULES, FinalizeSettings, TrainSettings

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Phase:
    """Steps [start, end) train ``config``; Evo-ViT re-selects at every block of a stage while ``every_block``."""

    start: int
    end: int
    config: PruneConfig
    every_block: bool = False

    def describe(self) -> str:
        return f"{self.start}-{self.end}: {self.config}" + (" (every block)" if self.every_block else "")


# ---------------------------------------------------------------------------------------------------------------
# The schedule: a pure function of the config and the settings (tested without training).

def _boundaries(steps: int, count: int, switch: Sequence[float] | None, what: str) -> list[int]:
    """``count`` phases over ``steps``: boundaries at the ``switch`` shares, or evenly spaced."""
    if switch is None:
        shares = [i / count for i in range(1, count)]
    else:
        shares = list(switch)
        if len(shares) != count - 1:
            raise VitsearchError(f"--switch gives {len(shares)} switch point(s), but {what} has {count} phases: "
                                 f"give {count - 1} increasing shares of the steps, e.g. "
                                 f"{','.join(f'{i / count:.2g}' for i in range(1, count)) or '(none)'}")
        if any(not 0 < s < 1 for s in shares) or shares != sorted(set(shares)):
            raise VitsearchError(f"--switch shares {shares} must increase strictly within (0, 1)")
    return [0] + [round(s * steps) for s in shares] + [steps]


def plan(config: PruneConfig, settings: FinalizeSettings, steps: int) -> list[Phase]:
    """The phases that train ``config`` for ``steps`` steps with its method's schedule."""
    config = PruneConfig.parse(config)
    if settings.schedule not in SCHEDULES:
        raise VitsearchError(f"unknown schedule {settings.schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if settings.schedule == "plain":
        return [Phase(0, steps, config)]
    parts, default_switch, what = method_of(config.method).curriculum(config, settings)
    if len(parts) == 1:
        return [Phase(0, steps, *parts[0])]
    switch = settings.switch if settings.switch is not None else default_switch
    b = _boundaries(steps, len(parts), switch, what)
    phases = [Phase(b[k], b[k + 1], phase_config, every_block) for k, (phase_config, every_block) in enumerate(parts)]
    return [p for p in phases if p.end > p.start]


def describe(phases: Sequence[Phase]) -> str:
    return "; ".join(p.describe() for p in phases)


# ---------------------------------------------------------------------------------------------------------------
# Training with resumable checkpoints.

@dataclass
class TrainOutcome:
    steps: int
    seconds: float  # training time of this call plus the time recorded by the runs it resumed
    resumed_from: int  # step this call started at (0: fresh)
    final_loss: dict[str, float]


StepHook = Callable[[int, Phase], None]


def train_schedule(model: nn.Module, teacher: nn.Module, splits: Any, config: PruneConfig, phases: Sequence[Phase],
                   settings: FinalizeSettings, *, latency: SoftLatency | None, state_path: Path,
                   on_step: StepHook | None = None, progress: bool = True, precision: Precision = CPU) -> TrainOutcome:
    """Train the patched ``model`` through ``phases``, resuming from ``state_path`` (saved atomically) when it
    holds a run of the same config and settings. ``on_step(step, phase)`` is called before every step (tests
    record the schedule)."""
    from tqdm.auto import tqdm

    steps = phases[-1].end if phases else 0
    apply(model, config)  # every selector / aux head exists before the optimiser sees the parameters
    train = settings.train_settings(steps)
    optimizer = torch.optim.AdamW(param_groups(model, train), weight_decay=train.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(settings.seed)
    scaler = precision.scaler()
    # What must match for a saved state to continue this run (how often it is saved need not).
    recipe = {k: v for k, v in settings.to_dict().items() if k != "checkpoint_every"}
    identity = {"config": str(config), "settings": json.loads(json.dumps(recipe)), "steps": steps}
    start_step, seconds_before = 0, 0.0
    rng_state: torch.Tensor | None = None
    if state_path.is_file():
        saved = load_torch(state_path, "pass --restart to train this trial from the start")
        if saved.get("identity") != identity:
            raise VitsearchError(
                f"{state_path} holds an interrupted finalize with different settings: re-run with the same "
                "settings to resume it, or pass --restart to start over")
        load_state_dict(model, saved["state_dict"], source=str(state_path), name=str(config),
                        fix="It was saved by another vitsearch version: pass --restart to start over")
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        rng_state, start_step, seconds_before = saved["rng"], int(saved["step"]), float(saved["seconds"])
        logger.info("resuming the finalize of %s at step %d of %d from %s", config, start_step, steps, state_path)
    teacher.eval()
    boundaries = {p.end for p in phases}
    started = time.perf_counter()

    def save(step: int) -> None:
        save_torch({"identity": identity, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(), "rng": torch.get_rng_state(), "step": step,
                    "seconds": seconds_before + time.perf_counter() - started}, state_path)

    bar = tqdm(total=steps, initial=start_step, desc=f"finalize {config}", unit="step", disable=not progress)
    # without a bar (off a terminal), a line every few seconds: a finalize trains for minutes to hours
    log = None if progress else step_log(f"finalize {config}", steps, logger, first=start_step)
    with seeded(settings.seed):
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        data = batches(splits, settings.batch_size, settings.seed)
        for _ in range(start_step):  # the same data order as an uninterrupted run
            next(data)

        def step(i: int) -> dict[str, float]:
            phase = next(p for p in phases if p.start <= i < p.end)
            if on_step is not None:
                on_step(i, phase)
            x, y, teacher_logits = next_batch(data, splits, teacher, generator, precision)
            apply(model, phase.config, every_block=phase.every_block)
            state = prune_state(model)
            state.progress, state.train = i / max(steps - 1, 1), train
            model.train()
            with precision.autocast():
                loss, parts = candidate_loss(model, x, y, teacher_logits, settings.weights, latency)
            scaler.backward(loss)
            bar.set_postfix(phase=str(phase.config), loss=f"{parts['total']:.3f}")
            return parts

        def after(done: int, parts: dict[str, float]) -> None:
            bar.update(1)
            if log is not None:
                log(done, parts)
            if done < steps and (done in boundaries or done % settings.checkpoint_every == 0):
                prune_state(model).reset()
                save(done)

        parts = train_steps(optimizer, base_lrs, range(start_step, steps), step, warmup=train.warmup_steps,
                            total=steps, after=after, scaler=scaler)
    bar.close()
    prune_state(model).reset()  # drop graph-holding tensors of the last forward
    apply(model, config)  # inference: the whole config, stage-wise
    model.eval()
    seconds = seconds_before + time.perf_counter() - started
    return TrainOutcome(steps, seconds, start_step, parts)


