"""SPViT soft token pruning (Kong et al., ECCV 2022): multi-head token selector and token packaging.

The selector scores every patch token per head, weights the heads by a learned per-token head importance,
and aggregates one keep score per token. Pruned tokens are not discarded: they are *packaged* into one token,
their average weighted by their keep scores (:func:`vitsearch.pruning.tokens.weighted_mean`), appended after the
kept tokens and never pruned again.

Training draws hard Gumbel decisions whose pruned tokens are masked as keys in attention, so gradients reach the
selector. By default (``"topk"``, :func:`prune_topk`) a draw keeps exactly the scheduled count, annealed to the
inference top-k, and the model removes the pruned tokens after the one block that masks them; the per-token
``"logodds"`` draw (:func:`prune_soft`) keeps a count that varies per image, so every token stays in every block.
Inference keeps a fixed top-k per image and physically removes the rest, so every shape is static and
export-friendly.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...schedule import kept_tokens
from ...tokens import gather_rows, weighted_mean


class MultiHeadTokenSelector(nn.Module):
    """Per-head keep log-odds, head-importance weights, aggregated per-token keep score.

    One scorer shared by all heads, as in the official code (its per-head module list repeats one instance): each
    head's slice of a token is a row, so every projection is one 2-D ``Gemm`` over (B * N * H) rows with its bias
    fused, and no transposes. Per-head weights (the paper's wording) made batched 3-D matmuls whose bias adds,
    transposes and softmaxes cost 3-5% of a DeiT-S for 0.4% of its FLOPs (issue 18; benchmarks/selector_cost.py).
    The forward is written for onnxruntime too: no mean over the token axis, no concatenation (see its comments)."""

    def __init__(self, dim: int, num_heads: int, keep_prior: float = 0.5) -> None:
        """``keep_prior``: the keep probability ``p_keep`` every token starts with (the selector's target). The
        training decisions are drawn around the target whatever the level (:func:`prune_soft`); ``p_keep`` also
        weights the package, which then starts from the target's weights."""
        super().__init__()
        hd = dim // num_heads
        self.num_heads, self.head_dim = num_heads, hd
        self.norm = nn.LayerNorm(hd)
        self.in_proj = nn.Linear(hd, hd)
        self.out = nn.ModuleList([
            nn.Linear(hd, max(hd // 2, 1)),
            nn.Linear(max(hd // 2, 1), max(hd // 4, 1)),
            nn.Linear(max(hd // 4, 1), 1),  # the head's keep log-odds (the official [keep, drop] logits' difference)
        ])
        hidden = max(num_heads // 2, 1)
        # Head importance, SE style: each head's mean activation per token -> a weight in (0, 1) per head.
        self.head_gate = nn.Sequential(nn.Linear(num_heads, hidden), nn.GELU(), nn.Linear(hidden, num_heads), nn.Sigmoid())
        p = min(max(keep_prior, 1e-3), 1 - 1e-3)
        with torch.no_grad():
            self.out[-1].bias.fill_(math.log(p / (1 - p)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, C) patch tokens; mask: (B, N) tokens still alive (the global context pools over them).
        Returns (keep log-odds (B, N), which rank tokens and draw training decisions; keep probability p_keep
        (B, N), which weights the package).

        Each head scores a token with its keep log-odds d. The token's log-odds are the importance-weighted sum of
        the heads' d (the official weighted sum of log_softmax([keep, drop]), differenced); p_keep is the weighted
        sum of the heads' keep probabilities sigmoid(d)."""
        B, N = x.shape[:2]
        H, hd = self.num_heads, self.head_dim
        w = self.head_gate(x.reshape(B, N, H, hd).mean(dim=-1))  # (B, N, H)
        w = w / w.sum(dim=-1, keepdim=True)
        rows = self.norm(x.reshape(-1, hd))  # (B * N * H, hd): one row per (token, head)
        # out[0] reads [the local half of in_proj's output, the global half pooled over the tokens]. Each half is
        # computed on its own and out[0] applied as W_local @ local + W_global @ context, so no concatenation (a
        # Split, an Expand and a Concat per selector) and no product with the half a row does not read.
        split, proj, first = hd // 2, self.in_proj, self.out[0]
        local = F.gelu(F.linear(rows, proj.weight[:split], proj.bias[:split]))  # (B * N * H, split)
        glob = F.gelu(F.linear(rows, proj.weight[split:], proj.bias[split:])).reshape(B, N, H * (hd - split))
        # The context, the mean of the global half over the alive tokens, as one matmul (a ReduceMean over the
        # token axis cost onnxruntime 3x more).
        alive = x.new_ones(B, N) if mask is None else mask  # all ones at inference: a constant runtimes fold
        pool = (alive / alive.sum(dim=1, keepdim=True).clamp_min(1e-6))[:, None]  # (B, 1, N)
        context = (pool @ glob).reshape(B, H, hd - split)
        h = F.linear(local, first.weight[:, :split], first.bias).reshape(B, N, H, -1)
        h = F.gelu(h + F.linear(context, first.weight[:, split:])[:, None]).reshape(-1, first.out_features)
        for layer in self.out[1:-1]:
            h = F.gelu(layer(h))
        d = self.out[-1](h).reshape(B, N, H)  # each head's keep log-odds
        return (w * d).sum(dim=-1), (w * torch.sigmoid(d)).sum(dim=-1)


def prune_hard(selector: MultiHeadTokenSelector, patches: torch.Tensor, n_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference: keep the ``n_keep`` patches of (B, N, C) with the highest keep log-odds, package the rest.

    Ranked by the keep log-odds training draws its decisions from (:func:`prune_soft`), not by ``p_keep``, the
    head-weighted mean of probabilities that weights the package: the two orders can differ, and inference should
    keep what training learned to keep. Returns (kept (B, n_keep, C), package (B, 1, C))."""
    margin, p_keep = selector(patches)  # (B, N), (B, N)
    idx = margin.topk(n_keep, dim=1).indices  # (B, K)
    kept = gather_rows(patches, idx)  # (B, K, C)
    dropped = torch.ones_like(p_keep).scatter(1, idx, 0.0)  # (B, N) 1 = packaged
    return kept, weighted_mean(patches, dropped * p_keep)


TRAIN_DRAWS = ("topk", "logodds")  # the training draw rules (:func:`prune_topk`, :func:`prune_soft`); the first is the default


def prune_soft(
    selector: MultiHeadTokenSelector, patches: torch.Tensor, alive: torch.Tensor, keep: float | torch.Tensor, *,
    draw: str = TRAIN_DRAWS[0], noise: float = 1.0, tau: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training: straight-through keep decisions on the patches still alive, drawn by the rule ``draw``
    (:data:`TRAIN_DRAWS`: :func:`draw_topk`, the default, which alone reads ``noise``, or :func:`draw_logodds`).
    patches: (B, N, C); alive: (B, N). Returns (new alive mask (B, N), package (B, 1, C))."""
    margin, p_keep = selector(patches, alive)  # (B, N), (B, N)
    if draw == "logodds":
        decision = draw_logodds(margin, alive, _level(keep), tau)
    elif draw == "topk":
        decision = draw_topk(margin, alive, keep, noise, tau)
    else:
        raise ValueError(f"unknown SPViT training draw {draw!r}: expected one of {', '.join(TRAIN_DRAWS)}")
    dropped = alive - decision  # newly pruned by this selector
    return decision, weighted_mean(patches, dropped * p_keep)


def draw_logodds(margin: torch.Tensor, alive: torch.Tensor, keep: float, tau: float = 1.0) -> torch.Tensor:
    """Hard Gumbel-softmax decisions (straight-through), each token kept with about ``keep``: margin (B, N) keep
    log-odds, alive (B, N). Returns the decisions (B, N).

    A token's keep log-odds are its margin relative to the mean over the alive tokens, plus the log-odds of
    ``keep``: the level is pinned at the target and only the ranking is learned, which is all top-k inference
    uses. With a free level (the paper's) the first gradients raise every token's keep score at once, training
    keeps far more tokens than inference will, and the tens of steps of a brief training end before the ratio
    loss pulls the level back: on the digits default such a selector kept 7% of a digit's own patches (chance: 50%).
    The kept share is pinned in log-odds, not as a count: as the margins spread, training keeps more than the
    target (0.376 for a target of 0.25 at margin std 3)."""
    mean = (margin * alive).sum(dim=1, keepdim=True) / alive.sum(dim=1, keepdim=True).clamp_min(1.0)
    keep = min(max(keep, 1e-3), 1 - 1e-3)
    centred = margin - mean + math.log(keep / (1 - keep))
    logits = torch.stack([centred, torch.zeros_like(centred)], dim=-1)  # (B, N, 2) [keep, drop]
    return F.gumbel_softmax(logits, tau=tau, hard=True)[..., 0] * alive  # (B, N)


def prune_topk(
    selector: MultiHeadTokenSelector, patches: torch.Tensor, keep: float, *, noise: float = 1.0,
    tau: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training with exactly k kept: a :func:`draw_topk` of the patches (B, n, C) and their package, as
    :func:`prune_hard` packages. Returns (decisions (B, n), kept indices (B, k) best first, package (B, 1, C)); at
    ``noise = 0`` the kept indices are :func:`prune_hard`'s, in its order."""
    margin, p_keep = selector(patches)  # (B, n), (B, n)
    decision, idx = _topk_decisions(margin, torch.ones_like(margin), keep, noise, tau)
    return decision, idx, weighted_mean(patches, (1.0 - decision) * p_keep)


def draw_topk(margin: torch.Tensor, alive: torch.Tensor, keep: float | torch.Tensor, noise: float = 1.0,
              tau: float = 1.0) -> torch.Tensor:
    """A fixed-k Gumbel top-k on the keep log-odds margin (B, N) of the tokens alive (B, N), straight-through;
    every row has the same count n alive. Returns the decisions (B, N).

    Forward: exactly ``kept_tokens(n, keep)`` tokens per image, the top-k of the margins perturbed by Gumbel noise
    of scale ``noise`` (sampling without replacement by exp(margin / noise)); ``noise = 0`` is the inference
    top-k itself (the training loop anneals it 1 -> 0, :func:`vitsearch.pruning.methods.spvit.selection_noise`).
    Backward: through sigmoid((perturbed margin - threshold) / tau), the threshold halfway between the k-th and
    (k+1)-th perturbed margins, centred over the alive tokens (as :func:`draw_logodds` centres them). The kept
    count is the target's whatever the scores (:func:`draw_logodds` keeps a share pinned only in log-odds).
    Measured against it in benchmarks/spvit_train_match.py (benchmarks/RESULTS.md#claim-spvit-draw).

    ``keep`` may be a learnable rate (a 0-d tensor, the learned strategy's): it then gets the gradient of
    :func:`rate_surrogate`, how the loss changes as the cut moves down the ranking."""
    return _topk_decisions(margin, alive, keep, noise, tau)[0]


def _topk_decisions(margin: torch.Tensor, alive: torch.Tensor, keep: float | torch.Tensor, noise: float,
                    tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`draw_topk`'s decisions (B, N) and the kept indices (B, k), best first."""
    n = int(alive[0].sum().item())
    k = kept_tokens(n, _level(keep))
    # Centred over the alive tokens: the same top-k, but the straight-through gradient sums to zero per image.
    # Uncentred, its common part (every token "kept more") drove the selectors: on digits they learned to drop
    # the digit (3% of its patches kept at spvit:3=0.25, brief accuracy 0.77 against 0.92 for logodds).
    margin = margin - (margin * alive).sum(dim=1, keepdim=True) / alive.sum(dim=1, keepdim=True).clamp_min(1.0)
    if noise > 0:
        gumbel = -torch.empty_like(margin).exponential_().log()  # (B, N) standard Gumbel
        perturbed = margin + noise * gumbel
    else:
        perturbed = margin
    perturbed = perturbed.masked_fill(alive < 0.5, float("-inf"))  # the dead are never kept
    top = perturbed.topk(min(k + 1, n), dim=1)
    hard = torch.zeros_like(margin).scatter(1, top.indices[:, :k], 1.0)  # (B, N)
    decision = hard * alive
    if k < n:
        threshold = (top.values[:, k - 1:k] + top.values[:, k:k + 1]).detach() / 2  # (B, 1)
        soft = torch.sigmoid((perturbed.masked_fill(alive < 0.5, 0.0) - threshold) / tau) * alive
        decision = decision + (soft - soft.detach())  # exactly hard in the forward
    if isinstance(keep, torch.Tensor) and keep.requires_grad:
        decision = decision + rate_surrogate(perturbed.detach(), alive, keep, n)
    return decision, top.indices[:, :k]


def _level(keep: float | torch.Tensor) -> float:
    return float(keep.detach()) if isinstance(keep, torch.Tensor) else keep


def rate_surrogate(perturbed: torch.Tensor, alive: torch.Tensor, keep: torch.Tensor, n: int) -> torch.Tensor:
    """Zero in the forward; backward, the gradient of a soft cut at ``keep * n`` down the ranking of ``perturbed``
    (B, N) over the n alive tokens: d decision_i / d keep = n * sigmoid'((keep n - rank_i - 1/2) / w) / w, which
    sums to about n per image (keeping a share d keep more keeps n d keep more tokens). The width w (n / 16, at
    least one token) spreads the gradient over the tokens around the cut, so the rate learns from what keeping a
    few more or fewer of them does to the loss, not from one token's."""
    rank = perturbed.argsort(dim=1, descending=True).argsort(dim=1).to(perturbed.dtype)  # (B, N) 0 = best
    width = max(1.0, n / 16)
    # alive only masks the dead: through it the rate's surrogate would also send a second straight-through
    # gradient to the earlier selectors' decisions (and so to their rates), as if this cut had moved theirs.
    soft = torch.sigmoid((keep * n - rank - 0.5) / width) * alive.detach()
    return soft - soft.detach()


def select(selector: MultiHeadTokenSelector, x: torch.Tensor, num_prefix: int, n: int, n_keep: int) -> torch.Tensor:
    """Inference's selection step, which the latency component ``spvit_select`` times: of all tokens
    (B, P + n + S, C), the n patches after the prefix ranked, ``n_keep`` kept, the rest packaged.
    Returns (B, P + n_keep + S + 1, C): [prefix, kept, the S earlier packages, the new package]."""
    kept, pkg = prune_hard(selector, x[:, num_prefix:num_prefix + n], n_keep)
    return torch.cat([x[:, :num_prefix], kept, x[:, num_prefix + n:], pkg], dim=1)
