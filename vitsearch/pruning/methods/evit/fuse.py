"""EViT's token reorganisation as tensor functions (Liang et al., "Not All Patches are What You Need", ICLR 2022).

Inside a block, between its attention and its MLP: the class token's attention (mean over heads) ranks the
tokens after the prefix; the top k stay, in descending attention order, and the others are fused into one token,
their sum weighted by that attention (not renormalised: the official code's ``extra_token``). The fused token is
an ordinary token afterwards: a later pruning block ranks it with the others and may fuse it again.
"""
from __future__ import annotations

import math

import torch

from ...tokens import gather_rows


def kept_count(tokens: int, keep_rate: float) -> int:
    """Tokens a pruning block keeps of the ``tokens`` after the prefix: the official ``ceil(rate * (N - 1))``,
    float product included (so 0.55 of 100 keeps 56, as the official code does, where
    :func:`vitsearch.pruning.schedule.kept_tokens` keeps 55)."""
    return max(1, math.ceil(keep_rate * tokens))


def class_attention(cls_attn: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """(B, H, T) the class token's attention over all tokens -> (B, T - P) over the rest, mean over heads."""
    return cls_attn[:, :, num_prefix:].mean(dim=1)


def keep_and_fuse(x: torch.Tensor, attn: torch.Tensor, k: int, num_prefix: int) -> torch.Tensor:
    """x (B, T, C), attn (B, T - P) -> (B, P + k + 1, C): prefix, the top k by attention, the fused token."""
    order = attn.argsort(dim=1, descending=True)  # (B, T - P)
    rest = x[:, num_prefix:]
    kept = gather_rows(rest, order[:, :k])  # (B, k, C)
    dropped = order[:, k:]  # (B, T - P - k)
    fused = gather_rows(attn, dropped)[:, None, :] @ gather_rows(rest, dropped)  # (B, 1, C)
    return torch.cat([x[:, :num_prefix], kept, fused], dim=1)
