"""The latency components EViT charges (:meth:`EViT.components`) as torch modules over a patched model's own
blocks, calling the functions its forward calls (the split block's halves, :func:`.fuse.keep_and_fuse`), for the
latency profiler. A kept count k enters as the length of a ``count`` input ((k,)).

- ``evit_attn(n)``: a block's attention half with the class token's attention row recorded and ranked, every
  block in a row (``steps`` = depth).
- ``evit_fuse(n, k)``: top k of the n - P tokens after the prefix kept, the rest fused.
- ``evit_mlp(n)``: a block's MLP half, every block in a row.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ...blocks import MlpChain, split_blocks
from ...state import PruneState
from ..base import ComponentKind, Timed, span
from .fuse import class_attention, keep_and_fuse


class EvitAttention(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        split_blocks(model)  # each half runs inside its block's call (pruning/blocks.py)
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state, P, scores = self.model._vitsearch, self.model.num_prefix_tokens, []
        try:
            for blk in self.model.blocks:
                state.record_cls_attn = True
                x = blk(x, half="attention")
                scores.append(class_attention(state.cls_attn, P))
        finally:
            state.record_cls_attn, state.cls_attn = False, None
        return (x, *scores)  # every score is an output, so none of the recording is dead code


class EvitFuse(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, attn: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return keep_and_fuse(x, attn, count.shape[0], self.model.num_prefix_tokens)


def _attn(model: nn.Module, state: PruneState, batch: int, gen: torch.Generator) -> Timed:
    C = model.embed_dim
    return Timed(EvitAttention(model), lambda n, k: (torch.randn(batch, n, C, generator=gen),), (((1, "n"),),))


def _fuse(model: nn.Module, state: PruneState, batch: int, gen: torch.Generator) -> Timed:
    C, P = model.embed_dim, model.num_prefix_tokens
    inputs = lambda n, k: (torch.randn(batch, n, C, generator=gen), torch.rand(batch, n - P, generator=gen),  # noqa: E731
                           torch.zeros(k))
    return Timed(EvitFuse(model), inputs, (((1, "n"),), ((1, "n"),), ((0, "k"),)))


def _mlp(model: nn.Module, state: PruneState, batch: int, gen: torch.Generator) -> Timed:
    C = model.embed_dim
    return Timed(MlpChain(model), lambda n, k: (torch.randn(batch, n, C, generator=gen),), (((1, "n"),),))


def _block_grid(P: int, N: int, spec: Any) -> list[tuple[int, int]]:
    return [(n, 0) for n in span(P + 2, P + N, spec.block_points)]


def _fuse_grid(P: int, N: int, spec: Any) -> list[tuple[int, int]]:
    """(n, k) for k from 1 to the tokens after the prefix less one."""
    return [(n, k) for n in span(P + 2, P + N, spec.select_rows) for k in span(1, n - P - 1, spec.select_cols)]


KINDS = (
    ComponentKind("evit_attn", "n", chain=True, selection=False, grid=_block_grid, build=_attn),
    ComponentKind("evit_fuse", "nk", chain=False, selection=True, grid=_fuse_grid, build=_fuse),
    ComponentKind("evit_mlp", "n", chain=True, selection=False, grid=_block_grid, build=_mlp),
)
