"""The latency components EViT charges (:meth:`EViT.components`) as torch modules over a patched model's own
blocks, calling the functions its forward calls (the split block's halves, :func:`.fuse.keep_and_fuse`), for the
latency profiler. A kept count k enters as the length of a ``count`` input ((k,)).

- ``evit_attn(n)``: a block's attention half with the class token's attention row recorded and ranked, every
  block in a row (``steps`` = depth).
- ``evit_fuse(n, k)``: top k of the n - P tokens after the prefix kept, the rest fused.
- ``evit_mlp(n)``: a block's MLP half, every block in a row.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ...blocks import attention_half, mlp_half
from ...state import PruneState
from .fuse import class_attention, keep_and_fuse


class EvitAttention(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state, P, scores = self.model._vitsearch, self.model.num_prefix_tokens, []
        try:
            for blk in self.model.blocks:
                state.record_cls_attn = True
                x = attention_half(blk, x)
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


class EvitMlp(nn.Module):
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
    return EvitAttention(model), lambda n, k: (torch.randn(batch, n, C, generator=gen),), (((1, "n"),),)


def _fuse(model: nn.Module, state: PruneState, batch: int, gen: torch.Generator):
    C, P = model.embed_dim, model.num_prefix_tokens
    inputs = lambda n, k: (torch.randn(batch, n, C, generator=gen), torch.rand(batch, n - P, generator=gen),  # noqa: E731
                           torch.zeros(k))
    return EvitFuse(model), inputs, (((1, "n"),), ((1, "n"),), ((0, "k"),))


def _mlp(model: nn.Module, state: PruneState, batch: int, gen: torch.Generator):
    C = model.embed_dim
    return EvitMlp(model), lambda n, k: (torch.randn(batch, n, C, generator=gen),), (((1, "n"),),)


def _block_grid(P: int, N: int, points: int) -> list[tuple[int, int]]:
    return [(n, 0) for n in _span(P + 2, P + N, points)]


def _fuse_grid(P: int, N: int, points: int) -> list[tuple[int, int]]:
    """(n, k) for k from 1 to the tokens after the prefix less one."""
    return [(n, k) for n in _span(P + 2, P + N, points) for k in sorted({1, max(1, (n - P) // 2), n - P - 1})]


def _span(lo: int, hi: int, points: int) -> list[int]:
    step = max(1, round((hi - lo) / max(points - 1, 1)))
    return sorted(set(range(lo, hi, step)) | {hi}) if hi > lo else [lo]


# The kinds in the fields of the latency model's kind declaration (name, axis, chain, selection, grid, build):
# "n" interpolates along n, "nk" bilinearly in n and k; a chain runs every block in a row.
SPECS: tuple[tuple[str, str, bool, bool, Callable[[int, int, int], list[tuple[int, int]]], Build], ...] = (
    ("evit_attn", "n", True, False, _block_grid, _attn),
    ("evit_fuse", "nk", False, True, _fuse_grid, _fuse),
    ("evit_mlp", "n", True, False, _block_grid, _mlp),
)
