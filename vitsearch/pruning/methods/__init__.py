"""The pruning methods, one folder each (``<name>/``: its algorithm, its contract adapter and the latency
components it charges), behind one contract (:class:`PruningMethod`). The registry: adding a method is a folder
here and one line in :data:`METHODS`; nothing else in the package lists methods."""
from __future__ import annotations

from ...errors import VitsearchError
from .base import Component, ComponentKind, PruningMethod, Timed
from .evovit import EvoViT
from .none import NoPruning
from .spvit import SPViT

METHODS: dict[str, PruningMethod] = {m.name: m for m in (NoPruning(), SPViT(), EvoViT())}


def method_of(name: str) -> PruningMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise VitsearchError(f"unknown pruning method {name!r}: expected one of {', '.join(METHODS)}") from None


def pruning_methods() -> tuple[str, ...]:
    """The methods that prune (what a search space may offer)."""
    return tuple(n for n, m in METHODS.items() if m.prunes)


def component_kinds() -> dict[str, ComponentKind]:
    """Every component kind the registry's methods add to the stock ones, by name (a name declared twice is an
    error of the registry)."""
    out: dict[str, ComponentKind] = {}
    for method in METHODS.values():
        for kind in method.kinds():
            if kind.name in out:
                raise ValueError(f"component kind {kind.name!r} is declared by two methods")
            out[kind.name] = kind
    return out


__all__ = ["METHODS", "PruningMethod", "Component", "ComponentKind", "Timed", "component_kinds", "method_of",
           "pruning_methods"]
