"""The latency components Evo-ViT charges: each kind times the steps of :mod:`.algorithm` that its forward runs.

Kinds (``n``: tokens the component computes on; ``k``: patch tokens on the slow path):

- ``block_cls`` (n): a block that also records the class token's attention and turns it into the score
  (:func:`~.algorithm.scored_block`, the block in front of the first selector).
- ``evo_stage`` (n = all patches, k): entering a stage (argsort, gathers, representative token) and leaving it
  (inverse argsort, gathers, concatenation); every stage does both exactly once, except that an open last stage
  (a class-token head, which never reads its placeholders) only enters: ``evo_enter`` (n, k).
- ``evo_block`` (P + k + 1, k) / ``evo_block_cls`` (P + k + 1, k): one slow-path step (:func:`~.algorithm.slow_step`:
  concatenate, block on P + k + 1 tokens, fast update of the placeholders), without / with class-attention
  recording. ``evo_block`` is the last stage's, whose fast update the profiled model computes only if its head
  reads the placeholders.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from ...state import PruneState
from ..base import ComponentKind, Timed, span
from . import algorithm


class _ScoredBlocks(nn.Module):
    """Every block in a row as :func:`~.algorithm.scored_block`."""

    def __init__(self, model: nn.Module, state: PruneState) -> None:
        super().__init__()
        self.model, self.state = model, state

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores = []
        try:
            for blk in self.model.blocks:
                x, score = algorithm.scored_block(blk, x, self.state, self.model.num_prefix_tokens)
                scores.append(score)
        finally:
            self.state.reset()
        return (x, *scores)  # every score is an output, so none of the recording is dead code


class _Stage(nn.Module):
    """Enter a stage and leave it again (:func:`~.algorithm.enter`, :func:`~.algorithm.leave`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, score: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stage, prefix = algorithm.enter(x, score, count.shape[0], self.model.num_prefix_tokens)
        return algorithm.leave(stage, prefix)


class _Enter(nn.Module):
    """Enter an open last stage and form its slow tokens, which a class-token head never leaves."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, score: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        stage, prefix = algorithm.enter(x, score, count.shape[0], self.model.num_prefix_tokens)
        return algorithm.slow_tokens(prefix, stage)


class _SlowBlocks(nn.Module):
    """Every block in a row as slow-path steps of one stage (:func:`~.algorithm.slow_step`)."""

    def __init__(self, model: nn.Module, state: PruneState, record: bool, fast: bool = True) -> None:
        super().__init__()
        self.model, self.state, self.record, self.fast = model, state, record, fast

    def forward(self, prefix: torch.Tensor, patches: torch.Tensor, score: torch.Tensor, rep: torch.Tensor,
                count: torch.Tensor) -> tuple[torch.Tensor, ...]:
        P, k = self.model.num_prefix_tokens, count.shape[0]
        # order is read only by leave_stage, which is not part of this component.
        stage = algorithm.EvoStage(order=score, informative=patches[:, :k], placeholders=patches[:, k:],
                                   representative=rep, score=score)
        try:
            for blk in self.model.blocks:
                prefix = algorithm.slow_step(blk, stage, prefix, self.state, P, self.record, fast=self.fast)
        finally:
            self.state.reset()
        return prefix, stage.informative, stage.placeholders, stage.representative, stage.score


def _sizes(model: nn.Module) -> tuple[int, int, int]:
    """(P, N, C) of a patched ViT."""
    return model.num_prefix_tokens, model.patch_embed.num_patches, model.embed_dim


def _scored(model: nn.Module, state: PruneState, batch: int, gen: torch.Generator) -> Timed:
    C = model.embed_dim
    return Timed(_ScoredBlocks(model, state), lambda n, k: (torch.randn(batch, n, C, generator=gen),),
                 (((1, "n"),),))


def _stage_inputs(model: nn.Module, batch: int, gen: torch.Generator) -> Callable[[int, int], tuple[torch.Tensor, ...]]:
    P, N, C = _sizes(model)
    # class attention is a positive score; enter_stage clamps at 0
    return lambda n, k: (torch.randn(batch, P + N, C, generator=gen), torch.rand(batch, N, generator=gen),
                         torch.zeros(k))


def _slow(record: bool, reads_placeholders: Callable[[str], bool]) -> Callable[..., Timed]:
    def build(model: nn.Module, state: PruneState, batch: int, gen: torch.Generator) -> Timed:
        P, N, C = _sizes(model)
        fast = True if record else reads_placeholders(model.base_pool)  # only the last stage's may be skipped

        def inputs(n: int, k: int) -> tuple[torch.Tensor, ...]:  # prefix, patches, score, representative, count
            return (torch.randn(batch, P, C, generator=gen), torch.randn(batch, N, C, generator=gen),
                    torch.rand(batch, N, generator=gen), torch.randn(batch, 1, C, generator=gen), torch.zeros(k))

        return Timed(_SlowBlocks(model, state, record, fast), inputs, ((), (), (), (), ((0, "k"),)))
    return build


def _slow_grid(P: int, N: int, spec: Any) -> list[tuple[int, int]]:
    return [(P + k + 1, k) for k in span(1, N - 1, spec.block_points)]


def _stage_grid(P: int, N: int, spec: Any) -> list[tuple[int, int]]:
    return [(N, k) for k in span(1, N - 1, spec.stage_points)]


def kinds(reads_placeholders: Callable[[str], bool]) -> tuple[ComponentKind, ...]:
    """The kinds, ``reads_placeholders(pool)`` telling whether the last stage's fast update runs (the method's)."""
    stage_dynamic = ((), (), ((0, "k"),))
    return (
        ComponentKind("block_cls", "n", chain=True, selection=False, grid=lambda P, N, spec: [(P + N, 0)],
                      build=_scored),
        ComponentKind("evo_block", "k", chain=True, selection=False, grid=_slow_grid,
                      build=_slow(False, reads_placeholders)),
        ComponentKind("evo_block_cls", "k", chain=True, selection=False, grid=_slow_grid,
                      build=_slow(True, reads_placeholders)),
        ComponentKind("evo_stage", "k", chain=False, selection=True, grid=_stage_grid,
                      build=lambda model, state, batch, gen: Timed(_Stage(model), _stage_inputs(model, batch, gen),
                                                                   stage_dynamic)),
        ComponentKind("evo_enter", "k", chain=False, selection=True, grid=_stage_grid,
                      build=lambda model, state, batch, gen: Timed(_Enter(model), _stage_inputs(model, batch, gen),
                                                                   stage_dynamic)),
    )
