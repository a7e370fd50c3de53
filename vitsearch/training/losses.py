"""The computation-aware training loss of a pruned candidate.

L = CE + ratio_w · keep-ratio loss + latency_w · latency loss + distill_w · KL(teacher ‖ student) [+ aux_w · CE(aux)]

The method adds its own terms (:meth:`vitsearch.pruning.PruningMethod.loss`); the shared pieces live here.

- keep-ratio loss (SPViT's, :func:`vitsearch.pruning.methods.spvit.keep_ratio_loss`): per-sample keep fraction
  of each selector's Gumbel decisions against the schedule's target (DynamicViT's per-sample mean, so each image
  prunes as much as the fixed-k inference will). The default training draw keeps exactly the target count
  (``TrainSettings.spvit_draw = "topk"``), so this term and the latency term are 0 in its forward; under
  ``"logodds"`` the decisions are drawn around the target and they act on how far single images stray from it.
- latency loss: the device table's latency of the *soft* per-block token counts (mean decisions), a
  differentiable piecewise-linear read of the table, over the latency of the candidate's schedule; penalised
  only above it. Selectors whose tokens cost more on this device get pushed harder.
- assisted CLS loss (Evo-ViT): the auxiliary head on the other pooling.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .settings import LossWeights  # re-exported: the loss weights live with the other settings


class PiecewiseLinear:
    """A latency curve ms(tokens) read from a table, differentiable in the token count."""

    def __init__(self, tokens: Sequence[float], ms: Sequence[float]) -> None:
        order = sorted(range(len(tokens)), key=lambda i: tokens[i])
        self.x = torch.tensor([float(tokens[i]) for i in order])
        self.y = torch.tensor([float(ms[i]) for i in order])
        if len(self.x) < 2:
            raise ValueError("a latency curve needs at least two profiled token counts")

    def __call__(self, n: torch.Tensor) -> torch.Tensor:
        xs, ys = self.x.to(n.device), self.y.to(n.device)  # n lives where training runs (a GPU, say)
        n = n.clamp(xs[0], xs[-1])
        i = torch.searchsorted(xs, n.detach().reshape(1), right=True).clamp(1, len(xs) - 1)[0]
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (n - x0) / (x1 - x0)


def latency_loss(soft_tokens: Sequence[torch.Tensor], curve: PiecewiseLinear, target_ms: float) -> torch.Tensor:
    soft_ms = torch.stack([curve(n) for n in soft_tokens]).sum()
    return F.relu(soft_ms / target_ms - 1.0) ** 2


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t
