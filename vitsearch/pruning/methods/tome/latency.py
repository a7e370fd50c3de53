"""The latency components ToMe charges (:meth:`ToMe.components`) as torch modules over a patched model's own
blocks, calling the functions its forward calls (the split block's halves, :func:`.merge.merge_step`), for the
latency profiler. Token counts enter as shapes; a kept count k as the length of a ``count`` input ((k,)).

- ``tome_attn(n)``: a block's attention half with proportional attention and the keys recorded, every block
  in a row (``steps`` = depth, as the profiler chains blocks).
- ``tome_merge(n, k)``: bipartite matching and the size-weighted merge of n tokens down to k.
- ``tome_mlp(n)``: a block's MLP half, every block in a row.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ...blocks import MlpChain, split_blocks
from ...state import PruneState
from ..base import ComponentKind, Timed, span
from .merge import max_merges, merge_step


class TomeAttention(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        split_blocks(model)  # each half runs inside its block's call (pruning/blocks.py)
        self.model = model

    def forward(self, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state, keys = self.model._vitsearch, x
        try:
            for blk in self.model.blocks:
                state.key_bias, state.record_keys = size.log()[..., 0], True  # as merging_block sets them
                x = blk(x, half="attention")
                keys = state.keys
        finally:
            state.key_bias, state.record_keys, state.keys = None, False, None
        return x, keys  # the keys are an output, so their recording is not dead code


class TomeMerge(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, keys: torch.Tensor, size: torch.Tensor,
                count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return merge_step(x, keys, size, x.shape[1] - count.shape[0], self.model.num_prefix_tokens)


def _attn(model: nn.Module, state: PruneState, batch: int, gen: torch.Generator) -> Timed:
    C = model.embed_dim
    inputs = lambda n, k: (torch.randn(batch, n, C, generator=gen), _sizes(batch, n, gen))  # noqa: E731
    return Timed(TomeAttention(model), inputs, (((1, "n"),), ((1, "n"),)))


def _merge(model: nn.Module, state: PruneState, batch: int, gen: torch.Generator) -> Timed:
    C, hd = model.embed_dim, model.blocks[0].attn.head_dim
    inputs = lambda n, k: (torch.randn(batch, n, C, generator=gen), torch.randn(batch, n, hd, generator=gen),  # noqa: E731
                           _sizes(batch, n, gen), torch.zeros(k))
    return Timed(TomeMerge(model), inputs, (((1, "n"),), ((1, "n"),), ((1, "n"),), ((0, "k"),)))


def _mlp(model: nn.Module, state: PruneState, batch: int, gen: torch.Generator) -> Timed:
    C = model.embed_dim
    return Timed(MlpChain(model), lambda n, k: (torch.randn(batch, n, C, generator=gen),), (((1, "n"),),))


def _sizes(batch: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(B, n, 1) token sizes >= 1, as merged tokens carry."""
    return 1.0 + torch.randint(0, 3, (batch, n, 1), generator=gen).float()


def _block_grid(P: int, N: int, spec: Any) -> list[tuple[int, int]]:
    return [(n, 0) for n in span(P + 1, P + N, spec.block_points)]


def _merge_grid(P: int, N: int, spec: Any) -> list[tuple[int, int]]:
    """(n, k = n - r) for r from 1 to the most a block of n tokens can merge (:func:`.merge.max_merges`)."""
    return [(n, n - r) for n in span(P + 2, P + N, spec.select_rows)
            for r in span(1, max_merges(n, P), spec.select_cols) if max_merges(n, P) >= 1]


KINDS = (
    ComponentKind("tome_attn", "n", chain=True, selection=False, grid=_block_grid, build=_attn),
    ComponentKind("tome_merge", "nk", chain=False, selection=True, grid=_merge_grid, build=_merge),
    ComponentKind("tome_mlp", "n", chain=True, selection=False, grid=_block_grid, build=_mlp),
)
