"""Does SPViT's training keep what its inference keeps (issue 14 item 2)?

Brief-trains the digits model (the search's default TrainSettings) for each config under each training rule
and reports, for every selector, on the held-out split:
- overlap: the share of the inference top-k that a training draw also keeps (a random draw keeps ~k/n);
- kept: the training draw's kept fraction over the target fraction (1.0 = exact);
- brief accuracy of the inference model.
Rules: ``logodds`` (the per-token Gumbel-softmax centred on the target's log-odds, the rule before),
``topk`` (fixed-k Gumbel top-k, noise 1 throughout) and ``topk-anneal`` (the default: noise annealed 1 -> 0).
Draws are measured at the noise the training ended with and at noise 1.

    .venv/bin/python benchmarks/spvit_train_match.py [--configs spvit:3=0.25 spvit:3=0.5,6=0.5] [--steps 40]

Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vitsearch.data import load_dataset  # noqa: E402
from vitsearch.pretrain import base_model  # noqa: E402
from vitsearch.pruning import PruneConfig, prune_state, spvit  # noqa: E402
from vitsearch.pruning.methods import spvit as spvit_method  # noqa: E402
from vitsearch.training import TrainSettings, accuracy, fresh_model, train_candidate  # noqa: E402

TOPK = spvit.prune_soft


def logodds_rule(selector, patches, alive, keep, noise=1.0, tau=1.0):
    """The rule before issue 14: per-token hard Gumbel-softmax on the margin centred at the target's log-odds."""
    log_score, p_keep = selector(patches, alive)
    margin = spvit.keep_margin(log_score)
    mean = (margin * alive).sum(dim=1, keepdim=True) / alive.sum(dim=1, keepdim=True).clamp_min(1.0)
    keep = min(max(keep, 1e-3), 1 - 1e-3)
    centred = margin - mean + math.log(keep / (1 - keep))
    logits = torch.stack([centred, torch.zeros_like(centred)], dim=-1)
    decision = F.gumbel_softmax(logits, tau=tau, hard=True)[..., 0] * alive
    return decision, spvit.package(patches, (alive - decision) * p_keep)


RULES = {
    "logodds": (logodds_rule, spvit_method.selection_noise),
    "topk": (TOPK, lambda progress: 1.0),
    "topk-anneal": (TOPK, spvit_method.selection_noise),
}


@torch.no_grad()
def match(model, x, noise: float | None) -> list[dict[str, float]]:
    """Per selector: overlap of a training draw with the inference top-k, and kept / target."""
    sched = model.token_schedule
    P = model.num_prefix_tokens
    # Inference: the kept patch indices at every selector, in original patch numbering.
    model.eval()
    infer = []
    orig_hard = spvit.prune_hard
    ids = torch.arange(sched.num_patches, dtype=x.dtype).expand(x.shape[0], -1)

    def hard(selector, patches, n_keep):
        log_score, _ = selector(patches)
        infer.append(spvit.keep_margin(log_score).topk(n_keep, dim=1).indices)
        return orig_hard(selector, patches, n_keep)

    spvit.prune_hard = hard
    try:
        model(x)
    finally:
        spvit.prune_hard = orig_hard
    # Inference indices index the patches still present: map them back through the earlier selections.
    mapped, current = [], ids
    for idx in infer:
        kept = current.gather(1, idx)
        mapped.append(kept.long())
        current = kept
    model.train()
    if noise is not None:
        prune_state(model).progress = 1.0 - noise
    model(x)
    state = prune_state(model)
    out = []
    for step, decisions, inf in zip(sched.selectors, state.keep_decisions, mapped):
        k = inf.shape[1]
        both = decisions.gather(1, inf).sum(dim=1) / k  # (B,)
        out.append({"block": step.block, "overlap": float(both.mean()),
                    "kept_over_target": float(decisions.sum(dim=1).mean() / step.n_keep),
                    "random": step.n_keep / sched.num_patches})
    model.eval()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["spvit:3=0.25", "spvit:3=0.5,6=0.5"])
    ap.add_argument("--steps", type=int, default=TrainSettings().steps)
    ap.add_argument("--rules", nargs="+", default=list(RULES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    base, _ = base_model()
    splits = load_dataset("digits", base)
    x, _ = next(iter(splits.loader("val", 256)))
    records = []
    for config in args.configs:
        for rule in args.rules:
            fn, noise_of = RULES[rule]
            spvit.prune_soft, spvit_method.selection_noise = fn, noise_of
            model = fresh_model(base, PruneConfig.parse(config))
            torch.manual_seed(0)
            before = match(model, x, None)
            train_candidate(model, base, splits, TrainSettings(steps=args.steps))
            end_noise = noise_of(1.0)
            after = match(model, x, None)  # progress stays where training left it: the last step's noise
            after_noise1 = match(model, x, 1.0)
            acc = accuracy(model.eval(), splits)
            records.append({"config": config, "rule": rule, "end_noise": end_noise, "before": before,
                            "after": after, "after_noise1": after_noise1, "accuracy": acc})
            for b, a, a1 in zip(before, after, after_noise1):
                print(f"{config:22s} {rule:12s} block {b['block']}: overlap {b['overlap']:.3f} -> {a['overlap']:.3f}"
                      f" (noise 1: {a1['overlap']:.3f}; random {b['random']:.3f}), kept/target "
                      f"{b['kept_over_target']:.3f} -> {a['kept_over_target']:.3f}; brief accuracy {acc:.4f}",
                      flush=True)
    spvit.prune_soft = TOPK
    print(json.dumps({"steps": args.steps, "records": records}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
