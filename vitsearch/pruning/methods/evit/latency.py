"""The latency components EViT charges (:meth:`EViT.components`) as torch modules over a patched model's own
blocks, calling the functions its forward calls (the split block's halves, :func:`.fuse.keep_and_fuse`), for the
latency profiler. A kept count k enters as the length of a ``count`` input ((k,)).

- ``evit_attn(n)``: a block's attention half with the class token's attention row recorded and ranked, every
  block in a row (``steps`` = depth).
- ``evit_fuse(n, k)``: top k of the n - P tokens after the prefix kept, the rest fused.
- ``evit_mlp(n)``: a block's MLP half, every block in a row.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...blocks import attention_half, mlp_half
from .fuse import class_attention, keep_and_fuse

KINDS = ("evit_attn", "evit_fuse", "evit_mlp")


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


def modules(model: nn.Module) -> dict[str, tuple[nn.Module, int]]:
    """kind -> (module, steps one call runs) for a model patched for pruning."""
    depth = len(model.blocks)
    return {"evit_attn": (EvitAttention(model), depth), "evit_fuse": (EvitFuse(model), 1),
            "evit_mlp": (EvitMlp(model), depth)}


def example(model: nn.Module, kind: str, n: int, k: int, batch: int = 1,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Inputs of ``kind`` at (n, k): tokens (B, n, C); for evit_fuse also the class attention (B, n - P) and
    count (k,)."""
    x = torch.randn(batch, n, model.embed_dim, generator=generator)
    if kind == "evit_fuse":
        return x, torch.rand(batch, n - model.num_prefix_tokens, generator=generator), torch.zeros(k)
    return (x,)


def grid(num_prefix: int, num_patches: int, points: int = 9) -> list[tuple[str, int, int]]:
    """(kind, n, k) points covering every count an evit config can produce on this geometry (n up to P + N,
    k from 1 to the tokens after the prefix less one)."""
    lo, hi = num_prefix + 2, num_prefix + num_patches
    ns = sorted({round(lo + (hi - lo) * i / (points - 1)) for i in range(points)})
    out = [(kind, n, 0) for kind in ("evit_attn", "evit_mlp") for n in ns]
    for n in ns:
        rest = n - num_prefix
        out += [("evit_fuse", n, k) for k in sorted({1, max(1, rest // 2), rest - 1})]
    return out
