"""The latency components ToMe charges (:meth:`ToMe.components`) as torch modules over a patched model's own
blocks, calling the functions its forward calls (the split block's halves, :func:`.merge.merge_step`), for the
latency profiler. Token counts enter as shapes; a kept count k as the length of a ``count`` input (B-free, (k,)).

- ``tome_attn(n)``: a block's attention half with proportional attention and the keys recorded, every block
  in a row (``steps`` = depth, as the profiler chains blocks).
- ``tome_merge(n, k)``: bipartite matching and the size-weighted merge of n tokens down to k.
- ``tome_mlp(n)``: a block's MLP half, every block in a row.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...blocks import attention_half, mlp_half
from .merge import max_merges, merge_step

KINDS = ("tome_attn", "tome_merge", "tome_mlp")


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


def modules(model: nn.Module) -> dict[str, tuple[nn.Module, int]]:
    """kind -> (module, steps one call runs) for a model patched for pruning."""
    depth = len(model.blocks)
    return {"tome_attn": (TomeAttention(model), depth), "tome_merge": (TomeMerge(model), 1),
            "tome_mlp": (TomeMlp(model), depth)}


def example(model: nn.Module, kind: str, n: int, k: int, batch: int = 1,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Inputs of ``kind`` at (n, k): tokens (B, n, C), sizes >= 1 (B, n, 1), keys (B, n, head_dim), count (k,)."""
    C, head_dim = model.embed_dim, model.blocks[0].attn.head_dim
    x = torch.randn(batch, n, C, generator=generator)
    size = 1.0 + torch.randint(0, 3, (batch, n, 1), generator=generator).float()
    if kind == "tome_attn":
        return x, size
    if kind == "tome_merge":
        return x, torch.randn(batch, n, head_dim, generator=generator), size, torch.zeros(k)
    return (x,)


def grid(num_prefix: int, num_patches: int, points: int = 9) -> list[tuple[str, int, int]]:
    """(kind, n, k) points covering every count a tome config can produce on this geometry."""
    lo, hi = num_prefix + 1, num_prefix + num_patches
    ns = sorted({round(lo + (hi - lo) * i / (points - 1)) for i in range(points)})
    out = [(kind, n, 0) for kind in ("tome_attn", "tome_mlp") for n in ns]
    for n in ns:
        most = max_merges(n, num_prefix)
        out += [("tome_merge", n, n - r) for r in sorted({1, max(1, most // 2), most}) if most >= 1]
    return out
