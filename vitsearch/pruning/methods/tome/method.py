"""``tome``: ToMe token merging as a vitsearch method (the algorithm: :mod:`.merge`)."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from ....errors import VitsearchError
from ...blocks import check_split_blocks, split_blocks
from ...schedule import SelectorStep, TokenSchedule
from ...state import PruneState
from ..base import Component, ComponentKind, PruningMethod
from . import latency
from .merge import max_merges, merge_step


def merging_block(blk: nn.Module, x: torch.Tensor, size: torch.Tensor, r: int, num_prefix: int,
                  state: PruneState) -> tuple[torch.Tensor, torch.Tensor]:
    """One ToMe block (B, T, C) -> (B, T - r, C) (a :class:`SplitBlock`): attention on T tokens with proportional
    attention (log size (B, T, 1) added to each key's logits), r tokens merged on the keys' mean over heads, the
    MLP on T - r. Returns the tokens and their sizes (B, T - r, 1)."""
    merged = size

    def merge(x: torch.Tensor) -> torch.Tensor:
        nonlocal merged
        state.key_bias, state.record_keys = None, False
        if r:
            x, merged = merge_step(x, state.keys, size, r, num_prefix)
        state.keys = None
        return x

    state.key_bias, state.record_keys = size.log()[..., 0], True
    try:
        x = blk(x, reduce=merge)
    finally:
        state.key_bias, state.record_keys, state.keys = None, False, None
    return x, merged


class ToMe(PruningMethod):
    """A block's setting is r, the tokens it merges (a whole number): ``tome:r=8`` merges 8 in every block
    (ToMe's constant schedule), ``tome:3=8,6=13`` only in the given blocks. Merging happens inside the block,
    between its attention and its MLP (as the official code), so ``schedule.block_tokens[i]`` (the tokens block
    i's attention sees) is T_i and its MLP sees T_i - r_i = T_{i+1}; a :class:`SelectorStep` holds the patch-side
    tokens before and after (n_in - n_keep = r). The prefix (class) token is never merged. An r larger than the
    block can merge (all of its A set, about half the non-prefix tokens) is refused, not clamped as the official
    code silently does.

    Training-free: nothing is added (``new_parameters = ()``); a training forward merges the same way and passes
    gradients through the merge (the matching itself is a discrete choice, as in the official code), so any
    training path fine-tunes a tome config. Latency: ``block(n)`` up to the first merging block, then per block
    ``tome_attn(n)`` (proportional attention), ``tome_merge(n, k)`` (k = n - r, where r > 0) and ``tome_mlp(k)``."""

    name = "tome"
    training_free = True
    setting = "count"

    def check_setting(self, block: int, value: float) -> None:
        if value < 0 or value != int(value):
            raise VitsearchError(f"ToMe's r for block {block} is {value:g}: give the whole number of tokens the "
                                 "block merges, e.g. 'tome:3=8' (or 'tome:r=8' for every block)")

    def check_every(self, value: float) -> None:
        if value < 0 or value != int(value):
            raise VitsearchError(f"ToMe's r={value:g} is not a whole number of tokens: give e.g. 'tome:r=8'")

    def schedule(self, keep: Mapping[int, float], *, depth: int, num_patches: int, num_prefix: int,
                 pool: str = "token") -> TokenSchedule:
        P, n = num_prefix, num_prefix + num_patches
        counts, steps = [], []
        for block in range(depth):
            r = int(keep.get(block, 0))
            if r > max_merges(n, P):
                raise VitsearchError(
                    f"ToMe's r={r} at block {block} merges more tokens than the block can: it holds {n} tokens, "
                    f"of which at most {max_merges(n, P)} can merge (about half of those after the class token); give "
                    "a smaller r there (with r= for every block, the r that fits the last one)")
            counts.append(n)
            if r:
                steps.append(SelectorStep(block, n - P, n - P - r))
                n -= r
        mlp = (*counts[1:], n) if counts else ()
        return TokenSchedule(self.name, P, num_patches, tuple(counts), tuple(steps), n, mlp)

    def check_model(self, model: nn.Module) -> None:
        check_split_blocks(model, self.name)

    def patch(self, model: nn.Module, schedule: TokenSchedule) -> None:
        split_blocks(model)

    def forward_blocks(self, model: nn.Module, x: torch.Tensor, state: PruneState) -> torch.Tensor:
        P = model.num_prefix_tokens
        merges = {s.block: s.n_in - s.n_keep for s in model.token_schedule.selectors}
        first = min(merges, default=len(model.blocks))
        size: torch.Tensor | None = None  # (B, T, 1) patches each token stands for, from the first merge on
        for i, blk in enumerate(model.blocks):
            state.block_tokens.append(x.shape[1])
            if i < first:
                x = blk(x)  # nothing merged yet: every size is 1, no proportional attention needed
                continue
            if size is None:
                size = x.new_ones(x.shape[0], x.shape[1], 1)
            x, size = merging_block(blk, x, size, merges.get(i, 0), P, state)
        return x

    def kinds(self) -> tuple[ComponentKind, ...]:
        return latency.KINDS

    def components(self, schedule: TokenSchedule) -> list[Component]:
        merges = {s.block: s.n_in - s.n_keep for s in schedule.selectors}
        first = min(merges, default=schedule.depth)
        out: list[Component] = []
        for i, n in enumerate(schedule.block_tokens):
            if i < first:
                out.append(("block", n, 0))
                continue
            out.append(("tome_attn", n, 0))
            k = n - merges.get(i, 0)
            if k < n:
                out.append(("tome_merge", n, k))
            out.append(("tome_mlp", k, 0))
        return out
