"""The per-forward state a patched model shares with its patched attention modules (ToMe's ``_tome_info``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .spvit import TRAIN_DRAWS


@dataclass
class PruneState:
    # Set by the model before a block runs, read by its attention.
    policy: torch.Tensor | None = None  # (B, N) 1 = token may be attended to; SPViT training masks keys with it
    record_cls_attn: bool = False  # Evo-ViT needs the class token's attention row of every block
    # Set by the training loop before a step (kept across forwards): the share of the training done, in [0, 1],
    # and SPViT's training draw rule (a name in pruning.spvit.TRAIN_DRAWS; TrainSettings.spvit_draw).
    progress: float = 0.0
    spvit_draw: str = TRAIN_DRAWS[0]
    # The learned strategy's keep rates (0-d tensors with gradients) by selector block: SPViT's training draws
    # keep that share and pass its gradient back (vitsearch.training.learned); None: the config's ratios.
    rates: dict[int, torch.Tensor] | None = None
    # Written by attention / the model during a forward, read by losses and tests.
    cls_attn: torch.Tensor | None = None  # (B, H, N) the class token's attention over all tokens
    keep_decisions: list[torch.Tensor] = field(default_factory=list)  # per selector (B, N_patches) 0/1, straight-through
    keep_targets: list[float] = field(default_factory=list)  # per selector: target fraction of all patches kept
    pool_mask: torch.Tensor | None = None  # (B, N) the last block's policy: the head pools over these tokens
    aux_logits: torch.Tensor | None = None  # Evo-ViT assisted head output while training
    block_tokens: list[int] = field(default_factory=list)  # tokens each block computed on (shape check)

    def reset(self) -> None:
        self.policy, self.cls_attn, self.aux_logits, self.pool_mask = None, None, None, None
        self.record_cls_attn = False
        self.keep_decisions, self.keep_targets, self.block_tokens = [], [], []


def run_block(blk: nn.Module, x: torch.Tensor, state: PruneState, record: bool = False) -> torch.Tensor:
    """One stock block on (B, T, C) tokens as every method's forward runs it, and the latency model times it:
    T counted in ``state.block_tokens``, the class token's attention row recorded in ``state.cls_attn`` where
    ``record``."""
    state.block_tokens.append(x.shape[1])
    state.record_cls_attn = record
    return blk(x)
