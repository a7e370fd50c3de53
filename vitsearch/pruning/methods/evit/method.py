"""``evit``: EViT's inattentive-token fusion as a vitsearch method (the algorithm: :mod:`.fuse`)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import torch
import torch.nn as nn

from ...blocks import check_split_blocks, split_blocks
from ...schedule import SelectorStep, TokenSchedule
from ...state import PruneState
from ..base import Component, ComponentKind, PruningMethod, refuse
from . import latency
from .fuse import class_attention, keep_and_fuse, kept_count

# The keep-rate warm-up of EViT's training recipe (its main.py, 300 epochs): keep rate 1 for the first 10 epochs
# (--shrink_start_epoch), then a cosine from 1 down to the config's rate over 100 epochs (--shrink_epochs), then
# the config's rate. Finalize trains in phases of fixed configs, so the cosine is WARMUP_LEVELS steps, each at
# the cosine's value in the middle of its share.
WARMUP_START, WARMUP_END = 10 / 300, 110 / 300
WARMUP_LEVELS = 4


def warmup_rate(base: float, t: float) -> float:
    """The official ``adjust_keep_rate`` at share t of the warm-up's cosine: 1 at t = 0, ``base`` at t = 1."""
    return base + (1.0 - base) * (math.cos(t * math.pi) + 1) * 0.5


def pruning_block(blk: nn.Module, x: torch.Tensor, k: int, num_prefix: int, state: PruneState) -> torch.Tensor:
    """One EViT pruning block (B, T, C) -> (B, P + k + 1, C) (a :class:`SplitBlock`): attention on T tokens (the
    class token's row recorded), the top k kept and the rest fused, the MLP on P + k + 1."""

    def fuse(x: torch.Tensor) -> torch.Tensor:
        state.record_cls_attn = False
        x = keep_and_fuse(x, class_attention(state.cls_attn, num_prefix), k, num_prefix)
        state.cls_attn = None
        return x

    state.record_cls_attn = True
    try:
        return blk(x, reduce=fuse)
    finally:
        state.record_cls_attn, state.cls_attn = False, None


class EViT(PruningMethod):
    """A keep rate compounds over the tokens after the class token, the earlier fused tokens included (the
    official code ranks ``x[:, 1:]``): a pruning block keeps ``ceil(rate * (T - 1))`` of them and adds one fused
    token, so 0.7 at blocks 3, 6, 9 of DeiT-S (197 tokens) gives 140, 100, 72. Pruning happens inside the block,
    between its attention and its MLP: ``schedule.block_tokens[i]`` is what block i's attention sees, its MLP
    sees the next block's count; a :class:`SelectorStep` holds the tokens after the prefix before and kept.

    Nothing is added to train: the ranking is the class token's own attention. Finalize trains through the
    keep-rate warm-up of the official recipe (:meth:`curriculum`). Latency: ``block(n)`` for the blocks that do
    not prune; for one that does, ``evit_attn(n)`` (attention with the class row), ``evit_fuse(n, k)`` and
    ``evit_mlp(P + k + 1)``."""

    name = "evit"

    def schedule(self, keep: Mapping[int, float], *, depth: int, num_patches: int, num_prefix: int,
                 pool: str = "token") -> TokenSchedule:
        if num_prefix < 1:
            raise refuse(self.name, "it ranks tokens by class-token attention, but this model has no class token",
                         "use tome or spvit, or a model with a class token")
        rest, counts, steps = num_patches, [], []
        for block in range(depth):
            counts.append(num_prefix + rest)
            if block in keep:
                k = kept_count(rest, keep[block])
                if k < rest:  # the official code returns before pruning when it would keep every token
                    steps.append(SelectorStep(block, rest, k))
                    rest = k + 1
        mlp = (*counts[1:], num_prefix + rest) if counts else ()
        return TokenSchedule(self.name, num_prefix, num_patches, tuple(counts), tuple(steps), num_prefix + rest,
                             mlp)

    def check_model(self, model: nn.Module) -> None:
        if getattr(model, "cls_token", None) is None:
            raise refuse(self.name, "it ranks tokens by class-token attention, but this model has no class token",
                         "use tome or spvit, or a model with a class token")
        check_split_blocks(model, self.name)

    def patch(self, model: nn.Module, schedule: TokenSchedule) -> None:
        split_blocks(model)

    def forward_blocks(self, model: nn.Module, x: torch.Tensor, state: PruneState) -> torch.Tensor:
        P, steps = model.num_prefix_tokens, {s.block: s.n_keep for s in model.token_schedule.selectors}
        for i, blk in enumerate(model.blocks):
            state.block_tokens.append(x.shape[1])
            x = pruning_block(blk, x, steps[i], P, state) if i in steps else blk(x)
        return x

    def curriculum(self, config: Any, settings: Any) -> tuple[list[tuple[Any, bool]], tuple[float, ...] | None, str]:
        """The official keep-rate warm-up: keep everything, then the cosine down to the config's rates in
        :data:`WARMUP_LEVELS` steps, then the config."""
        levels = [(j + 0.5) / WARMUP_LEVELS for j in range(WARMUP_LEVELS)]
        phases = [(dataclasses.replace(config, keep={b: 1.0 for b in config.keep}), False)]
        phases += [(dataclasses.replace(config, keep={b: round(warmup_rate(r, t), 3) for b, r in config.keep.items()}),
                    False) for t in levels]
        phases.append((config, False))
        span = WARMUP_END - WARMUP_START
        shares = (WARMUP_START, *(WARMUP_START + span * (j + 1) / WARMUP_LEVELS for j in range(WARMUP_LEVELS)))
        return phases, shares, f"the EViT keep-rate warm-up to {config}"

    def kinds(self) -> tuple[ComponentKind, ...]:
        return latency.KINDS

    def components(self, schedule: TokenSchedule) -> list[Component]:
        P, steps = schedule.num_prefix, {s.block: s for s in schedule.selectors}
        out: list[Component] = []
        for i, n in enumerate(schedule.block_tokens):
            if i in steps:
                k = steps[i].n_keep
                out += [("evit_attn", n, 0), ("evit_fuse", n, k), ("evit_mlp", P + k + 1, 0)]
            else:
                out.append(("block", n, 0))
        return out
