"""The pruning methods, one file or folder each, behind one contract (:class:`PruningMethod`). Adding a method: a
file or folder here and one line in :data:`METHODS`."""
from __future__ import annotations

from ...errors import VitsearchError
from .base import Component, PruningMethod
from .evit import EViT
from .evovit import EvoViT
from .none import NoPruning
from .spvit import SPViT
from .tome import ToMe

METHODS: dict[str, PruningMethod] = {m.name: m for m in (NoPruning(), SPViT(), EvoViT(), ToMe(), EViT())}


def method_of(name: str) -> PruningMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise VitsearchError(f"unknown pruning method {name!r}: expected one of {', '.join(METHODS)}") from None


def pruning_methods() -> tuple[str, ...]:
    """The methods that prune and that a search space may offer."""
    return tuple(n for n, m in METHODS.items() if m.prunes and m.profiled)


__all__ = ["METHODS", "PruningMethod", "Component", "method_of", "pruning_methods"]
