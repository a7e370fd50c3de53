"""The per-forward state a patched model shares with its patched attention modules (one object, set at patch time).

Only what every method and the shared modules read is here; what one method records for its own loss is that
method's record, in :attr:`PruneState.method`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn


@dataclass
class PruneState:
    # Set by the model before a block runs, read by its attention.
    policy: torch.Tensor | None = None  # (B, N) 1 = token may be attended to: a training forward masks keys with it
    record_cls_attn: bool = False  # a method that ranks tokens by the class token's attention asks for its row
    # Set by the training loop before a step (kept across forwards): the share of the training done, in [0, 1],
    # and the running training's settings (training.TrainSettings; None: not training, a method's defaults), where
    # a method reads its own training options.
    progress: float = 0.0
    train: Any = None
    # Learned keep rates (0-d tensors with gradients) by selector block: a method that learns its rates keeps that
    # share in training and passes its gradient back (vitsearch.training.learned); None: the config's ratios.
    rates: dict[int, torch.Tensor] | None = None
    # Written by attention / the model during a forward, read by losses and tests.
    cls_attn: torch.Tensor | None = None  # (B, H, N) the class token's attention over all tokens
    pool_mask: torch.Tensor | None = None  # (B, N) the last block's policy: the head pools over these tokens
    block_tokens: list[int] = field(default_factory=list)  # tokens each block computed on (shape check)
    # The method's own record of the forward (a class of the method's, set by its forward_blocks), read by its
    # loss: e.g. keep decisions, auxiliary logits.
    method: Any = None

    def reset(self) -> None:
        self.policy, self.cls_attn, self.pool_mask, self.method = None, None, None, None
        self.record_cls_attn = False
        self.block_tokens = []


def run_block(blk: nn.Module, x: torch.Tensor, state: PruneState, record: bool = False) -> torch.Tensor:
    """One stock block on (B, T, C) tokens as every method's forward runs it, and the latency model times it:
    T counted in ``state.block_tokens``, the class token's attention row recorded in ``state.cls_attn`` where
    ``record``."""
    state.block_tokens.append(x.shape[1])
    state.record_cls_attn = record
    return blk(x)
