"""A stock timm ``Block`` that can reduce tokens between its attention and its MLP, for the methods that merge or
prune there.

:class:`SplitBlock` is installed by class swap (weights and keys unchanged). Called as the stock block it is the
stock block; called with ``reduce=fn`` it runs the same submodules in timm's order with ``fn`` in between:
``x + drop_path1(ls1(attn(norm1(x))))``, then ``fn``, then ``x + drop_path2(ls2(mlp(norm2(x))))``. The reduction
runs inside the block's own call, so an exported graph names its nodes under the block (``blocks.3.norm1``).
Called with ``half="attention"`` or ``half="mlp"`` it runs that residual half alone, as a latency table times the
halves, still inside the block's call: int8 quantizes a block's matmuls by those names
(``latency/precision.py``), so a table's half-block graphs are quantized as the whole model is.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from ..errors import VitsearchError
from .attention import TESTED_TIMM

_REQUIRED = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


def attention_half(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, N, C) -> (B, N, C): the block's attention residual."""
    return x + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x))))


def mlp_half(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, M, C) -> (B, M, C): the block's MLP residual, on however many tokens are left."""
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


class MlpChain(nn.Module):
    """Every block's MLP residual in turn, as a latency table times the part of a split block after its reduction.
    The model's blocks become :class:`SplitBlock` (:func:`split_blocks`) if they are not yet."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        split_blocks(model)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, M, C) -> (B, M, C)
        for blk in self.model.blocks:
            x = blk(x, half="mlp")
        return x


class SplitBlock(Block):
    """timm's ``Block`` with an optional token reduction between its two residual halves."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, half: str | None = None) -> torch.Tensor:
        if half is not None:  # one residual half alone (module docstring)
            return {"attention": attention_half, "mlp": mlp_half}[half](self, x)
        if reduce is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        return mlp_half(self, reduce(attention_half(self, x)))  # (B, N, C) -> (B, M, C)


def check_split_blocks(model: nn.Module, method: str) -> None:
    """Refuse a model whose blocks are not timm's standard pre-norm ``Block`` (a split would skip a part)."""
    for i, blk in enumerate(model.blocks):
        missing = [a for a in _REQUIRED if not hasattr(blk, a)]
        if type(blk) not in (Block, SplitBlock) or missing:
            raise VitsearchError(
                f"{method} reduces tokens between a block's attention and its MLP, which needs timm's standard "
                f"Block (tested with timm {TESTED_TIMM}); block {i} is {type(blk).__name__}"
                + (f" without {', '.join(missing)}" if missing else "") + ": use a standard ViT/DeiT")


def split_blocks(model: nn.Module) -> None:
    """Swap every block's class for :class:`SplitBlock` (after :func:`check_split_blocks`); called as stock
    blocks, they compute what they did."""
    for blk in model.blocks:
        blk.__class__ = SplitBlock
