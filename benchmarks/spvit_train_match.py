"""Does SPViT's training keep what its inference keeps, and at what accuracy (issue 14 item 2)?

Brief-trains the digits model (the search's default TrainSettings) for each config, training draw rule
(``TrainSettings.spvit_draw``: ``topk``, the default, annealed to the inference top-k, or ``logodds``) and seed,
and reports, for every selector, on a held-out batch:
- overlap: the share of the inference top-k that a training draw also keeps (a random draw keeps ~k/n);
- kept: the training draw's kept count over the target count (1.0 = exact);
- digit: the share of the digit's own patches the inference keeps (a digit covers 4 of the 64 patches);
- the brief accuracy of the inference model on the held-out split.
Draws are measured at the noise the training ended with and at noise 1. One thread.

    .venv/bin/python benchmarks/spvit_train_match.py [--configs spvit:3=0.25 spvit:3=0.5,6=0.5] [--seeds 0 1 2]

Prints a line per run, a summary per config and rule (mean and spread of the accuracy over seeds) and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vitsearch.data import load_dataset  # noqa: E402
from vitsearch.pretrain import base_model  # noqa: E402
from vitsearch.pruning import PruneConfig, prune_state  # noqa: E402
from vitsearch.pruning.methods.spvit import algorithm as spvit  # noqa: E402
from vitsearch.training import TrainSettings, accuracy, fresh_model, train_candidate  # noqa: E402


def digit_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, N) 1 where a patch holds ink: the digits canvases are flat background elsewhere."""
    bg = x.flatten(1).amin(dim=1)[:, None, None, None]
    ink = ((x - bg).abs() > 1e-5).any(dim=1).float()[:, None]  # (B, 1, H, W)
    return (torch.nn.functional.max_pool2d(ink, patch) > 0).flatten(1).float()  # (B, N)


@torch.no_grad()
def match(model, x, digit, noise: float | None) -> list[dict[str, float]]:
    """Per selector: overlap of a training draw with the inference top-k, kept / target, digit patches kept."""
    sched = model.token_schedule
    model.eval()
    infer = []
    orig_hard = spvit.prune_hard

    def hard(selector, patches, n_keep):
        margin, _ = selector(patches)
        infer.append(margin.topk(n_keep, dim=1).indices)
        return orig_hard(selector, patches, n_keep)

    spvit.prune_hard = hard
    try:
        model(x)
    finally:
        spvit.prune_hard = orig_hard
    # Inference indices index the patches still present: map them back through the earlier selections.
    mapped, current = [], torch.arange(sched.num_patches).expand(x.shape[0], -1)
    for idx in infer:
        current = current.gather(1, idx)
        mapped.append(current)
    state = prune_state(model)
    progress = state.progress
    model.train()
    if noise is not None:
        state.progress = 1.0 - noise
    model(x)
    state.progress = progress
    out = []
    for step, decisions, inf in zip(sched.selectors, state.method.keep_decisions, mapped):
        k = inf.shape[1]
        kept = torch.zeros_like(decisions).scatter(1, inf, 1.0)  # (B, N) what inference keeps
        out.append({"block": step.block, "overlap": float((decisions.gather(1, inf).sum(dim=1) / k).mean()),
                    "kept_over_target": float(decisions.sum(dim=1).mean() / step.n_keep),
                    "digit": float((kept * digit).sum() / digit.sum()),
                    "random": step.n_keep / sched.num_patches})
    model.eval()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["spvit:3=0.25", "spvit:3=0.5,6=0.5"])
    ap.add_argument("--rules", nargs="+", default=list(spvit.TRAIN_DRAWS), choices=spvit.TRAIN_DRAWS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=TrainSettings().steps)
    args = ap.parse_args()
    torch.set_num_threads(1)
    base, _ = base_model()
    splits = load_dataset("digits", base)
    x, _ = next(iter(splits.held_out_batches(256)))
    digit = digit_patches(x, base.patch_embed.patch_size[0])
    records = []
    for config in args.configs:
        for rule in args.rules:
            for seed in args.seeds:
                settings = TrainSettings(steps=args.steps, seed=seed, spvit_draw=rule)
                model = fresh_model(base, PruneConfig.parse(config), seed=seed)
                torch.manual_seed(seed)
                prune_state(model).train = settings  # what the training loop sets before each step
                before = match(model, x, digit, None)
                train_candidate(model, base, splits, settings)
                after = match(model, x, digit, None)  # the noise of the last training step
                after_noise1 = match(model, x, digit, 1.0)
                acc = accuracy(model.eval(), splits)
                records.append({"config": config, "rule": rule, "seed": seed, "before": before, "after": after,
                                "after_noise1": after_noise1, "accuracy": acc})
                for b, a, a1 in zip(before, after, after_noise1):
                    print(f"{config:18s} {rule:8s} seed {seed} block {b['block']}: overlap {b['overlap']:.3f} -> "
                          f"{a['overlap']:.3f} (noise 1: {a1['overlap']:.3f}; random {b['random']:.3f}), kept/target "
                          f"{b['kept_over_target']:.3f} -> {a['kept_over_target']:.3f}, digit kept "
                          f"{b['digit']:.3f} -> {a['digit']:.3f}; brief accuracy {acc:.4f}", flush=True)
    summary = []
    for config in args.configs:
        for rule in args.rules:
            accs = [r["accuracy"] for r in records if r["config"] == config and r["rule"] == rule]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            summary.append({"config": config, "rule": rule, "mean": statistics.mean(accs), "stdev": spread,
                            "accuracies": accs})
            print(f"{config:18s} {rule:8s} brief accuracy {statistics.mean(accs):.4f} +- {spread:.4f} "
                  f"over seeds {args.seeds}")
    print(json.dumps({"steps": args.steps, "seeds": args.seeds, "summary": summary, "records": records}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
