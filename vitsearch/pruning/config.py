"""PruneConfig, and the one function that turns it into the token count of every block.

A config names a method and, for each selector, the block it sits in front of and its keep ratio; what a keep
ratio means is the method's contract (:mod:`.methods`). Everything downstream (pruned inference, profiling,
prediction, FLOPs, export, reports) reads the per-block counts from :func:`token_schedule`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import VitsearchError
from .methods import method_of, pruning_methods
from .schedule import TokenSchedule


@dataclass(frozen=True)
class PruneConfig:
    method: str = "none"  # a name in the method registry (pruning.methods.METHODS); "none": the unpruned model
    keep: Mapping[int, float] = field(default_factory=dict)  # block index -> keep ratio of the selector before it

    def __post_init__(self) -> None:
        method = method_of(self.method)  # refuses an unknown name
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
        method.check_keep(keep)
        object.__setattr__(self, "keep", dict(sorted(keep.items())))

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(self.keep)

    @classmethod
    def parse(cls, spec: "str | Mapping[str, Any] | PruneConfig") -> "PruneConfig":
        """The normaliser for every accepted form: a PruneConfig, a dict from :meth:`to_dict`, or a string
        ``"METHOD:3=0.7,6=0.7,9=0.7"`` (METHOD a name in the registry) or ``"none"``."""
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
                    f"cannot read selector {item!r} in config {text!r}: write BLOCK=RATIO, e.g. "
                    f"'{pruning_methods()[0]}:3=0.7,6=0.7'")
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


def token_schedule(config: PruneConfig, *, depth: int, num_patches: int, num_prefix: int = 1,
                   pool: str = "token") -> TokenSchedule:
    """Per-block token counts of ``config`` on a ViT of the given geometry (``pool``: the stock model's
    global_pool, which decides what the head reads): the one normaliser. What a keep ratio means, and what extra
    tokens a block computes on, is the method's (:meth:`PruningMethod.schedule`)."""
    config = PruneConfig.parse(config)
    for block in config.keep:
        if block >= depth:
            raise VitsearchError(
                f"selector at block {block} does not exist: the model has {depth} blocks (0..{depth - 1})")
    return method_of(config.method).schedule(config.keep, depth=depth, num_patches=num_patches,
                                             num_prefix=num_prefix, pool=pool)


def canonical_key(config: PruneConfig, *, depth: int, num_patches: int, num_prefix: int = 1) -> str:
    """One model, one key: the method, the per-block token counts of its :func:`token_schedule` and the blocks
    whose selector prunes. Keep ratios that round to the same counts (``METHOD:4=0.5,8=0.49`` and
    ``METHOD:4=0.5,8=0.5`` on 64 patches, for a method whose ratios are shares of all patches) are one model,
    trained once; a config that prunes nothing is the unpruned model (``none``). The selector blocks are part of
    the key since a method may re-rank all patches at every selector: then ``METHOD:4=0.5,8=0.5`` re-selects at
    block 8 with the same counts as ``METHOD:4=0.5``."""
    schedule = token_schedule(config, depth=depth, num_patches=num_patches, num_prefix=num_prefix)
    if not schedule.selectors:
        return "none"
    counts = ",".join(str(n) for n in schedule.block_tokens)
    return f"{schedule.method}:{counts}@" + ",".join(str(s.block) for s in schedule.selectors)
