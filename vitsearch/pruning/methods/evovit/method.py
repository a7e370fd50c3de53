"""``evovit``: Evo-ViT slow-fast token evolution, the contract adapter (the algorithm: :mod:`.algorithm`; the
latency components it charges: :mod:`.latency`)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...schedule import SelectorStep, TokenSchedule, kept_tokens
from ...state import PruneState, run_block
from ..base import Component, ComponentKind, PruningMethod, refuse
from . import algorithm, latency


@dataclass
class EvoViTRecord:
    """What one forward records for the loss (``PruneState.method``)."""

    aux_logits: torch.Tensor | None = None  # (B, classes) the assisted head's output, training only


class EvoViT(PruningMethod):
    """A keep ratio is a fraction of ALL patch tokens, not compounding: every stage re-ranks all N patches by the
    global score (the official code), so ``evovit:4=0.5,8=0.5`` is its DeiT schedule, 98 of 196 patches on the
    slow path at blocks 4-7 and again 98 of 196, re-selected, at blocks 8-11. A stage's blocks compute on prefix +
    informative patches + one representative token; the other patches are carried (structure preserved) and
    fast-updated, and every stage but an open last one restores them in place.

    The head is the stock model's (:attr:`head_pooling`). A class-token head never reads the last stage's
    placeholders, so at inference that stage is *open*: no fast update and no restore, and the head's tokens are
    the slow ones, P + k + 1. A head on the mean of the patches reads them all (the last stage restores).

    Training: the assisted CLS loss (a second head ``head_aux`` on the other pooling) through
    ``state.method.aux_logits``; every stage restores, since the aux head of a class-token model reads the mean of all
    patches. Latency: ``evo_stage(N, k)`` at each stage start (its restore included; ``evo_enter(N, k)`` for an
    open last stage), the blocks before the first stage at full width (``block_cls`` for the one whose class
    attention seeds the score), the stage blocks as ``evo_block(_cls)(P + k + 1, k)``."""

    name = "evovit"
    new_parameters = ("head_aux.",)  # trained only: inference ranks by class attention and never reads it
    #: None: the classifier is the stock model's (a class-token model keeps its class-token head; issue 14 item 4
    #: chose it on digits by finalized accuracy, benchmarks/evovit_head.py). "avg": it reads the mean of all patch
    #: tokens, as the official DeiT Evo-ViT does, and the class token trains ``head_aux``.
    head_pooling: str | None = None

    def reads_placeholders(self, pool: str) -> bool:
        """Whether the head of a model whose stock pooling is ``pool`` reads the last stage's placeholders."""
        return (self.head_pooling or pool) != "token"

    def pooling(self, base: str, schedule: TokenSchedule) -> str:
        return (self.head_pooling or base) if schedule.selectors else base  # pruning nothing: the stock model

    def check_keep(self, keep: Mapping[int, float]) -> None:
        if 0 in keep:
            raise refuse(self.name, "a selector at block 0 has no class attention to rank by",
                         "put the first selector at block >= 1")

    def schedule(self, keep: Mapping[int, float], *, depth: int, num_patches: int, num_prefix: int,
                 pool: str = "token") -> TokenSchedule:
        if num_prefix < 1:
            raise refuse(self.name, "it ranks tokens by class-token attention, but this model has no class token",
                         "use spvit, or a model with a class token")
        steps: list[SelectorStep] = []
        counts, k = [], num_patches
        for block in range(depth):
            if block in keep:
                k_new = kept_tokens(num_patches, keep[block])
                if k_new < num_patches:
                    steps.append(SelectorStep(block, num_patches, k_new))
                elif k < num_patches:
                    raise refuse(self.name, f"the selector at block {block} keeps every patch after a stage that "
                                 "pruned, and a stage cannot end before the last block",
                                 f"drop the selector at block {block}")
                k = k_new
            counts.append(num_prefix + k + int(k < num_patches))
        final = counts[-1] if steps and not self.reads_placeholders(pool) else num_prefix + num_patches  # open end
        return TokenSchedule(self.name, num_prefix, num_patches, tuple(counts), tuple(steps), final)

    def check_model(self, model: nn.Module) -> None:
        if getattr(model, "cls_token", None) is None:
            raise refuse(self.name, "it ranks tokens by class-token attention, but this model has no class token",
                         "use spvit, or a model with a class token")

    def patch(self, model: nn.Module, schedule: TokenSchedule) -> None:
        if not hasattr(model, "head_aux"):
            # Starts as the main head, so the aux loss starts sensible. A model whose tokens leave the blocks
            # un-normalised (fc_norm after pooling, whichever pooling) gets its own copy of that norm for the other
            # pooling (the official code's norm_cls), so the aux head never reads a raw residual stream.
            head = copy.deepcopy(model.head)
            if not isinstance(model.fc_norm, nn.Identity):
                head = nn.Sequential(copy.deepcopy(model.fc_norm), head)
            model.head_aux = head

    def forward_blocks(self, model: nn.Module, x: torch.Tensor, state: PruneState) -> torch.Tensor:
        P = model.num_prefix_tokens
        state.method = EvoViTRecord()
        starts = {s.block: s.n_keep for s in model.token_schedule.selectors}
        last_start = max(starts, default=-1)
        every_block = model.every_block
        # Inference with a head that never reads the last stage's placeholders: they are not updated or restored.
        open_end = not model.training and not self.reads_placeholders(model.base_pool)
        # The last block whose updated placeholders a later block reads (by re-ranking them: every-block mode after
        # each block, stage-wise at the last stage's entry).
        last_reader = len(model.blocks) - 2 if every_block else last_start - 1
        stage: algorithm.EvoStage | None = None
        score: torch.Tensor | None = None
        prefix = x[:, :P]
        for i, blk in enumerate(model.blocks):
            if i in starts or (stage is not None and every_block):
                k = starts.get(i, stage.n_keep if stage is not None else 0)
                if stage is not None:
                    x, score = algorithm.leave(stage, prefix)
                stage, prefix = algorithm.enter(x, score, k, P)
            # Class attention is only needed where a later selection reads it.
            if stage is None and i + 1 == min(starts, default=-1):  # alpha = 1: g is this block's attention
                x, score = algorithm.scored_block(blk, x, state, P)
            elif stage is None:
                x = run_block(blk, x, state)
            else:
                prefix = algorithm.slow_step(blk, stage, prefix, state, P, record=i < last_start or every_block,
                                             fast=not open_end or i <= last_reader)
        state.record_cls_attn = False
        if stage is not None and open_end:
            x = algorithm.slow_tokens(prefix, stage)  # (B, P + k + 1, C): the class token has read all it needs
        elif stage is not None:
            x, _ = algorithm.leave(stage, prefix)
        return x

    def after_pooling(self, model: nn.Module, x: torch.Tensor, state: PruneState) -> None:
        # Assisted CLS loss: a second head on the other pooling keeps the class token's attention meaningful.
        P = model.num_prefix_tokens
        pooled = x[:, P:].mean(dim=1) if model.global_pool == "token" else x[:, 0]
        state.method.aux_logits = model.head_aux(pooled)

    def loss(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], state: PruneState, schedule: TokenSchedule,
             y: torch.Tensor, weights: Any, latency: Any | None) -> torch.Tensor:
        aux = state.method.aux_logits if isinstance(state.method, EvoViTRecord) else None
        if aux is None:
            return loss
        parts["aux"] = F.cross_entropy(aux, y)
        return (1 - weights.aux) * loss + weights.aux * parts["aux"]

    def curriculum(self, config: Any, settings: Any) -> tuple[list[tuple[Any, bool]], tuple[float, ...] | None, str]:
        """Layer-to-stage: selection at every block of a stage first, then only at the config's stage starts."""
        return [(config, True), (config, False)], (settings.evo_switch,), "the Evo-ViT layer-to-stage schedule"

    def kinds(self) -> tuple[ComponentKind, ...]:
        return latency.kinds(self.reads_placeholders)

    def components(self, schedule: TokenSchedule) -> list[Component]:
        P, N = schedule.num_prefix, schedule.num_patches
        steps = {s.block: s for s in schedule.selectors}
        if not steps:
            return [("block", n, 0) for n in schedule.block_tokens]
        first, last = min(steps), max(steps)
        open_end = schedule.final_tokens < P + N  # the head reads only the slow tokens: no restore at the end
        out: list[Component] = []
        k: int | None = None
        for i in range(schedule.depth):
            if i in steps:
                k = steps[i].n_keep
                # the stage's leave is charged with its enter, but an open last stage never leaves
                out.append(("evo_enter" if open_end and i == last else "evo_stage", N, k))
            if k is None:
                out.append(("block_cls" if i + 1 == first else "block", P + N, 0))
            else:
                out.append(("evo_block_cls" if i < last else "evo_block", P + k + 1, k))
        return out
