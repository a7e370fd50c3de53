"""Evaluating candidates: predicted latency, and within budget brief training (or the shared supernet), accuracy
and GMACs."""
from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any

import torch
import torch.nn as nn

from ..flops import gmacs
from ..pruning import PruneConfig, token_schedule
from ..training import PiecewiseLinear, SoftLatency, accuracy, fresh_model, train_candidate, train_supernet
from .settings import Candidate, SearchSettings
from .setup import Setup
from .space import SearchSpace

logger = logging.getLogger(__name__)


class Evaluator:
    """Turns a config into a Candidate: predicted latency, and if within budget brief training, accuracy, GMACs."""

    def __init__(self, setup: Setup, settings: SearchSettings) -> None:
        self.setup, self.settings = setup, settings
        self.latency = SoftLatency(PiecewiseLinear(*setup.predictor.block_curve()))
        self.supernet: nn.Module | None = None

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
        # The unpruned baseline is the base model itself, whatever the strategy.
        model = fresh_model(self.start_from() if config.keep else setup.base, config, s.train.seed)
        steps = s.train.steps if s.strategy == "brief" else s.shared_finetune_steps
        if config.keep and steps > 0:
            result = train_candidate(model, setup.base, setup.splits, dataclasses.replace(s.train, steps=steps),
                                     latency=self.latency)
            cand.train_seconds = result.seconds
        cand.accuracy = accuracy(model, setup.splits)
        cand.gmacs = gmacs(model)
        if trial is not None:
            path = setup.folder.checkpoint(trial)
            setup.folder.save_checkpoint(model, config, path)
            cand.checkpoint = setup.folder.relative(path)
        return cand

    def _shared(self) -> nn.Module:
        if self.supernet is not None:
            return self.supernet
        s, setup, space = self.settings, self.setup, self.setup.space
        path = setup.folder.supernet
        everywhere = [PruneConfig(m, {b: space.keep_max for b in space.blocks}) for m in space.methods]
        model = setup.base
        for config in everywhere:  # every selector and head the space can use, seeded like a brief candidate's
            model = fresh_model(model, config, s.train.seed)
        if path.exists():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
            logger.info("supernet from %s", path)
        else:
            rng_space = SupernetSampler(space)
            logger.info("training the shared supernet for %d steps", s.shared_steps)
            result = train_supernet(model, setup.base, setup.splits, rng_space.step_configs, everywhere,
                                    dataclasses.replace(s.train, steps=s.shared_steps), latency=self.latency)
            setup.folder.save_supernet(model, PruneConfig(space.methods[0], {b: space.keep_max for b in space.blocks}),
                                       {"train_seconds": result.seconds, "steps": s.shared_steps})
        self.supernet = model
        return model


class SupernetSampler:
    """Configs for supernet steps: the largest and the smallest of one method (alternating), plus a random one."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def step_configs(self, step: int, rng: random.Random) -> list[PruneConfig]:
        sp = self.space
        method = sp.methods[step % len(sp.methods)]
        largest = PruneConfig(method, {sp.blocks[-1]: sp.keep_max})
        smallest = PruneConfig(method, {b: sp.keep_min for b in sp.blocks[:sp.max_selectors]})
        n = rng.randint(1, sp.max_selectors)
        blocks = sorted(rng.sample(sp.blocks, min(n, len(sp.blocks))))
        random_config = PruneConfig(rng.choice(sp.methods), {b: rng.choice(sp.keep_choices) for b in blocks})
        return [largest, smallest, random_config]
