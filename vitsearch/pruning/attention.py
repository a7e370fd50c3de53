"""timm ``Attention`` with two additions token pruning needs, and the stock path untouched otherwise.

- ``state.policy``: a training forward masks pruned tokens as *keys* (DynamicViT's softmax-with-policy), in
  some blocks or all (the method's choice); the mask must pass gradients to the Gumbel decisions, so it
  multiplies the exponentials instead of adding -inf.
- ``state.record_cls_attn``: a method that ranks tokens by the class token's attention; fused SDPA never
  materialises the attention matrix, so the class row is recomputed from q_cls and K (one (1 x N) row per head,
  cheap next to the block).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention

from .state import PruneState

TESTED_TIMM = "1.0.31"
_REQUIRED = ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj", "proj_drop", "num_heads", "head_dim", "scale")


def softmax_with_policy(attn: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """Softmax over the keys ``policy`` (B, N) keeps; each query keeps itself so no row is empty.
    attn: (B, H, N, N) logits. Forward: exactly the softmax over the kept keys, as if the others were removed.

    DynamicViT's version subtracts the max over *all* keys and adds eps: when a pruned key stands far above every
    kept one (a dropped digit patch), the kept sum underflows, the row turns uniform over all keys, pruned ones
    included, and the straight-through gradient to the policy reaches 1/eps (measured 3e8 on the digits default,
    enough to flip an earlier selector's ranking). Here the max is over the kept keys and a pruned key's exponent
    is capped at 0, so its gradient is at most what the strongest kept key would get."""
    N = policy.shape[1]
    eye = torch.eye(N, dtype=attn.dtype, device=attn.device)
    key_policy = policy[:, None, None, :]  # (B, 1, 1, N)
    mask = key_policy + (1.0 - key_policy) * eye  # (B, 1, N, N), straight-through 0/1
    top = attn.masked_fill(mask.detach() < 0.5, float("-inf")).amax(dim=-1, keepdim=True)
    w = (attn - top).clamp_max(0.0).exp() * mask  # the sum is >= 1: the top kept key contributes exp(0)
    return w / w.sum(dim=-1, keepdim=True)


class PrunableAttention(Attention):
    """Installed by class swap (``module.__class__ = PrunableAttention``), so weights and keys are unchanged."""

    _vitsearch: PruneState

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        state = self._vitsearch
        if state.policy is None and not state.record_cls_attn:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal or getattr(self, "gate", None) is not None:
            raise RuntimeError("vitsearch pruning does not support attention masks or gated attention")
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        if state.policy is not None:
            attn = softmax_with_policy((q * self.scale) @ k.transpose(-2, -1), state.policy)  # (B, H, N, N)
            if state.record_cls_attn:
                state.cls_attn = attn[:, :, 0]
            x = self.attn_drop(attn) @ v
        else:
            cls_row = ((q[:, :, :1] * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, 1, N)
            state.cls_attn = cls_row[:, :, 0]
            if self.fused_attn:
                x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
            else:
                attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
                x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)  # (B, N, C)
        x = self.norm(x)
        return self.proj_drop(self.proj(x))


def patch_attention(attn: torch.nn.Module, state: PruneState) -> None:
    from ..errors import VitsearchError

    if not isinstance(attn, Attention):
        raise VitsearchError(
            f"token pruning needs timm's standard Attention in every block, found {type(attn).__name__} "
            f"(tested with timm {TESTED_TIMM})")
    missing = [a for a in _REQUIRED if not hasattr(attn, a)]
    if missing:
        raise VitsearchError(
            f"timm's Attention lacks {', '.join(missing)}: this timm version differs from the tested {TESTED_TIMM}")
    attn.__class__ = PrunableAttention
    attn._vitsearch = state
