"""``spvit``: SPViT soft pruning with packaging, the contract adapter (the algorithm: :mod:`.algorithm`; the
latency component it charges: :mod:`.latency`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from ...schedule import TokenSchedule, compound_steps
from ...state import PruneState, run_block
from ...tokens import gather_rows
from ..base import Component, ComponentKind, PruningMethod, restricted
from . import algorithm as spvit
from . import latency


@dataclass
class SPViTRecord:
    """What one training forward records for the keep-ratio and latency losses (``PruneState.method``)."""

    keep_decisions: list[torch.Tensor] = field(default_factory=list)  # per selector (B, N) 0/1, straight-through
    keep_targets: list[float] = field(default_factory=list)  # per selector: target fraction of all patches kept


def train_draw(state: PruneState) -> str:
    """The training draw rule (a name in :data:`.algorithm.TRAIN_DRAWS`): the running training's
    ``TrainSettings.spvit_draw``, else the default."""
    return spvit.TRAIN_DRAWS[0] if state.train is None else state.train.spvit_draw


def keep_ratio_loss(decisions: Sequence[torch.Tensor], targets: Sequence[float]) -> torch.Tensor:
    """Per-sample keep fraction of each selector's decisions (B, N) against its target (DynamicViT's)."""
    terms = [((d.mean(dim=1) - t) ** 2).mean() for d, t in zip(decisions, targets)]
    return torch.stack(terms).mean() if terms else torch.zeros(())


def soft_block_tokens(
    keep_decisions: Sequence[torch.Tensor], selector_blocks: Sequence[int], *, depth: int, num_prefix: int
) -> list[torch.Tensor]:
    """Per-block token counts implied by the soft decisions (B, N) of an SPViT forward: prefix + expected
    kept patches + one package per selector so far. Differentiable through the straight-through decisions."""
    n_patches = keep_decisions[0].shape[1] if keep_decisions else 0
    device = keep_decisions[0].device if keep_decisions else None  # where training runs
    counts, current, packages = [], None, 0
    starts = dict(zip(selector_blocks, keep_decisions))
    for block in range(depth):
        if block in starts:
            current, packages = starts[block].sum(dim=1).mean(), packages + 1
        kept = current if current is not None else torch.tensor(float(n_patches), device=device)
        counts.append(num_prefix + kept + packages)
    return counts


def selector_groups(keep: Mapping[int, float], merge_tol: float = 0.0) -> list[list[int]]:
    """Selector blocks in order, neighbours whose keep ratios differ by at most ``merge_tol`` in one group."""
    groups: list[list[int]] = []
    for block, ratio in keep.items():
        if groups and merge_tol > 0 and abs(keep[groups[-1][-1]] - ratio) <= merge_tol + 1e-9:
            groups[-1].append(block)
        else:
            groups.append([block])
    return groups


def selection_noise(progress: float) -> float:
    """The Gumbel noise scale of ``"topk"`` training draws: 1 at the start (exploration), 0 at the end (the
    inference top-k), linear in between."""
    return max(0.0, 1.0 - progress)


class SPViT(PruningMethod):
    """Keep ratios compound: a selector keeps ``ratio`` of the patch tokens that reached it (0.7 at blocks 3, 6, 9
    keeps 70% / 49% / 34.3% of the patches, the DynamicViT/EViT convention); the pruned ones are averaged into
    one package token per selector, so a block computes on prefix + kept patches + the packages so far.

    Training: pruned tokens are masked as attention keys (``state.policy``); the selectors' decisions are drawn by
    the rule ``state.train.spvit_draw`` (:data:`.algorithm.TRAIN_DRAWS`, :func:`train_draw`): by default exactly the scheduled
    count, a Gumbel top-k whose noise anneals to 0 over ``state.progress``, the pruned removed after the selector's
    own block; or, with ``"logodds"``, per token around the target's log-odds, every token kept in every block. The
    decisions (B, N) and targets land in the forward's :class:`SPViTRecord` (``state.method``) for the keep-ratio loss and
    the latency loss (the device table's cost of the soft token counts). Inference: exact top-k and packaging.
    Latency: ``spvit_select(n, k)`` before a pruning block, then ``block(n)`` at the scheduled counts."""

    name = "spvit"
    new_parameters = ("token_selectors.",)
    inference_parameters = new_parameters  # the selectors score the tokens inference keeps

    def schedule(self, keep: Mapping[int, float], *, depth: int, num_patches: int, num_prefix: int,
                 pool: str = "token") -> TokenSchedule:
        steps, alive = compound_steps(keep, depth, num_patches)
        starts = {s.block for s in steps}
        counts, packages = [], 0
        for block, n in enumerate(alive):
            packages += block in starts
            counts.append(num_prefix + n + packages)
        final = counts[-1] if counts else num_prefix + num_patches
        return TokenSchedule(self.name, num_prefix, num_patches, tuple(counts), tuple(steps), final)

    def patch(self, model: nn.Module, schedule: TokenSchedule) -> None:
        ref = next(model.parameters())
        for step in schedule.selectors:
            if str(step.block) not in model.token_selectors:
                model.token_selectors[str(step.block)] = spvit.MultiHeadTokenSelector(
                    model.embed_dim, model.blocks[0].attn.num_heads, keep_prior=step.n_keep / step.n_in,
                ).to(device=ref.device, dtype=ref.dtype)

    def forward_blocks(self, model: nn.Module, x: torch.Tensor, state: PruneState) -> torch.Tensor:
        state.method = SPViTRecord()
        return self._train(model, x, state) if model.training else self._infer(model, x, state)

    @staticmethod
    def _infer(model: nn.Module, x: torch.Tensor, state: PruneState) -> torch.Tensor:
        P, steps = model.num_prefix_tokens, {s.block: s for s in model.token_schedule.selectors}
        for i, blk in enumerate(model.blocks):
            if i in steps:
                x = spvit.select(model.token_selectors[str(i)], x, P, steps[i].n_in, steps[i].n_keep)
            x = run_block(blk, x, state)
        return x

    @staticmethod
    def _train(model: nn.Module, x: torch.Tensor, state: PruneState) -> torch.Tensor:
        # Learned rates keep masking in every block: a rate's task-loss gradient must see what a kept token does in
        # every later block; through the selector's block alone the task loss lowered the rates it should raise
        # (tests/training/test_learned.py::test_the_task_loss_alone_raises_the_rates).
        topk = train_draw(state) == "topk" and state.rates is None
        return (SPViT._train_topk if topk else SPViT._train_masked)(model, x, state)

    @staticmethod
    def _train_topk(model: nn.Module, x: torch.Tensor, state: PruneState) -> torch.Tensor:
        """Exactly k kept per draw. The block at a selector sees every patch, the pruned ones masked as keys, so
        every decision, kept or pruned, gets the gradient of attending to its token; after that block the pruned
        are removed, as inference removes them before it (the kept tokens' outputs are the same). Masking them in
        every later block too (:meth:`_train_masked`) gave the same brief accuracy on the clutter model at 2x the
        CPU time; removing them before the block, with a gradient only for the kept, lost 15-23 points
        (benchmarks/RESULTS.md#claim-spvit-removed)."""
        P, N = model.num_prefix_tokens, model.token_schedule.num_patches
        steps = {s.block: s for s in model.token_schedule.selectors}
        B = x.shape[0]
        where = torch.arange(N, device=x.device).expand(B, N)  # (B, n) each patch's index among all N
        for i, blk in enumerate(model.blocks):
            n = where.shape[1]
            if i in steps:
                decision, idx, pkg = spvit.prune_topk(
                    model.token_selectors[str(i)], x[:, P:P + n], steps[i].n_keep / n,
                    noise=selection_noise(state.progress))
                x = torch.cat([x, pkg], dim=1)  # [prefix, patches, old packages, new]
                state.policy = torch.cat([x.new_ones(B, P), decision, x.new_ones(B, x.shape[1] - P - n)], dim=1)
                state.method.keep_decisions.append(decision.new_zeros(B, N).scatter(1, where, decision))  # (B, N)
                state.method.keep_targets.append(steps[i].n_keep / N)
            x = run_block(blk, x, state)
            if i in steps:
                state.policy = None
                x = torch.cat([x[:, :P], gather_rows(x[:, P:P + n], idx), x[:, P + n:]], dim=1)
                where = where.gather(1, idx)
        return x

    @staticmethod
    def _train_masked(model: nn.Module, x: torch.Tensor, state: PruneState) -> torch.Tensor:
        """A count that varies per image: every token stays in every block, the pruned masked as keys."""
        P, N = model.num_prefix_tokens, model.token_schedule.num_patches
        steps = {s.block: s for s in model.token_schedule.selectors}
        alive = x.new_ones(x.shape[0], N)  # (B, N) patches not pruned so far
        packaged: list[torch.Tensor] = []  # per selector so far (B, 1): 1 if its package holds any token
        for i, blk in enumerate(model.blocks):
            if i in steps:
                keep = steps[i].n_keep / steps[i].n_in
                if state.rates is not None and i in state.rates:
                    keep = state.rates[i]  # the same share, learnable (its count is the schedule's)
                kept, pkg = spvit.prune_soft(model.token_selectors[str(i)], x[:, P:P + N], alive, keep,
                                             draw=train_draw(state), noise=selection_noise(state.progress))
                # A draw that pruned nothing has an empty package: masked out, since inference never has one
                # (attending to a zero token, it sent the selectors gradients of the tokens' scale, ~100).
                packaged.append(((alive - kept).detach().sum(dim=1, keepdim=True) > 0).to(x.dtype))
                alive = kept
                x = torch.cat([x, pkg], dim=1)  # packages are appended and attended to from then on
                state.method.keep_decisions.append(alive)
                state.method.keep_targets.append(steps[i].n_keep / N)
                state.policy = torch.cat([x.new_ones(x.shape[0], P), alive, *packaged], dim=1)  # (B, P + N + S)
            x = run_block(blk, x, state)
        return x

    def loss(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], state: PruneState, schedule: TokenSchedule,
             y: torch.Tensor, weights: Any, latency: Any | None) -> torch.Tensor:
        record = state.method if isinstance(state.method, SPViTRecord) else None
        if record is None or not record.keep_decisions:
            return loss
        parts["ratio"] = keep_ratio_loss(record.keep_decisions, record.keep_targets)
        loss = loss + weights.ratio * parts["ratio"]
        if latency is not None and weights.latency > 0:
            soft = soft_block_tokens(record.keep_decisions, [s.block for s in schedule.selectors],
                                     depth=schedule.depth, num_prefix=schedule.num_prefix)
            parts["latency"] = latency.loss(soft, schedule.block_tokens)
            loss = loss + weights.latency * parts["latency"]
        return loss

    def curriculum(self, config: Any, settings: Any) -> tuple[list[tuple[Any, bool]], tuple[float, ...] | None, str]:
        """Layer-to-phase: selectors inserted in block order, one phase per selector group."""
        groups = selector_groups(config.keep, settings.merge_tol)
        phases = [(restricted(config, [b for g in groups[:k + 1] for b in g]), False) for k in range(len(groups))]
        return phases, None, f"{config} (one phase per selector group {groups})"

    def kinds(self) -> tuple[ComponentKind, ...]:
        return latency.KINDS

    def components(self, schedule: TokenSchedule) -> list[Component]:
        steps = {s.block: s for s in schedule.selectors}
        out: list[Component] = []
        for i, n in enumerate(schedule.block_tokens):
            if i in steps:
                out.append(("spvit_select", steps[i].n_in, steps[i].n_keep))
            out.append(("block", n, 0))
        return out

