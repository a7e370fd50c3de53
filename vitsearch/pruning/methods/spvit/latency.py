"""The latency component SPViT charges, timing the step of :mod:`.algorithm` its inference forward runs.

- ``spvit_select`` (n = patches ranked, k = kept): one selector as inference runs it (:func:`~.algorithm.select`:
  selector MLP, top-k, gather, package token, concatenation), in front of one earlier package token. Predicted
  bilinearly in (n, k relative to n).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ...state import PruneState
from ..base import ComponentKind, Timed, span
from . import algorithm


class _Select(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.num_prefix = model.num_prefix_tokens
        self.selector = algorithm.MultiHeadTokenSelector(model.embed_dim, model.blocks[0].attn.num_heads)

    def forward(self, x: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        n = x.shape[1] - self.num_prefix - 1  # x: (B, P + n + 1, C)
        return algorithm.select(self.selector, x, self.num_prefix, n, count.shape[0])


def _build(model: nn.Module, state: PruneState, batch: int, gen: torch.Generator) -> Timed:
    P, C = model.num_prefix_tokens, model.embed_dim
    return Timed(_Select(model), lambda n, k: (torch.randn(batch, P + n + 1, C, generator=gen), torch.zeros(k)),
                 (((1, "n"),), ((0, "k"),)))


def _grid(P: int, N: int, spec: Any) -> list[tuple[int, int]]:
    """n (patches ranked) in [2, N], k in [1, n - 1]: every count a config can produce."""
    return [(n, k) for n in span(2, N, spec.select_rows) for k in span(1, n - 1, spec.select_cols)]


KINDS = (ComponentKind("spvit_select", "nk", chain=False, selection=True, grid=_grid, build=_build),)
