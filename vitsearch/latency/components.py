"""The components a pruned ViT's forward is made of, as small torch modules built from a real patched model.

A latency table has one row per (component kind, token counts). Each component module runs exactly the code
the patched model's forward runs for that piece: the same timm submodules and the same step functions, never a
re-implementation. The stock kinds are here; every other kind is declared by the pruning method whose forward
runs it (:meth:`vitsearch.pruning.PruningMethod.kinds`, reached through the method registry), with its grid and
the module that times it. :func:`components_of` is the other half of that contract: the list of components one
forward of a given config runs, in the order its method runs them.

Stock kinds (``n``: tokens the component computes on):

- ``overhead``: an Identity graph; the fixed cost of one runtime call, which a whole model pays once.
- ``embed``: patch embedding, position embedding, class token, ``norm_pre``.
- ``block`` (n): one stock transformer block (:func:`vitsearch.pruning.state.run_block`).
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
from typing import Any, Callable

import torch
import torch.nn as nn

from ..models import ModelGeometry, geometry
from ..pruning import PruneConfig, PruneState, apply, method_of, prune_state, token_schedule
from ..pruning.methods import ComponentKind, Timed, component_kinds
from ..pruning.methods.base import span
from ..pruning.patch import PrunedViTMixin
from ..pruning.state import run_block


@dataclass(frozen=True, order=True)
class Point:
    """One component at given token counts: one row of a latency table, one term of a prediction."""

    kind: str
    n: int  # tokens the component computes on (the kind says which: see its method's latency module)
    k: int = 0  # patch tokens a selection keeps; 0 where the kind has no such count

    def __str__(self) -> str:
        return f"{self.kind}(n={self.n}, k={self.k})" if self.k else f"{self.kind}(n={self.n})"


# Stock components ---------------------------------------------------------------------------------------------

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
    """Every block in a row on n tokens, as every method's forward runs a stock block."""

    def __init__(self, model: nn.Module, state: PruneState) -> None:
        super().__init__()
        self.model, self.state = model, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            for blk in self.model.blocks:
                x = run_block(blk, x, self.state)
        finally:
            self.state.reset()
        return x


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


def _tokens(model: nn.Module, batch: int, gen: torch.Generator) -> Callable[[int, int], tuple[torch.Tensor, ...]]:
    return lambda n, k: (torch.randn(batch, n, model.embed_dim, generator=gen),)


def _image(model: nn.Module, batch: int, gen: torch.Generator) -> Callable[[int, int], tuple[torch.Tensor, ...]]:
    g = geometry(model)
    return lambda n, k: (torch.randn(batch, g.in_chans, *g.img_size, generator=gen),)


def _stock_grid(points: Callable[[Any], int] | None) -> Callable[[int, int, Any], list[tuple[int, int]]]:
    """n = all tokens (None), or about ``points(spec)`` counts in [P + 1, P + N]."""
    if points is None:
        return lambda P, N, spec: [(P + N, 0)]
    return lambda P, N, spec: [(n, 0) for n in span(P + 1, P + N, points(spec))]


N_AXIS = (((1, "n"),),)
STOCK: tuple[ComponentKind, ...] = (
    ComponentKind("overhead", "n", chain=False, selection=False, grid=_stock_grid(None),
                  build=lambda model, state, batch, gen: Timed(_Overhead(), _tokens(model, batch, gen), ((),))),
    ComponentKind("embed", "n", chain=False, selection=False, grid=_stock_grid(None),
                  build=lambda model, state, batch, gen: Timed(_Embed(model), _image(model, batch, gen), ((),))),
    ComponentKind("head", "n", chain=False, selection=False, grid=_stock_grid(lambda spec: spec.head_points),
                  build=lambda model, state, batch, gen: Timed(_Head(model), _tokens(model, batch, gen), N_AXIS)),
    ComponentKind("block", "n", chain=True, selection=False, grid=_stock_grid(lambda spec: spec.block_points),
                  build=lambda model, state, batch, gen: Timed(_Blocks(model, state), _tokens(model, batch, gen),
                                                               N_AXIS)),
)


def kinds() -> dict[str, ComponentKind]:
    """Every component kind a table may hold, by name: the stock ones, then the methods' in registry order (the
    order a profile measures them in)."""
    out = {k.name: k for k in STOCK}
    for name, kind in component_kinds().items():
        if name in out:
            raise ValueError(f"component kind {name!r} is a stock kind: a method must name its own")
        out[name] = kind
    return out


def component_graphs(model: nn.Module, batch: int = 1) -> dict[str, ComponentGraph]:
    """One :class:`ComponentGraph` per kind, sharing ``model``'s weights. ``model`` is patched for pruning
    (with its current config kept) if it is not already; it is put in eval mode."""
    if not isinstance(model, PrunedViTMixin):
        apply(model, PruneConfig())
    model.eval()
    state, depth = prune_state(model), len(model.blocks)
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, kind in kinds().items():
        timed = kind.build(model, state, batch, gen)
        out[name] = ComponentGraph(name, timed.module, depth if kind.chain else 1,
                                   lambda p, inputs=timed.inputs: inputs(p.n, p.k), timed.dynamic)
    return out


# The grid ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GridSpec:
    """How densely each kind is profiled. Block latency is not linear in n (GEMM tiling), so the block grids
    are dense; the small components are near-linear and cheap, so a few points suffice."""

    block_points: int = 25  # token grid of every kind that runs blocks (stock and a method's)
    head_points: int = 5
    select_rows: int = 9  # n (patches ranked) grid of a 2-D selection kind
    select_cols: int = 3  # k grid per row: 1, the middle, n - 1
    stage_points: int = 7  # k grid of a 1-D selection kind


def grid(g: ModelGeometry, spec: GridSpec = GridSpec()) -> list[Point]:
    """Every point a table for geometry ``g`` holds, kind by kind (each kind's grid is its declaration's). Covers
    every count a config can produce, so prediction only ever interpolates."""
    P, N = g.num_prefix_tokens, g.num_patches
    return [Point(name, n, k) for name, kind in kinds().items() for n, k in kind.grid(P, N, spec)]


# What a config runs ------------------------------------------------------------------------------------------

def components_of(config: PruneConfig | str, g: ModelGeometry) -> list[Point]:
    """The components one eval forward of ``config`` runs, in patch.py's order (``overhead`` once first).

    The method lists its own (:meth:`PruningMethod.components`, mirroring its eval forward with
    ``every_block=False``, the default)."""
    config = PruneConfig.parse(config)
    P, N = g.num_prefix_tokens, g.num_patches
    sched = token_schedule(config, depth=g.depth, num_patches=N, num_prefix=P, pool=g.global_pool)
    out = [Point("overhead", P + N), Point("embed", P + N)]
    out += [Point(kind, n, k) for kind, n, k in method_of(config.method).components(sched)]
    out.append(Point("head", sched.final_tokens))
    return out
