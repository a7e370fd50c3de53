"""ToMe's token merging as tensor functions (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023).

Bipartite soft matching: the tokens after the prefix alternate between two sets by their position in the sequence,
A (even positions) and B (odd). Each A token finds its most similar B token (cosine similarity of the attention
keys, mean over heads); the r A tokens with the best matches are merged into their B tokens, the rest stay.
Merging is a size-weighted average: every token carries ``size``, how many patches it stands for, and the model's
attention adds log(size) to each key's logits (proportional attention, ``PruneState.key_bias``).

With one class token this is the official ``bipartite_soft_matching(class_token=True)``: the official A set holds
the class token at row 0 with its scores at -inf, which is the same as leaving the prefix out of both sets; the
output order is the official one, [prefix, unmerged A in sequence order, B]. Without a prefix it is the official
``class_token=False``: the unmerged A tokens stay in order of similarity (which decides the next block's A/B).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...tokens import gather_rows


@dataclass(frozen=True)
class Matching:
    """Which A token goes where (indices into A and B of one forward)."""

    num_prefix: int
    unmerged: torch.Tensor  # (B, |A| - r) A tokens that stay
    src: torch.Tensor  # (B, r) A tokens merged away
    dst: torch.Tensor  # (B, r) the B token each of them joins

    @property
    def r(self) -> int:
        return self.src.shape[1]


def split(x: torch.Tensor, num_prefix: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, ...) -> prefix (B, P, ...), A (even positions >= P), B (odd positions >= P)."""
    first_a = num_prefix + num_prefix % 2
    first_b = num_prefix + 1 - num_prefix % 2
    return x[:, :num_prefix], x[:, first_a::2], x[:, first_b::2]


def max_merges(tokens: int, num_prefix: int) -> int:
    """The most tokens one matching can merge: all of A (the even positions after the prefix)."""
    first_a = num_prefix + num_prefix % 2
    return max(0, (tokens - first_a + 1) // 2)


def bipartite_soft_matching(metric: torch.Tensor, r: int, num_prefix: int) -> Matching:
    """metric (B, T, D): the keys each token is matched by. r: tokens to merge, at most :func:`max_merges`."""
    with torch.no_grad():  # the matching is a discrete choice; gradients flow through the merge
        metric = metric / metric.norm(dim=-1, keepdim=True)
        _, a, b = split(metric, num_prefix)
        scores = a @ b.transpose(-1, -2)  # (B, |A|, |B|) cosine similarity
        best, best_b = scores.max(dim=-1)  # (B, |A|)
        order = best.argsort(dim=-1, descending=True)  # (B, |A|) most similar first
        src = order[:, :r]
        unmerged = order[:, r:]
        if num_prefix:  # as the official code: in sequence order behind a class token, else by similarity
            unmerged = unmerged.sort(dim=-1).values
        dst = best_b.gather(dim=-1, index=src)  # (B, r)
    return Matching(num_prefix, unmerged, src, dst)


def merge_sum(m: Matching, x: torch.Tensor) -> torch.Tensor:
    """(B, T, C) -> (B, T - r, C): each merged A token added onto its B token."""
    prefix, a, b = split(x, m.num_prefix)
    src = gather_rows(a, m.src)  # (B, r, C)
    b = b.scatter_add(1, m.dst[..., None].expand(-1, -1, x.shape[-1]), src)
    # [prefix, A's unmerged, B] as one gather from [prefix, A, B]: gathering A's unmerged alone is empty where all
    # of A merges, and an ONNX Reshape reads a 0 in its target shape as "keep this dim", breaking that graph
    P, n_a, n_b = prefix.shape[1], a.shape[1], b.shape[1]
    batch = m.unmerged.shape[0]
    keep = torch.cat([torch.arange(P, device=x.device).expand(batch, P), P + m.unmerged,
                      torch.arange(P + n_a, P + n_a + n_b, device=x.device).expand(batch, n_b)], dim=1)  # (B, T - r)
    return gather_rows(torch.cat([prefix, a, b], dim=1), keep)


def merge_weighted(m: Matching, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average: x (B, T, C) and size (B, T, 1) -> (B, T - r, C), (B, T - r, 1)."""
    x = merge_sum(m, x * size)
    size = merge_sum(m, size)
    return x / size, size


def merge_step(x: torch.Tensor, keys: torch.Tensor, size: torch.Tensor, r: int,
               num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One block's merge, what the model runs and the latency table times: match on the keys (B, T, D), then
    merge x (B, T, C) and size (B, T, 1) down to T - r tokens."""
    return merge_weighted(bipartite_soft_matching(keys, r, num_prefix), x, size)
