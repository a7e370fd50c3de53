"""``none``: the identity. The dense model, through the same patched code path (the baseline every method is
compared with)."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from ....errors import VitsearchError
from ...schedule import TokenSchedule
from ...state import PruneState, run_block
from ..base import Component, PruningMethod


class NoPruning(PruningMethod):
    """Keep ratios: none allowed. Every block computes on all P + N tokens; no loss terms; latency: the blocks."""

    name = "none"
    prunes = False

    def check_keep(self, keep: Mapping[int, float]) -> None:
        if keep:
            raise VitsearchError("method 'none' takes no selectors: choose a method that prunes")

    def schedule(self, keep: Mapping[int, float], *, depth: int, num_patches: int, num_prefix: int,
                 pool: str = "token") -> TokenSchedule:
        n = num_prefix + num_patches
        return TokenSchedule(self.name, num_prefix, num_patches, (n,) * depth, (), n)

    def forward_blocks(self, model: nn.Module, x: torch.Tensor, state: PruneState) -> torch.Tensor:
        for blk in model.blocks:
            x = run_block(blk, x, state)
        return x

    def components(self, schedule: TokenSchedule) -> list[Component]:
        return [("block", n, 0) for n in schedule.block_tokens]
