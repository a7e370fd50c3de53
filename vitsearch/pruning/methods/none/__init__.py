"""``none``: the unpruned model through the patched code path (:mod:`.method`); it adds no latency kinds."""
from .method import NoPruning

__all__ = ["NoPruning"]
