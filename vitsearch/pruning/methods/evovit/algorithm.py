"""Evo-ViT slow-fast token evolution (Xu et al., AAAI 2022).

A global class-attention score g is carried across blocks. At a selector, patch tokens are ranked by g; the top
k (informative) and one *representative* token (the g-weighted mean of the others) take the slow path through
attention and MLP; the other tokens (placeholders) are kept and updated fast by adding the representative
token's residual. When the stage ends the full token structure is restored in its original order.

The steps the method's forward runs (:func:`scored_block`, :func:`enter`, :func:`leave`, :func:`slow_step`) are
also what its latency components time (:mod:`.latency`): one function per step, so a table charges what runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ...state import PruneState, run_block
from ...tokens import gather_rows, weighted_mean

# g <- (1 - alpha) g + alpha a: before the first selector g is just the last block's class attention,
# afterwards it is smoothed across blocks (the official DeiT code's alpha).
ALPHA_BEFORE, ALPHA_AFTER = 1.0, 0.5


def class_attention_score(cls_attn: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """(B, H, N) class-token attention over all tokens -> (B, N_patches) summed over heads."""
    return cls_attn.sum(dim=1)[:, num_prefix:]


@dataclass
class EvoStage:
    """The token split of one stage, in the order of ``order`` (informative first)."""

    order: torch.Tensor  # (B, N) patch indices by descending score
    informative: torch.Tensor  # (B, K, C) slow tokens
    placeholders: torch.Tensor  # (B, N - K, C) fast tokens
    representative: torch.Tensor  # (B, 1, C)
    score: torch.Tensor  # (B, N) global score, permuted like ``order``

    @property
    def n_keep(self) -> int:
        return self.informative.shape[1]


def enter_stage(patches: torch.Tensor, score: torch.Tensor, n_keep: int) -> EvoStage:
    """Split patches (B, N, C) by global score (B, N) into k informative tokens and placeholders."""
    order = score.argsort(dim=1, descending=True)  # (B, N)
    permuted, score = gather_rows(patches, order), gather_rows(score, order)
    informative, placeholders = permuted[:, :n_keep], permuted[:, n_keep:]
    w = score[:, n_keep:].clamp_min(0.0)  # (B, N - K)
    rep = weighted_mean(placeholders, w)  # (B, 1, C)
    return EvoStage(order, informative, placeholders, rep, score)


def slow_tokens(prefix: torch.Tensor, stage: EvoStage) -> torch.Tensor:
    """What the block computes on: (B, P + K + 1, C)."""
    return torch.cat([prefix, stage.informative, stage.representative], dim=1)


def after_block(stage: EvoStage, out: torch.Tensor, num_prefix: int, cls_score: torch.Tensor | None,
                fast: bool = True) -> torch.Tensor:
    """Take the block output (B, P + K + 1, C): fast-update placeholders with the representative's residual
    (unless ``fast`` is False: nothing reads them again), update the informative tokens' global score. Returns the
    new prefix tokens (B, P, C)."""
    k = stage.n_keep
    new_rep = out[:, -1:]
    if fast:
        stage.placeholders = stage.placeholders + (new_rep - stage.representative)
    stage.representative = new_rep
    stage.informative = out[:, num_prefix:num_prefix + k]
    if cls_score is not None:  # (B, K + 1) class attention over informative + representative
        inf_score = (1 - ALPHA_AFTER) * stage.score[:, :k] + ALPHA_AFTER * cls_score[:, :k]
        stage.score = torch.cat([inf_score, stage.score[:, k:]], dim=1)
    return out[:, :num_prefix]


def leave_stage(stage: EvoStage) -> tuple[torch.Tensor, torch.Tensor]:
    """Restore the original token order. Returns (patches (B, N, C), score (B, N))."""
    inverse = stage.order.argsort(dim=1)
    patches = torch.cat([stage.informative, stage.placeholders], dim=1)
    return gather_rows(patches, inverse), gather_rows(stage.score, inverse)


# The forward's steps ---------------------------------------------------------------------------------------------

def scored_block(blk: nn.Module, x: torch.Tensor, state: PruneState,
                 num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A block on (B, T, C) tokens that also records the class token's attention: (output, score (B, T - P)),
    the score the first stage ranks by (alpha = 1 before the first selector)."""
    x = run_block(blk, x, state, record=True)
    return x, class_attention_score(state.cls_attn, num_prefix)


def enter(x: torch.Tensor, score: torch.Tensor, n_keep: int, num_prefix: int) -> tuple[EvoStage, torch.Tensor]:
    """Enter a stage: all tokens (B, P + N, C) ranked by score (B, N) -> (the stage, the prefix tokens (B, P, C))."""
    return enter_stage(x[:, num_prefix:], score, n_keep), x[:, :num_prefix]


def leave(stage: EvoStage, prefix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave a stage: (all tokens in their original order (B, P + N, C), their score (B, N))."""
    patches, score = leave_stage(stage)
    return torch.cat([prefix, patches], dim=1), score


def slow_step(blk: nn.Module, stage: EvoStage, prefix: torch.Tensor, state: PruneState, num_prefix: int,
              record: bool, fast: bool = True) -> torch.Tensor:
    """One block of a stage: the slow tokens through ``blk``, then :func:`after_block` (the class attention
    recorded and the informative tokens' score updated where ``record``). Returns the new prefix (B, P, C)."""
    out = run_block(blk, slow_tokens(prefix, stage), state, record=record)  # (B, P + K + 1, C)
    cls = class_attention_score(state.cls_attn, num_prefix) if record else None
    return after_block(stage, out, num_prefix, cls, fast=fast)
