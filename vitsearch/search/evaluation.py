"""Evaluating candidates: predicted latency, and within budget brief training (or the shared supernet), accuracy on
val (what the search decides by) and on test (what it states), and GMACs."""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from typing import Any, Callable

import torch
import torch.nn as nn

from ..files import load_torch
from ..flops import gmacs
from ..models import load_state_dict
from ..studyfolder import TRAINING_FREE
from ..pruning import PruneConfig, method_of, token_schedule
from ..training import (PiecewiseLinear, SoftLatency, TrainingDiverged, accuracy, fresh_model, train_candidate,
                        train_supernet)
from .settings import Candidate, SearchSettings
from .setup import Setup
from .space import SearchSpace

logger = logging.getLogger(__name__)


def candidate_steps(settings: SearchSettings) -> int:
    """Training steps of one candidate (or baseline): brief training, or the fine-tuning after the supernet."""
    return settings.train.steps if settings.strategy == "brief" else settings.shared_finetune_steps


def training_seconds(per_config_step: float, settings: SearchSettings, baselines: int) -> tuple[float, float]:
    """(one candidate's, the whole search's) training seconds from one config's step cost: every candidate and
    baseline (the unpruned one included) trains as a candidate, and a supernet step trains three configs."""
    candidate = per_config_step * candidate_steps(settings)
    supernet = 3 * settings.shared_steps * per_config_step if settings.strategy == "shared" else 0.0
    return candidate, (settings.trials + baselines) * candidate + supernet


def held_out_accuracies(model: nn.Module, setup: Setup) -> tuple[float, float]:
    """(val, test) accuracy of a trained candidate: val is what the search decides by, test what it states."""
    return (accuracy(model, setup.splits, precision=setup.precision),
            accuracy(model, setup.splits, precision=setup.precision, split="test"))


class Evaluator:
    """Turns a config into a Candidate: predicted latency, and if within budget brief training, val and test
    accuracy, GMACs."""

    def __init__(self, setup: Setup, settings: SearchSettings) -> None:
        self.setup, self.settings = setup, settings
        self.latency = SoftLatency(PiecewiseLinear(*setup.predictor.block_curve()))
        self.supernet: nn.Module | None = None
        self.estimated = False  # the search's cost is logged once, from the first training's first steps

    def predict(self, config: PruneConfig) -> Any:
        return self.setup.predictor.predict(config)

    def start_from(self) -> nn.Module:
        """The weights a candidate starts from: the base model, or the trained supernet (shared strategy)."""
        if self.settings.strategy == "shared":
            return self._shared()
        return self.setup.base

    def evaluate(self, config: PruneConfig, kind: str, *, trial: int | None = None) -> Candidate:
        """``trial``: a search trial, whose model is checkpointed (baselines are not)."""
        s, setup = self.settings, self.setup
        pred = self.predict(config)
        cand = Candidate(config, kind, pred.total_ms, trial=trial, selection_ms=pred.selection_ms,
                         block_tokens=token_schedule(config, depth=len(setup.base.blocks),
                                                     num_patches=setup.base.patch_embed.num_patches,
                                                     num_prefix=setup.base.num_prefix_tokens).block_tokens)
        # The unpruned baseline starts from the base model whatever the strategy, and is trained as briefly as
        # the candidates, so "vs unpruned" compares like with like. A training-free method's candidate is the
        # base model with the method applied, scored as it is.
        free = config.prunes and method_of(config.method).training_free
        model = fresh_model(self.start_from() if config.prunes and not free else setup.base, config, s.train.seed)
        steps = 0 if free else candidate_steps(s)
        if free:
            cand.status = TRAINING_FREE
        elif steps > 0:
            try:
                result = train_candidate(model, setup.base, setup.splits, dataclasses.replace(s.train, steps=steps),
                                         latency=self.latency, precision=setup.precision, after=self._cost_log(steps))
            except TrainingDiverged as e:
                raise TrainingDiverged(f"{e}, under a new --study name (a study keeps the training settings it was "
                                       "made with)") from None
            cand.train_seconds = result.seconds
        elif not (s.strategy == "shared" and config.prunes):
            # Only the shared strategy's candidates are trained with 0 steps of their own (in the supernet); a
            # library caller's brief search of 0 steps measures the untrained config, and says so.
            cand.status = "not trained (0 steps): accuracy of the untrained config"
        logger.info("%s %s: evaluating on val and test (%d + %d images)",
                    kind if trial is None else f"trial {trial}", config, len(setup.splits.val), len(setup.splits.test))
        cand.val_accuracy, cand.accuracy = held_out_accuracies(model, setup)
        cand.gmacs = gmacs(model)
        if trial is not None:
            path = setup.folder.checkpoint(trial)
            setup.folder.save_checkpoint(model, config, path)
            cand.checkpoint = setup.folder.relative(path)
        return cand

    def _cost_log(self, steps: int, *, configs_per_step: int = 1) -> Callable[[int, dict[str, float]], None] | None:
        """A step hook for the first training of this worker: after its first steps, the cost of one candidate
        and of the whole search on the training device, logged before any result."""
        if self.estimated:
            return None
        self.estimated, s, stamps = True, self.settings, [time.perf_counter()]
        timed = min(4, steps)

        def after(done: int, parts: dict[str, float]) -> None:
            if done > timed:
                return
            stamps.append(time.perf_counter())
            if done < timed:
                return
            # The first step pays one-off costs (allocation, the first batches): timed apart when there are more.
            first = 1 if done > 1 else 0
            per_config_step = (stamps[-1] - stamps[first]) / (done - first) / configs_per_step
            baselines = len(self.setup.space.baseline_configs(s.baselines))
            candidate, total = training_seconds(per_config_step, s, baselines)
            logger.info("cost on %s (%s): %.2f s per training step of one config, so one candidate trains in about "
                        "%.0f s (%d steps) plus its held-out evaluation; this search (%d candidates, %d baselines%s) "
                        "about %.1f min of training on one worker", self.setup.precision.device,
                        self.setup.precision.name, per_config_step, candidate, candidate_steps(s), s.trials,
                        baselines, f", a supernet of {s.shared_steps} steps" if s.strategy == "shared" else "",
                        total / 60)

        return after

    def _shared(self) -> nn.Module:
        if self.supernet is not None:
            return self.supernet
        s, setup, space = self.settings, self.setup, self.setup.space
        path = setup.folder.supernet
        everywhere = [PruneConfig(m, {b: space.keep_max for b in space.blocks}) for m in space.trained_methods]
        model = setup.base
        for config in everywhere:  # every selector and head the space can use, seeded like a brief candidate's
            model = fresh_model(model, config, s.train.seed)
        if path.exists():
            retrain = f"delete {path} to train the supernet again"
            load_state_dict(model, load_torch(path, retrain)["state_dict"], source=str(path), name="the supernet",
                            fix=f"It was trained by another vitsearch version: {retrain}")
            logger.info("supernet from %s", path)
        else:
            rng_space = SupernetSampler(space)
            logger.info("training the shared supernet for %d steps", s.shared_steps)
            result = train_supernet(model, setup.base, setup.splits, rng_space.step_configs, everywhere,
                                    dataclasses.replace(s.train, steps=s.shared_steps), latency=self.latency,
                                    precision=setup.precision, after=self._cost_log(s.shared_steps, configs_per_step=3))
            setup.folder.save_supernet(model, PruneConfig(space.trained_methods[0], {b: space.keep_max for b in space.blocks}),
                                       {"train_seconds": result.seconds, "steps": s.shared_steps})
        self.supernet = model
        return model


class SupernetSampler:
    """Configs for supernet steps: the largest and the smallest of one method (alternating), plus a random one."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def step_configs(self, step: int, rng: random.Random) -> list[PruneConfig]:
        sp = self.space
        methods = sp.trained_methods
        method = methods[step % len(methods)]
        largest = PruneConfig(method, {sp.blocks[-1]: sp.keep_max})
        smallest = PruneConfig(method, {b: sp.keep_min for b in sp.blocks[:sp.max_selectors]})
        n = rng.randint(1, sp.max_selectors)
        blocks = sorted(rng.sample(sp.blocks, min(n, len(sp.blocks))))
        random_config = PruneConfig(rng.choice(methods), {b: rng.choice(sp.keep_choices) for b in blocks})
        return [largest, smallest, random_config]
