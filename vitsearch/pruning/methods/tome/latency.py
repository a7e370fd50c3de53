"""The latency components ToMe charges (:meth:`ToMe.components`) as torch modules over a patched model's own
blocks, calling the functions its forward calls (the split block's halves, :func:`.merge.merge_step`), for the
latency profiler. Token counts enter as shapes; a kept count k as the length of a ``count`` input ((k,)).

- ``tome_attn(n)``: a block's attention half with proportional attention and the keys recorded, every block
  in a row (``steps`` = depth, as the profiler chains blocks).
- ``tome_merge(n, k)``: bipartite matching and the size-weighted merge of n tokens down to k.
- ``tome_mlp(n)``: a block's MLP half, every block in a row.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ...blocks import attention_half, mlp_half
from ...state import PruneState
from .merge import max_merges, merge_step


class TomeAttention(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state, keys = self.model._vitsearch, x
        try:
            for blk in self.model.blocks:
                state.key_bias, state.record_keys = size.log()[..., 0], True  # as merging_block sets them
                x = attention_half(blk, x)
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


class TomeMlp(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.model.blocks:
            x = mlp_half(blk, x)
        return x


Build = Callable[[nn.Module, PruneState, int, torch.Generator],
                 tuple[nn.Module, Callable[[int, int], tuple[torch.Tensor, ...]], tuple]]


def _attn(model: nn.Module, state: PruneState, batch: int, gen: torch.Generator):
    C = model.embed_dim
    inputs = lambda n, k: (torch.randn(batch, n, C, generator=gen), _sizes(batch, n, gen))  # noqa: E731
    return TomeAttention(model), inputs, (((1, "n"),), ((1, "n"),))


def _merge(model: nn.Module, state: PruneState, batch: int, gen: torch.Generator):
    C, hd = model.embed_dim, model.blocks[0].attn.head_dim
    inputs = lambda n, k: (torch.randn(batch, n, C, generator=gen), torch.randn(batch, n, hd, generator=gen),  # noqa: E731
                           _sizes(batch, n, gen), torch.zeros(k))
    return TomeMerge(model), inputs, (((1, "n"),), ((1, "n"),), ((1, "n"),), ((0, "k"),))


def _mlp(model: nn.Module, state: PruneState, batch: int, gen: torch.Generator):
    C = model.embed_dim
    return TomeMlp(model), lambda n, k: (torch.randn(batch, n, C, generator=gen),), (((1, "n"),),)


def _sizes(batch: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(B, n, 1) token sizes >= 1, as merged tokens carry."""
    return 1.0 + torch.randint(0, 3, (batch, n, 1), generator=gen).float()


def _block_grid(P: int, N: int, points: int) -> list[tuple[int, int]]:
    return [(n, 0) for n in _span(P + 1, P + N, points)]


def _merge_grid(P: int, N: int, points: int) -> list[tuple[int, int]]:
    """(n, k = n - r) for r from 1 to the most a block of n tokens can merge."""
    out = []
    for n in _span(P + 2, P + N, points):
        most = max_merges(n, P)
        out += [(n, n - r) for r in sorted({1, max(1, most // 2), most}) if most >= 1]
    return out


def _span(lo: int, hi: int, points: int) -> list[int]:
    step = max(1, round((hi - lo) / max(points - 1, 1)))
    return sorted(set(range(lo, hi, step)) | {hi}) if hi > lo else [lo]


# The kinds in the fields of the latency model's kind declaration (name, axis, chain, selection, grid, build):
# "n" interpolates along n, "nk" bilinearly in n and k; a chain runs every block in a row.
SPECS: tuple[tuple[str, str, bool, bool, Callable[[int, int, int], list[tuple[int, int]]], Build], ...] = (
    ("tome_attn", "n", True, False, _block_grid, _attn),
    ("tome_merge", "nk", False, True, _merge_grid, _merge),
    ("tome_mlp", "n", True, False, _block_grid, _mlp),
)
