"""Convert a stock timm VisionTransformer in place into a token-pruned one (a class swap, weights untouched).

``apply(model, config)`` swaps the model's class for a subclass whose ``forward_features`` runs the selectors
between the stock blocks, and swaps each block's attention for :class:`PrunableAttention`. Weights and their
state_dict keys are unchanged; the method adds what it trains (its ``new_parameters``, e.g. selectors under
``token_selectors.<block>.*``). What runs between the blocks is the method's (:mod:`.methods`).
Calling ``apply`` again changes the config and keeps every trained selector (weight sharing across configs).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from ..errors import VitsearchError
from .attention import TESTED_TIMM, patch_attention
from .config import PruneConfig, token_schedule
from .methods import PruningMethod, method_of
from .schedule import TokenSchedule
from .state import PruneState


class PrunedViTMixin:
    """forward_features with the method's token selection between the stock blocks. Read by the dynamic subclass
    only."""

    _vitsearch: PruneState
    base_pool: str  # the stock model's global_pool; ``global_pool`` is the method's (PruningMethod.pooling)
    prune_config: PruneConfig
    prune_method: PruningMethod
    token_schedule: TokenSchedule
    every_block: bool  # a curriculum phase that re-selects at every block of a stage (PruningMethod.curriculum)

    def forward_features(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise RuntimeError("a token-pruned ViT takes no attention mask")
        state = self._vitsearch
        state.reset()
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))  # (B, P + N, C)
        x = self.prune_method.forward_blocks(self, x, state)
        state.pool_mask, state.policy = state.policy, None  # the head pools over what attention saw
        return self.norm(x)

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        """timm's pooling; a training forward that masked tokens (``state.policy``) averages only the tokens it
        kept (and whatever else attention saw), the tokens inference keeps."""
        mask = self._vitsearch.pool_mask
        if mask is None or (pool_type or self.global_pool) != "avg":
            return super().pool(x, pool_type)
        P = self.num_prefix_tokens
        m = mask[:, P:, None].to(x.dtype)  # (B, T - P, 1)
        return (x[:, P:] * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        out = super().forward_head(x, pre_logits=pre_logits)
        if self.training and not pre_logits:
            self.prune_method.after_pooling(self, x, self._vitsearch)
        return out


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, VisionTransformer):
        raise VitsearchError(
            f"token pruning needs a timm VisionTransformer (ViT/DeiT), got {type(model).__name__}")
    if getattr(model, "attn_pool", None) is not None or getattr(model, "dynamic_img_size", False):
        raise VitsearchError("token pruning does not support attention pooling (global_pool='map') or dynamic "
                             "image size models: create the model with global_pool='token' or 'avg'")
    if getattr(model, "global_pool", "token") not in ("token", "avg") or getattr(model, "pool_include_prefix", False):
        raise VitsearchError(
            f"token pruning supports global_pool 'token' or 'avg' over the patch tokens, not "
            f"{model.global_pool!r}" + (" including the prefix tokens" if model.pool_include_prefix else "")
            + ": create the model with global_pool='token' or 'avg'")
    for name in ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm", "num_prefix_tokens", "pool"):
        if not hasattr(model, name):
            raise VitsearchError(f"this VisionTransformer lacks {name}: vitsearch was tested with timm {TESTED_TIMM}")


def apply(model: nn.Module, config: "PruneConfig | str | dict", *, every_block: bool = False) -> nn.Module:
    """Patch ``model`` in place for ``config`` (or change the config of an already patched model). ``every_block``:
    re-select at every block of a stage, for a curriculum phase that asks it (:meth:`PruningMethod.curriculum`)."""
    config = PruneConfig.parse(config)
    method = method_of(config.method)
    if not isinstance(model, PrunedViTMixin):
        _check_model(model)
    method.check_model(model)  # before anything changes: a refused model stays as it was
    if not isinstance(model, PrunedViTMixin):
        state = PruneState()
        for blk in model.blocks:
            patch_attention(blk.attn, state)
        model.__class__ = type(f"Pruned{model.__class__.__name__}", (PrunedViTMixin, model.__class__), {})
        model._vitsearch = state
        model.token_selectors = nn.ModuleDict()
        model.base_pool = model.global_pool  # the stock model's pooling; a method may pool otherwise
    schedule = token_schedule(config, depth=len(model.blocks), num_patches=model.patch_embed.num_patches,
                              num_prefix=model.num_prefix_tokens, pool=model.base_pool)
    model.global_pool = method.pooling(model.base_pool, schedule)
    method.patch(model, schedule)
    model.prune_config, model.prune_method, model.token_schedule = config, method, schedule
    model.every_block = every_block
    return model


def prune_state(model: nn.Module) -> PruneState:
    """What the last forward recorded: keep decisions and targets, auxiliary logits, per-block token counts."""
    if not isinstance(model, PrunedViTMixin):
        raise VitsearchError("this model is not patched for token pruning: call vitsearch.pruning.apply first")
    return model._vitsearch
