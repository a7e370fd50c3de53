"""Convert a stock timm VisionTransformer in place into a token-pruned one (ToMe's shape).

``apply(model, config)`` swaps the model's class for a subclass whose ``forward_features`` runs the selectors
between the stock blocks, and swaps each block's attention for :class:`PrunableAttention`. Weights and their
state_dict keys are unchanged; SPViT adds ``token_selectors.<block>.*``, Evo-ViT adds ``head_aux.*``.
Calling ``apply`` again changes the config and keeps every trained selector (weight sharing across configs).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from ..config import PruneConfig, TokenSchedule, token_schedule
from ..errors import VitsearchError
from . import evovit, spvit
from .attention import TESTED_TIMM, patch_attention
from .state import PruneState


class PrunedViTMixin:
    """forward_features with token selection between the stock blocks. Read by the dynamic subclass only."""

    _vitsearch: PruneState
    prune_config: PruneConfig
    token_schedule: TokenSchedule
    evo_every_block: bool  # Evo-ViT layer-to-stage schedule: True re-ranks at every block of a stage

    def forward_features(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise RuntimeError("a token-pruned ViT takes no attention mask")
        state = self._vitsearch
        state.reset()
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))  # (B, P + N, C)
        method = self.prune_config.method
        if method == "spvit":
            x = self._spvit_train(x) if self.training else self._spvit_infer(x)
        elif method == "evovit":
            x = self._evovit(x)
        else:
            for blk in self.blocks:
                state.block_tokens.append(x.shape[1])
                x = blk(x)
        state.policy = None
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        out = super().forward_head(x, pre_logits=pre_logits)
        if self.training and self.prune_config.method == "evovit" and not pre_logits:
            # Assisted CLS loss: a second head on the other pooling keeps the class token's attention meaningful.
            P = self.num_prefix_tokens
            pooled = x[:, P:].mean(dim=1) if self.global_pool == "token" else x[:, 0]
            self._vitsearch.aux_logits = self.head_aux(pooled)
        return out

    # SPViT -------------------------------------------------------------------------------------------------
    def _spvit_infer(self, x: torch.Tensor) -> torch.Tensor:
        P, steps, state = self.num_prefix_tokens, {s.block: s for s in self.token_schedule.selectors}, self._vitsearch
        for i, blk in enumerate(self.blocks):
            if i in steps:
                n = steps[i].n_in
                kept, pkg = spvit.prune_hard(self.token_selectors[str(i)], x[:, P:P + n], steps[i].n_keep)
                x = torch.cat([x[:, :P], kept, x[:, P + n:], pkg], dim=1)  # [prefix, kept, old packages, new]
            state.block_tokens.append(x.shape[1])
            x = blk(x)
        return x

    def _spvit_train(self, x: torch.Tensor) -> torch.Tensor:
        P, N, state = self.num_prefix_tokens, self.token_schedule.num_patches, self._vitsearch
        steps = {s.block: s for s in self.token_schedule.selectors}
        alive = x.new_ones(x.shape[0], N)  # (B, N) patches not pruned so far
        packaged: list[torch.Tensor] = []  # per selector so far (B, 1): 1 if its package holds any token
        for i, blk in enumerate(self.blocks):
            if i in steps:
                kept, pkg = spvit.prune_soft(self.token_selectors[str(i)], x[:, P:P + N], alive,
                                             steps[i].n_keep / steps[i].n_in)
                # A draw that pruned nothing has an empty package: masked out, since inference never has one
                # (attending to a zero token, it sent the selectors gradients of the tokens' scale, ~100).
                packaged.append(((alive - kept).detach().sum(dim=1, keepdim=True) > 0).to(x.dtype))
                alive = kept
                x = torch.cat([x, pkg], dim=1)  # packages are appended and attended to from then on
                state.keep_decisions.append(alive)
                state.keep_targets.append(steps[i].n_keep / N)
                state.policy = torch.cat([x.new_ones(x.shape[0], P), alive, *packaged], dim=1)  # (B, P + N + S)
            state.block_tokens.append(x.shape[1])
            x = blk(x)
        return x

    # Evo-ViT -----------------------------------------------------------------------------------------------
    def _evovit(self, x: torch.Tensor) -> torch.Tensor:
        P, state = self.num_prefix_tokens, self._vitsearch
        starts = {s.block: s.n_keep for s in self.token_schedule.selectors}
        last_start = max(starts, default=-1)
        stage: evovit.EvoStage | None = None
        score: torch.Tensor | None = None
        prefix = x[:, :P]
        for i, blk in enumerate(self.blocks):
            if i in starts or (stage is not None and self.evo_every_block):
                k = starts.get(i, stage.n_keep if stage is not None else 0)
                if stage is not None:
                    patches, score = evovit.leave_stage(stage)
                    x = torch.cat([prefix, patches], dim=1)
                stage, prefix = evovit.enter_stage(x[:, P:], score, k), x[:, :P]
            # Class attention is only needed where a later selection reads it.
            if stage is None:
                state.record_cls_attn = i + 1 == min(starts, default=-1)
            else:
                state.record_cls_attn = i < last_start or self.evo_every_block
            if stage is None:
                state.block_tokens.append(x.shape[1])
                x = blk(x)
                if state.record_cls_attn:  # alpha = 1 before the first selector: g is this block's attention
                    score = evovit.class_attention_score(state.cls_attn, P)
            else:
                slow = evovit.slow_tokens(prefix, stage)
                state.block_tokens.append(slow.shape[1])
                out = blk(slow)
                cls = evovit.class_attention_score(state.cls_attn, P) if state.record_cls_attn else None
                prefix = evovit.after_block(stage, out, P, cls)
        state.record_cls_attn = False
        if stage is not None:
            patches, _ = evovit.leave_stage(stage)
            x = torch.cat([prefix, patches], dim=1)
        return x


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, VisionTransformer):
        raise VitsearchError(
            f"token pruning needs a timm VisionTransformer (ViT/DeiT), got {type(model).__name__}")
    if getattr(model, "attn_pool", None) is not None or getattr(model, "dynamic_img_size", False):
        raise VitsearchError("token pruning does not support attention pooling or dynamic image size models")
    for name in ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm", "num_prefix_tokens"):
        if not hasattr(model, name):
            raise VitsearchError(f"this VisionTransformer lacks {name}: vitsearch was tested with timm {TESTED_TIMM}")


def apply(model: nn.Module, config: "PruneConfig | str | dict", *, evo_every_block: bool = False) -> nn.Module:
    """Patch ``model`` in place for ``config`` (or change the config of an already patched model)."""
    config = PruneConfig.parse(config)
    if not isinstance(model, PrunedViTMixin):
        _check_model(model)
        state = PruneState()
        for blk in model.blocks:
            patch_attention(blk.attn, state)
        model.__class__ = type(f"Pruned{model.__class__.__name__}", (PrunedViTMixin, model.__class__), {})
        model._vitsearch = state
        model.token_selectors = nn.ModuleDict()
    if config.method == "evovit" and getattr(model, "cls_token", None) is None:
        raise VitsearchError("evovit ranks tokens by class-token attention, but this model has no class token")
    schedule = token_schedule(
        config, depth=len(model.blocks), num_patches=model.patch_embed.num_patches, num_prefix=model.num_prefix_tokens)
    ref = next(model.parameters())
    if config.method == "spvit":
        for step in schedule.selectors:
            if str(step.block) not in model.token_selectors:
                model.token_selectors[str(step.block)] = spvit.MultiHeadTokenSelector(
                    model.embed_dim, model.blocks[0].attn.num_heads, keep_prior=step.n_keep / step.n_in,
                ).to(device=ref.device, dtype=ref.dtype)
    if config.method == "evovit" and not hasattr(model, "head_aux"):
        model.head_aux = copy.deepcopy(model.head)  # starts as the main head, so the aux loss starts sensible
    model.prune_config, model.token_schedule, model.evo_every_block = config, schedule, evo_every_block
    return model


def prune_state(model: nn.Module) -> PruneState:
    """What the last forward recorded: keep decisions and targets, auxiliary logits, per-block token counts."""
    if not isinstance(model, PrunedViTMixin):
        raise VitsearchError("this model is not patched for token pruning: call vitsearch.pruning.apply first")
    return model._vitsearch
