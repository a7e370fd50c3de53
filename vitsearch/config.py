"""PruneConfig, and the one function that turns it into the token count of every block.

A config names a method and, for each selector, the block it sits in front of and its keep ratio. Keep ratios
compound: a selector keeps ``ratio`` of the patch tokens that reached it (0.7 at blocks 3, 6, 9 keeps
70% / 49% / 34.3% of the patches, the DynamicViT/EViT convention). Everything downstream (pruned inference,
profiling, prediction, FLOPs, export, reports) reads the per-block counts from :func:`token_schedule`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import VitsearchError

METHODS = ("none", "spvit", "evovit")


@dataclass(frozen=True)
class PruneConfig:
    method: str = "none"  # "spvit" (soft pruning + packaging), "evovit" (slow-fast), or "none" (dense)
    keep: Mapping[int, float] = field(default_factory=dict)  # block index -> keep ratio of the selector before it

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise VitsearchError(f"unknown pruning method {self.method!r}: expected one of {', '.join(METHODS)}")
        keep: dict[int, float] = {}
        for block, ratio in dict(self.keep).items():
            block, ratio = int(block), float(ratio)
            if not (0.0 < ratio <= 1.0):
                raise VitsearchError(
                    f"keep ratio {ratio:g} for the selector at block {block} is outside (0, 1]: "
                    "give the fraction of tokens to keep, e.g. 0.7")
            if block < 0:
                raise VitsearchError(f"selector block {block} is negative: blocks are numbered from 0")
            keep[block] = ratio
        if self.method == "none" and keep:
            raise VitsearchError("method 'none' takes no selectors: choose spvit or evovit to prune")
        object.__setattr__(self, "keep", dict(sorted(keep.items())))

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(self.keep)

    @classmethod
    def parse(cls, spec: "str | Mapping[str, Any] | PruneConfig") -> "PruneConfig":
        """The normaliser for every accepted form: a PruneConfig, a dict from :meth:`to_dict`, or a string
        ``"spvit:3=0.7,6=0.7,9=0.7"`` / ``"evovit:4=0.5"`` / ``"none"``."""
        if isinstance(spec, PruneConfig):
            return spec
        if isinstance(spec, Mapping):
            return cls(method=str(spec.get("method", "none")), keep={int(k): v for k, v in dict(spec.get("keep", {})).items()})
        text = str(spec).strip()
        method, colon, rest = text.partition(":")
        if colon and not rest.strip():
            raise VitsearchError(f"config {text!r} names no selector after ':': write BLOCK=RATIO pairs, e.g. "
                                 f"'{method.strip()}:3=0.7,6=0.7', or 'none' for the unpruned model")
        keep: dict[int, float] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            m = re.fullmatch(r"(\d+)\s*=\s*([0-9]*\.?[0-9]+)", item)
            if not m:
                raise VitsearchError(
                    f"cannot read selector {item!r} in config {text!r}: write BLOCK=RATIO, e.g. 'spvit:3=0.7,6=0.7'")
            block = int(m.group(1))
            if block in keep:
                raise VitsearchError(f"config {text!r} gives block {block} two keep ratios: one selector per block, "
                                     "give each block once")
            keep[block] = float(m.group(2))
        return cls(method=method.strip().lower(), keep=keep)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "keep": {str(b): r for b, r in self.keep.items()}}

    def __str__(self) -> str:
        if not self.keep:
            return self.method
        return self.method + ":" + ",".join(f"{b}={r:g}" for b, r in self.keep.items())


@dataclass(frozen=True)
class SelectorStep:
    block: int  # the selector runs in front of this block
    n_in: int  # patch tokens ranked by the selector
    n_keep: int  # patch tokens it keeps (SPViT) or sends down the slow path (Evo-ViT)

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

    @property
    def depth(self) -> int:
        return len(self.block_tokens)

    @property
    def final_tokens(self) -> int:
        """Tokens leaving the last block (Evo-ViT restores the full structure)."""
        if self.method == "evovit":
            return self.num_prefix + self.num_patches
        return self.block_tokens[-1] if self.block_tokens else self.num_prefix + self.num_patches


def kept_tokens(n: int, ratio: float) -> int:
    """Tokens a selector keeps of ``n``: rounded up, so ratio 1.0 keeps all and no ratio keeps none."""
    return max(1, min(n, math.ceil(n * ratio - 1e-6)))


def token_schedule(config: PruneConfig, *, depth: int, num_patches: int, num_prefix: int = 1) -> TokenSchedule:
    """Per-block token counts of ``config`` on a ViT of the given geometry.

    SPViT: tokens = prefix + kept patches + one package token per selector that pruned something.
    Evo-ViT: the slow path computes on prefix + informative patches + one representative token; the other
    patches are carried along (structure preserved) and updated from the representative token's residual.
    """
    config = PruneConfig.parse(config)
    for block in config.keep:
        if block >= depth:
            raise VitsearchError(
                f"selector at block {block} does not exist: the model has {depth} blocks (0..{depth - 1})")
    if config.method == "evovit":
        if num_prefix < 1:
            raise VitsearchError("evovit ranks tokens by class-token attention, but this model has no class token")
        if 0 in config.keep:
            raise VitsearchError("evovit needs one block of class attention before its first selector: use block >= 1")
    n, packages, steps, counts = num_patches, 0, [], []
    for block in range(depth):
        if block in config.keep:
            k = kept_tokens(n, config.keep[block])
            if k < n:
                steps.append(SelectorStep(block, n, k))
                packages += config.method == "spvit"
            n = k
        extra = packages if config.method == "spvit" else int(config.method == "evovit" and n < num_patches)
        counts.append(num_prefix + n + extra)
    return TokenSchedule(config.method, num_prefix, num_patches, tuple(counts), tuple(steps))


def canonical_key(config: PruneConfig, *, depth: int, num_patches: int, num_prefix: int = 1) -> str:
    """One model, one key: the method and the per-block token counts of its :func:`token_schedule`. Keep ratios
    that round to the same counts (``evovit:3=0.1,4=0.15`` and ``evovit:4=0.2``) are one model, trained once;
    a config that prunes nothing is the unpruned model (``none``)."""
    schedule = token_schedule(config, depth=depth, num_patches=num_patches, num_prefix=num_prefix)
    if not schedule.selectors:
        return "none"
    return f"{schedule.method}:" + ",".join(str(n) for n in schedule.block_tokens)
