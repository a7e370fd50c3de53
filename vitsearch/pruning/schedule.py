"""The per-block token counts of a pruning config (its normalised form): what every consumer downstream reads.

Built by the method's :meth:`~vitsearch.pruning.methods.PruningMethod.schedule` (each method says what its keep
ratios mean), reached through :func:`vitsearch.pruning.config.token_schedule`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class SelectorStep:
    block: int  # the selector runs in front of this block
    n_in: int  # patch tokens ranked by the selector
    n_keep: int  # patch tokens it keeps (or sends down a slow path: the method says)

    @property
    def prunes(self) -> bool:
        return self.n_keep < self.n_in


@dataclass(frozen=True)
class TokenSchedule:
    method: str
    num_prefix: int  # class (and distillation / register) tokens, never pruned
    num_patches: int  # patch tokens out of the patch embedding
    block_tokens: tuple[int, ...]  # tokens each block's attention + MLP computes on, extras included
    selectors: tuple[SelectorStep, ...]  # only the selectors that remove something
    final_tokens: int  # tokens leaving the last block, read by the head (a method may restore the full structure)

    @property
    def depth(self) -> int:
        return len(self.block_tokens)


def kept_tokens(n: int, ratio: float) -> int:
    """Tokens a selector keeps of ``n``: rounded up, so ratio 1.0 keeps all and no ratio keeps none."""
    return max(1, min(n, math.ceil(n * ratio - 1e-6)))


def compound_steps(keep: Mapping[int, float], depth: int, num_patches: int) -> tuple[list[SelectorStep], list[int]]:
    """Compounding keep ratios (a selector keeps ``ratio`` of the patches that reached it): the selectors that
    prune something, and the patch tokens alive at every block."""
    n, steps, alive = num_patches, [], []
    for block in range(depth):
        if block in keep:
            k = kept_tokens(n, keep[block])
            if k < n:
                steps.append(SelectorStep(block, n, k))
            n = k
        alive.append(n)
    return steps, alive
