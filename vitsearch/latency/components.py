"""The components a pruned ViT's forward is made of, as small torch modules built from a real patched model.

A latency table has one row per (component kind, token counts). Each component module here runs exactly the
code the patched model's ``forward_features`` runs for that piece (``vitsearch/pruning/patch.py``): the same
timm submodules and the same pruning functions (``spvit.prune_hard``, ``evovit.enter_stage`` ...), never a
re-implementation. :func:`components_of` is the other half of that contract: the list of components one
forward of a given config runs, in the order patch.py runs them.

Kinds (``n``: tokens the component computes on; ``k``: patch tokens a selector keeps):

- ``overhead``: an Identity graph; the fixed cost of one runtime call, which a whole model pays once.
- ``embed``: patch embedding, position embedding, class token, ``norm_pre``.
- ``block`` (n): one stock transformer block.
- ``block_cls`` (n): a block that also records the class token's attention and turns it into Evo-ViT's score
  (the block in front of Evo-ViT's first selector).
- ``spvit_select`` (n = patches ranked, k = kept): selector MLP, top-k, gather, package token, concatenation.
- ``evo_stage`` (k): Evo-ViT entering a stage (argsort, gathers, representative token) and leaving it
  (inverse argsort, gathers, concatenation); every stage does both exactly once, except that an open last stage
  (a class-token head, which never reads its placeholders) only enters: ``evo_enter`` (k).
- ``evo_block`` (k) / ``evo_block_cls`` (k): one slow-path step (concatenate, block on P + k + 1 tokens, fast
  update of the placeholders), without / with class-attention recording. ``evo_block`` is the last stage's, whose
  fast update the profiled model computes only if its head reads the placeholders.
- ``head``: final norm over n tokens, pooling, classifier.

Blocks are measured as a chain of every block of the model in a row (``steps`` = depth), and the table stores
the per-step cost. Why: a lone block's weights stay in the CPU cache between repeats, while in a whole model
each block's weights were evicted by the other blocks' (DeiT-S: 7 MB per block, 85 MB in all), so a lone
block measures faster than it runs in situ. The chain also spreads the per-call overhead over many steps.

Token counts enter the graphs as tensor *shapes*, so one export with dynamic axes serves every grid point (see
:mod:`vitsearch.latency.artefacts`). A kept count ``k`` is carried by a ``count`` input of shape (k,), whose
values are never read: only its length, which becomes the static ``k`` of top-k and slicing once the graph
is specialised to a grid point.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..errors import VitsearchError
from ..models import ModelGeometry, geometry
from ..pruning import PruneConfig, apply, evovit, method_of, pruning_methods, spvit, token_schedule
from ..pruning.patch import PrunedViTMixin

KINDS = ("overhead", "embed", "block", "block_cls", "spvit_select", "evo_stage", "evo_enter", "evo_block",
         "evo_block_cls", "head")


@dataclass(frozen=True, order=True)
class Point:
    """One component at given token counts: one row of a latency table, one term of a prediction."""

    kind: str
    n: int  # tokens the component computes on (patches ranked, for spvit_select; all patches, for evo_stage)
    k: int = 0  # patch tokens kept (spvit_select, evo_*); 0 where the kind has no such count

    def __str__(self) -> str:
        return f"{self.kind}(n={self.n}, k={self.k})" if self.k else f"{self.kind}(n={self.n})"


# Components ---------------------------------------------------------------------------------------------------

class _Overhead(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()  # exported as one Identity node


class _Embed(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(img))))  # patch.py's first line, (B, P + N, C)


class _Blocks(nn.Module):
    """Every block in a row on n tokens; ``record`` turns on the class-attention row and Evo-ViT's score."""

    def __init__(self, model: nn.Module, record: bool) -> None:
        super().__init__()
        self.model, self.record = model, record

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m, state = self.model, self.model._vitsearch
        scores = []
        try:
            for blk in m.blocks:
                state.record_cls_attn = self.record
                x = blk(x)
                if self.record:
                    scores.append(evovit.class_attention_score(state.cls_attn, m.num_prefix_tokens))
        finally:
            state.record_cls_attn, state.cls_attn = False, None
        return (x, *scores)  # every score is an output, so none of the recording is dead code


class _SpvitSelect(nn.Module):
    """One SPViT selector as ``_spvit_infer`` runs it, in front of one earlier package token."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.selector = spvit.MultiHeadTokenSelector(model.embed_dim, model.blocks[0].attn.num_heads)

    def forward(self, x: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        P = self.model.num_prefix_tokens
        n, k = x.shape[1] - P - 1, count.shape[0]  # x: (B, P + n + 1, C)
        kept, pkg = spvit.prune_hard(self.selector, x[:, P:P + n], k)
        return torch.cat([x[:, :P], kept, x[:, P + n:], pkg], dim=1)  # as in patch.py: prefix, kept, old, new


class _EvoStage(nn.Module):
    """Enter a stage (``enter_stage``) and leave it again (``leave_stage`` + concatenation), as ``_evovit`` does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, score: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        P = self.model.num_prefix_tokens
        stage, prefix = evovit.enter_stage(x[:, P:], score, count.shape[0]), x[:, :P]
        patches, score = evovit.leave_stage(stage)
        return torch.cat([prefix, patches], dim=1), score


class _EvoEnter(nn.Module):
    """Enter an open last stage (``enter_stage`` and the slow tokens), which a class-token head never leaves."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, score: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        P = self.model.num_prefix_tokens
        return evovit.slow_tokens(x[:, :P], evovit.enter_stage(x[:, P:], score, count.shape[0]))


class _EvoBlocks(nn.Module):
    """Every block in a row as slow-path steps of one stage (``slow_tokens`` -> block -> ``after_block``)."""

    def __init__(self, model: nn.Module, record: bool, fast: bool = True) -> None:
        super().__init__()
        self.model, self.record, self.fast = model, record, fast

    def forward(self, prefix: torch.Tensor, patches: torch.Tensor, score: torch.Tensor, rep: torch.Tensor,
                count: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m, state, P, k = self.model, self.model._vitsearch, self.model.num_prefix_tokens, count.shape[0]
        # order is read only by leave_stage, which is not part of this component.
        stage = evovit.EvoStage(order=score, informative=patches[:, :k], placeholders=patches[:, k:],
                                representative=rep, score=score)
        try:
            for blk in m.blocks:
                state.record_cls_attn = self.record
                out = blk(evovit.slow_tokens(prefix, stage))  # (B, P + k + 1, C)
                cls = evovit.class_attention_score(state.cls_attn, P) if self.record else None
                prefix = evovit.after_block(stage, out, P, cls, fast=self.fast)
        finally:
            state.record_cls_attn, state.cls_attn = False, None
        return prefix, stage.informative, stage.placeholders, stage.representative, stage.score


class _Head(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.norm(x))  # forward_features' last line, then forward_head


@dataclass
class ComponentGraph:
    """The torch module of one component kind and how to feed it at any grid point."""

    kind: str
    module: nn.Module
    steps: int  # steps one call runs (blocks in the chain); the table stores the cost of one step
    inputs: Callable[[Point], tuple[torch.Tensor, ...]]  # example inputs at a grid point
    dynamic: tuple[tuple[tuple[int, str], ...], ...]  # per input: its (axis, dim name) pairs that vary

    def example(self, point: Point) -> tuple[torch.Tensor, ...]:
        if point.kind != self.kind:
            raise ValueError(f"{point} is not a {self.kind} point")
        return self.inputs(point)


def component_graphs(model: nn.Module, batch: int = 1) -> dict[str, ComponentGraph]:
    """One :class:`ComponentGraph` per kind, sharing ``model``'s weights. ``model`` is patched for pruning
    (with its current config kept) if it is not already; it is put in eval mode."""
    if not isinstance(model, PrunedViTMixin):
        apply(model, PruneConfig())
    model.eval()
    g = geometry(model)
    B, P, N, C, H, W = batch, g.num_prefix_tokens, g.num_patches, g.embed_dim, *g.img_size
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    def score(n: int) -> torch.Tensor:  # class attention is a positive score; enter_stage clamps at 0
        return torch.rand(B, n, generator=gen)

    depth = g.depth
    return {
        "overhead": ComponentGraph("overhead", _Overhead(), 1, lambda p: (rand(B, P + N, C),), ((),)),
        "embed": ComponentGraph("embed", _Embed(model), 1, lambda p: (rand(B, g.in_chans, H, W),), ((),)),
        "block": ComponentGraph("block", _Blocks(model, record=False), depth, lambda p: (rand(B, p.n, C),),
                                (((1, "n"),),)),
        "block_cls": ComponentGraph("block_cls", _Blocks(model, record=True), depth, lambda p: (rand(B, p.n, C),),
                                    (((1, "n"),),)),
        "spvit_select": ComponentGraph(
            "spvit_select", _SpvitSelect(model), 1, lambda p: (rand(B, P + p.n + 1, C), torch.zeros(p.k)),
            (((1, "n"),), ((0, "k"),))),
        "evo_stage": ComponentGraph(
            "evo_stage", _EvoStage(model), 1, lambda p: (rand(B, P + N, C), score(N), torch.zeros(p.k)),
            ((), (), ((0, "k"),))),
        "evo_enter": ComponentGraph(
            "evo_enter", _EvoEnter(model), 1, lambda p: (rand(B, P + N, C), score(N), torch.zeros(p.k)),
            ((), (), ((0, "k"),))),
        "evo_block": ComponentGraph(
            "evo_block", _EvoBlocks(model, record=False, fast=method_of("evovit").reads_placeholders(g.global_pool)),
            depth,
            lambda p: (rand(B, P, C), rand(B, N, C), score(N), rand(B, 1, C), torch.zeros(p.k)),
            ((), (), (), (), ((0, "k"),))),
        "evo_block_cls": ComponentGraph(
            "evo_block_cls", _EvoBlocks(model, record=True), depth,
            lambda p: (rand(B, P, C), rand(B, N, C), score(N), rand(B, 1, C), torch.zeros(p.k)),
            ((), (), (), (), ((0, "k"),))),
        "head": ComponentGraph("head", _Head(model), 1, lambda p: (rand(B, p.n, C),), (((1, "n"),),)),
    }


# The grid ----------------------------------------------------------------------------------------------------

def _span(lo: int, hi: int, points: int) -> list[int]:
    """About ``points`` integers from lo to hi inclusive, evenly spaced, both ends always included."""
    if hi <= lo:
        return [lo]
    step = max(1, round((hi - lo) / max(points - 1, 1)))
    return sorted(set(range(lo, hi, step)) | {hi})


@dataclass(frozen=True)
class GridSpec:
    """How densely each kind is profiled. Block latency is not linear in n (GEMM tiling), so the block grids
    are dense; the small components are near-linear and cheap, so a few points suffice."""

    block_points: int = 25  # n grid of block / evo_block / evo_block_cls
    head_points: int = 5
    select_rows: int = 9  # n (patches ranked) grid of spvit_select
    select_cols: int = 3  # k grid per row: 1, the middle, n - 1
    stage_points: int = 7  # k grid of evo_stage


def grid(g: ModelGeometry, spec: GridSpec = GridSpec()) -> list[Point]:
    """Every point a table for geometry ``g`` holds. Covers every count a config can produce, so prediction
    only ever interpolates: block n in [P+1, P+N], slow-path k in [1, N-1], selector k in [1, n-1]."""
    P, N = g.num_prefix_tokens, g.num_patches
    pts = [Point("overhead", P + N), Point("embed", P + N), Point("block_cls", P + N)]
    pts += [Point("block", n) for n in _span(P + 1, P + N, spec.block_points)]
    pts += [Point("head", n) for n in _span(P + 1, P + N, spec.head_points)]
    for kind in ("evo_block", "evo_block_cls"):
        pts += [Point(kind, P + k + 1, k) for k in _span(1, N - 1, spec.block_points)]
    pts += [Point(kind, N, k) for kind in ("evo_stage", "evo_enter") for k in _span(1, N - 1, spec.stage_points)]
    for n in _span(2, N, spec.select_rows):
        pts += [Point("spvit_select", n, k) for k in _span(1, n - 1, spec.select_cols)]
    return pts


# What a config runs ------------------------------------------------------------------------------------------

def components_of(config: PruneConfig | str, g: ModelGeometry) -> list[Point]:
    """The components one eval forward of ``config`` runs, in patch.py's order (``overhead`` once first).

    The method lists its own (:meth:`PruningMethod.components`, mirroring its eval forward with
    ``evo_every_block=False``, the default)."""
    config = PruneConfig.parse(config)
    method = method_of(config.method)
    if not method.profiled:
        raise VitsearchError(f"latency tables do not profile {method.name} yet, so {config} has no latency "
                             "prediction: predict, profile and search cover " + ", ".join(pruning_methods())
                             + "; export it and measure the ONNX file on the device instead")
    P, N = g.num_prefix_tokens, g.num_patches
    sched = token_schedule(config, depth=g.depth, num_patches=N, num_prefix=P, pool=g.global_pool)
    out = [Point("overhead", P + N), Point("embed", P + N)]
    out += [Point(kind, n, k) for kind, n, k in method.components(sched)]
    out.append(Point("head", sched.final_tokens))
    return out
