"""The contract every token-pruning method fulfils (one folder per method, ``methods/<name>/``,
holding the algorithm as tensor functions, the adapter that runs it inside a stock timm ViT, and the latency
components it charges).

A method is a stateless singleton registered by name in :data:`vitsearch.pruning.methods.METHODS`. The shared
modules (config, patch, training, progressive planner, the latency model) call only what this class declares,
so adding a method is one folder and one registry line.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
import torch.nn as nn

from ...errors import VitsearchError
from ..schedule import TokenSchedule
from ..state import PruneState

# (kind, n, k): one component of the latency model (``latency.components.Point``), see :meth:`components`.
Component = tuple[str, int, int]
# Per input of a timed module: its (axis, dim name) pairs that vary between grid points ("n" or "k").
Dynamic = tuple[tuple[tuple[int, str], ...], ...]


@dataclass(frozen=True)
class Timed:
    """The torch module a latency table times for one component kind, and how to feed it at a grid point."""

    module: nn.Module
    inputs: Callable[[int, int], tuple[torch.Tensor, ...]]  # example inputs at (n, k)
    dynamic: Dynamic


@dataclass(frozen=True)
class ComponentKind:
    """One kind of latency-table row (a component of the latency model) and how to profile it.

    The module ``build`` returns calls the very step function the method's forward calls for that piece, so
    what inference runs is what a table charges. Token counts enter the module as tensor *shapes* (a kept count
    ``k`` as the length of a ``count`` input whose values are never read), so one export with dynamic axes serves
    every grid point."""

    name: str  # the kind's name in a table's rows; never renamed (tables on disk are keyed by it)
    axis: str  # what a prediction interpolates along: "n", "k", or "nk" (bilinear in n and k relative to n)
    chain: bool  # the module runs every block of the model in a row; the table stores the cost of one
    selection: bool  # token selection or bookkeeping (Prediction.selection_ms), not transformer blocks
    grid: Callable[[int, int, Any], list[tuple[int, int]]]  # (prefix P, patches N, latency.GridSpec) -> (n, k)s
    # (patched model in eval mode, its PruneState, batch, generator of the example inputs) -> the timed module
    build: Callable[[nn.Module, PruneState, int, torch.Generator], Timed]


def span(lo: int, hi: int, points: int) -> list[int]:
    """About ``points`` integers from lo to hi inclusive, evenly spaced, both ends always included (a grid axis)."""
    if hi <= lo:
        return [lo]
    step = max(1, round((hi - lo) / max(points - 1, 1)))
    return sorted(set(range(lo, hi, step)) | {hi})


class PruningMethod:
    """One token-pruning method.

    - **Keep ratios** (:meth:`schedule`): the method alone says what ``keep = {block: ratio}`` means and turns it
      into the per-block token counts (:class:`TokenSchedule`) that inference must produce exactly, that the
      latency model charges and that the FLOPs counter and ONNX export see. :meth:`check_keep` refuses a config
      the method cannot run, before any model exists.
    - **Patching** (:meth:`check_model`, :meth:`patch`): ``patch(model, schedule)`` runs on a model already
      converted by :func:`vitsearch.pruning.apply` (class swapped, attention patched, ``token_selectors`` made).
      It refuses a model it cannot handle correctly (pooling, token layout) with a :class:`VitsearchError`, and
      adds the modules the method trains (their ``state_dict`` prefixes in :attr:`new_parameters`, trained at the
      selector learning rate). It keeps modules that already exist: patching again only changes the config
      (weight sharing across configs).
    - **Forward** (:meth:`forward_blocks`, :meth:`after_pooling`): runs the model's blocks on (B, P + N, C)
      embedded tokens, appending each block's input token count to ``state.block_tokens``; in training mode it
      records in ``state`` what its loss reads (keep decisions, auxiliary logits). ``state.policy`` and
      ``state.record_cls_attn`` are how it talks to the patched attention.
    - **Loss** (:meth:`loss`): adds the method's terms to the shared CE + distillation loss.
    - **Curriculum** (:meth:`curriculum`): the phases finalize trains the config through.
    - **Latency** (:meth:`kinds`, :meth:`components`): the component kinds the method adds to the stock ones
      (``overhead``, ``embed``, ``block``, ``head``), each with its grid and its timed module, and the components
      one eval forward runs, in order, at the schedule's counts. The latency model knows no method: it profiles
      and predicts the kinds the registry's methods declare.
    """

    name: ClassVar[str]
    prunes: ClassVar[bool] = True  # False only for the identity: the search space offers the others
    new_parameters: ClassVar[tuple[str, ...]] = ()  # state_dict prefixes of the modules patch() adds
    # Those of them an eval forward reads: left untrained they change the model's output (an export refuses them).
    inference_parameters: ClassVar[tuple[str, ...]] = ()

    # Config ------------------------------------------------------------------------------------------------
    def check_keep(self, keep: Mapping[int, float]) -> None:
        """Refuse selectors this method cannot run (called by PruneConfig)."""

    def schedule(self, keep: Mapping[int, float], *, depth: int, num_patches: int, num_prefix: int,
                 pool: str = "token") -> TokenSchedule:
        raise NotImplementedError

    # Model -------------------------------------------------------------------------------------------------
    def check_model(self, model: nn.Module) -> None:
        """Refuse a model whose pooling or token layout the method does not handle."""

    def pooling(self, base: str, schedule: TokenSchedule) -> str:
        """What the classifier pools (timm's ``global_pool``: "token" or "avg"), given the stock model's."""
        return base

    def patch(self, model: nn.Module, schedule: TokenSchedule) -> None:
        """Add the trained modules the schedule needs (and keep existing ones)."""

    def forward_blocks(self, model: nn.Module, x: torch.Tensor, state: PruneState) -> torch.Tensor:
        """(B, P + N, C) embedded tokens -> the last block's output (B, schedule.final_tokens, C)."""
        raise NotImplementedError

    def after_pooling(self, model: nn.Module, x: torch.Tensor, state: PruneState) -> None:
        """Training only: read the final normed tokens (B, final_tokens, C), e.g. for an auxiliary head."""

    # Training ----------------------------------------------------------------------------------------------
    def loss(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], state: PruneState, schedule: TokenSchedule,
             y: torch.Tensor, weights: Any, latency: Any | None) -> torch.Tensor:
        """``loss`` (CE + distillation) with the method's terms; each term is also put in ``parts``.
        ``weights``: training.LossWeights; ``latency``: training.SoftLatency or None."""
        return loss

    def curriculum(self, config: Any, settings: Any) -> tuple[list[tuple[Any, bool]], tuple[float, ...] | None, str]:
        """Finalize's phases: ([(config trained in the phase, re-select at every block)], default phase
        boundaries as shares of the steps (None: even), what the phases are (for messages)).
        ``settings``: training.progressive.FinalizeSettings."""
        return [(config, False)], None, "one phase"

    # Latency -----------------------------------------------------------------------------------------------
    def kinds(self) -> tuple[ComponentKind, ...]:
        """The component kinds this method's forward adds to the stock ones (names unique across the registry)."""
        return ()

    def components(self, schedule: TokenSchedule) -> list[Component]:
        """The components between the embedding and the head of one eval forward, in order: the stock ``block``
        and this method's :attr:`kinds`."""
        raise NotImplementedError


def restricted(config: Any, blocks: Sequence[int]) -> Any:
    """``config`` (a PruneConfig) with only the selectors at ``blocks``."""
    return dataclasses.replace(config, keep={b: r for b, r in config.keep.items() if b in blocks})


def refuse(method: str, what: str, fix: str) -> VitsearchError:
    return VitsearchError(f"{method} cannot prune this model: {what}; {fix}")
