"""Token movement shared by the pruning methods, written as what inference runtimes execute well."""
from __future__ import annotations

import torch


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The tokens of x (B, N, C), or scores (B, N), at idx (B, K): (B, K, C) or (B, K).

    Whole rows of the flattened batch, one ``Gather``: a gather along the token axis (``GatherElements``) reads an
    index per element, which cost onnxruntime about 3x more (issue 18)."""
    B, N = x.shape[:2]
    rows = (idx + torch.arange(B, device=idx.device)[:, None] * N).reshape(-1)  # (B * K,)
    return x.flatten(0, 1)[rows].reshape(idx.shape + x.shape[2:])


def weighted_mean(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The average of the tokens x (B, N, C) weighted by ``weights`` (B, N), zero where all are zero: (B, 1, C)."""
    total = weights.sum(dim=1, keepdim=True)  # (B, 1)
    # All-zero weights (a training draw that pruned nothing) divide by 1, not by a tiny clamp, whose
    # gradient x / 1e-6 blew up every selector upstream; the model also masks such a package out of attention.
    total = torch.where(total > 0, total, torch.ones_like(total))
    # One batched matmul (B, 1, N) @ (B, N, C): a broadcast multiply and a sum over N cost onnxruntime 3x more.
    return (weights / total)[:, None, :] @ x
