"""The learned strategy in a study: SPViT's pruning rates learned under the budget, beside the Optuna trials.

``vitsearch search --learned`` runs it once per study, after the trials, with the training compute of the trials
(``trials x steps`` training steps, unless ``--learned-steps`` says otherwise):

1. learn a keep rate per allowed selector block, inserted layer-to-phase, under the sparsity loss
   (:mod:`vitsearch.training.learned`), for all but the last ``steps`` of that compute;
2. merge: the learned per-block token counts become at most the space's ``max_selectors`` phases, one selector at
   the start of each, keeping each phase's mean count (:func:`merge_phases`: the fewest-token-error segmentation
   for each selector count);
3. fit: each merge is scaled, one factor for all its counts, to the most tokens whose predicted latency (the full
   predictor, selector costs included) is within the budget; the merge keeping the most tokens wins;
4. the merged config trains ``steps`` more steps from the learned weights (a brief candidate's training) and is
   evaluated like a trial; it lands in the study as a complete trial of kind ``learned`` (no Optuna params: it is
   not a point of the sampled space), so the front, the report and ``finalize --trial`` treat it like the others.

A budget no merge can reach gives the closest one, stored as infeasible (over budget by what it missed).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import optuna
import torch

from ..errors import VitsearchError
from ..flops import gmacs
from ..pruning import PruneConfig, apply, kept_tokens, token_schedule
from ..training import train_candidate
from ..training.learned import LearnSettings, learn_rates, rates_config
from .evaluation import Evaluator, held_out_accuracies
from .record import CONSTRAINTS_LIST_KEY, constraint_list
from .settings import LEARNED as KIND, TRAINED_ATTRS, Candidate, SearchSettings

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Merge:
    config: PruneConfig
    predicted_ms: float
    within_budget: bool
    kept: int  # patch tokens summed over the blocks: what the fit maximises under the budget


def learned_counts(rates: Mapping[int, Any], *, depth: int, num_patches: int) -> list[Any]:
    """Patch tokens reaching each block under compounding keep rates (fractional: the rates' own profile; tensors
    in, differentiable tensors out)."""
    alive, out = float(num_patches), []
    for block in range(depth):
        alive = alive * rates.get(block, 1.0)  # not *=: that would rewrite the tensors already in out
        out.append(alive)
    return out


def merge_phases(counts: Sequence[float], blocks: Sequence[int], selectors: int, num_patches: int
                 ) -> list[tuple[int, float]]:
    """The ``selectors`` phase starts among ``blocks`` whose piecewise-constant profile (every phase at the mean
    learned count of its blocks, the unpruned count before the first) is closest to ``counts`` in summed absolute
    tokens. Returns [(start block, patch tokens)] (dynamic programming over the starts)."""
    depth = len(counts)

    def cost(start: int, end: int) -> tuple[float, float]:
        seg = counts[start:end]
        mean = sum(seg) / len(seg)
        return sum(abs(c - mean) for c in seg), mean

    # best[j][b]: the least error of blocks b.. with j phases left, the first starting at b
    starts = [b for b in blocks if b < depth]
    memo: dict[tuple[int, int], tuple[float, list[tuple[int, float]]]] = {}

    def best(j: int, b: int) -> tuple[float, list[tuple[int, float]]]:
        if (j, b) in memo:
            return memo[j, b]
        if j == 1:
            err, mean = cost(b, depth)
            out = (err, [(b, mean)])
        else:
            out = (math.inf, [])
            for nxt in starts:
                if nxt <= b:
                    continue
                err, mean = cost(b, nxt)
                rest, plan = best(j - 1, nxt)
                if err + rest < out[0]:
                    out = (err + rest, [(b, mean)] + plan)
        memo[j, b] = out
        return out

    choice = (math.inf, [])
    for first in starts:
        head = sum(num_patches - c for c in counts[:first])
        err, plan = best(selectors, first)
        if head + err < choice[0]:
            choice = (head + err, plan)
    return choice[1]


def phases_config(phases: Sequence[tuple[int, float]], scale: float, num_patches: int) -> PruneConfig:
    """The SPViT config whose selectors leave ``scale`` x each phase's count (whole tokens, never more than the
    phase before). Each ratio is written so that ``kept_tokens`` gives back exactly that count."""
    keep, n = {}, num_patches
    for block, count in phases:
        k = max(1, min(n, round(scale * count)))
        if k < n:
            ratio = round((k - 0.5) / n, 4)  # ceil(n * ratio) = k for any n < 5000
            assert kept_tokens(n, ratio) == k
            keep[block] = ratio
            n = k
    return PruneConfig("spvit", keep)


def fit_budget(phases: Sequence[tuple[int, float]], predict: Any, budget_ms: float, *, depth: int,
               num_patches: int, num_prefix: int) -> Merge:
    """Scale ``phases`` to the most tokens within ``budget_ms`` (bisection on one factor for all counts; the
    predicted latency rises with it). If even one token per phase is over budget, that config, as infeasible."""
    def merge(scale: float) -> Merge:
        config = phases_config(phases, scale, num_patches)
        ms = predict(config)
        kept = sum(token_schedule(config, depth=depth, num_patches=num_patches, num_prefix=num_prefix).block_tokens)
        return Merge(config, ms, ms <= budget_ms, kept)

    # The factor at which every phase keeps every patch (the unpruned model); not the first phase's: scaled only
    # that far, the later phases of a merge under a loose budget stayed far below it.
    top = num_patches / max(min(count for _, count in phases), 1e-6)
    best = merge(top)
    if best.within_budget:
        return best
    lo, hi = 0.0, top
    best = merge(lo)
    if not best.within_budget:
        return best
    for _ in range(40):
        mid = (lo + hi) / 2
        m = merge(mid)
        if m.within_budget:
            lo, best = mid, m
        else:
            hi = mid
    return best


def choose_merge(rates: Mapping[int, float], blocks: Sequence[int], max_selectors: int, predict: Any,
                 budget_ms: float, *, depth: int, num_patches: int, num_prefix: int) -> Merge:
    """The merge (1..max_selectors phases) that keeps the most tokens within the budget; none within: the
    fastest."""
    counts = learned_counts(rates, depth=depth, num_patches=num_patches)
    merges = [fit_budget(merge_phases(counts, blocks, m, num_patches), predict, budget_ms, depth=depth,
                         num_patches=num_patches, num_prefix=num_prefix)
              for m in range(1, min(max_selectors, len(blocks)) + 1)]
    within = [m for m in merges if m.within_budget]
    if within:
        return max(within, key=lambda m: (m.kept, -len(m.config.keep)))
    return min(merges, key=lambda m: m.predicted_ms)


def rates_latency(rates: Mapping[int, torch.Tensor], predictor: Any, curve: Any, max_selectors: int, *, depth: int,
                  num_patches: int, num_prefix: int) -> torch.Tensor:
    """The learned strategy's L(r): the predictor's latency of the rates' config (its value), with the gradient of
    the table's block curve (``curve``) at the rates' soft per-block token counts."""
    pred = predictor.predict(rates_config(rates))
    # Selection is charged for the selectors a deployed config keeps (the merge keeps at most max_selectors):
    # charged for all 8 that a digits search inserts, 190 steps of learning ended at 1.01 ms for a 0.85 ms budget.
    selectors = max(1, sum(p.kind == "spvit_select" for p, _ in pred.parts))
    exact = pred.total_ms - pred.selection_ms * max(0.0, 1 - max_selectors / selectors)
    alive = learned_counts({b: r.cpu() for b, r in rates.items()}, depth=depth, num_patches=num_patches)
    packages = [sum(b <= block for b in rates) for block in range(depth)]  # one per selector so far
    blocks_ms = sum(curve(torch.as_tensor(num_prefix + a + p)) for a, p in zip(alive, packages))
    return exact + blocks_ms - blocks_ms.detach()  # the predictor's value, the block curve's gradient


def learned_trial(study: optuna.Study) -> Any | None:
    """The study's learned trial, if it has one."""
    return next((t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                 if t.user_attrs.get("kind") == KIND), None)


def learn_steps(settings: SearchSettings) -> int:
    """Steps of rate learning: the trials' training compute, less the merged config's own training."""
    total = settings.learned_steps if settings.learned_steps is not None else settings.trials * settings.train.steps
    return max(0, total - settings.train.steps)


def check_learned(setup: Any, settings: SearchSettings) -> None:
    """Refuse, before any training, a learned strategy the study cannot run."""
    if "spvit" not in setup.space.methods:
        raise VitsearchError(f"--learned learns SPViT's pruning rates, but the search space allows only "
                             f"{', '.join(setup.space.methods)}: add spvit to its methods, or drop --learned")
    steps = learn_steps(settings)
    if steps < len(setup.space.blocks):
        raise VitsearchError(
            f"--learned has {steps} steps to learn keep rates with (trials x steps, less the merged config's own "
            f"{settings.train.steps}); it needs at least one per selector block the space allows "
            f"({len(setup.space.blocks)}): raise --learned-steps or --trials")


def run_learned(evaluator: Evaluator, study: optuna.Study) -> Candidate:
    """Learn, merge, fit, train and evaluate the learned config; stored as a complete trial of ``study``."""
    setup, s = evaluator.setup, evaluator.settings
    check_learned(setup, s)
    base = setup.base
    depth, n_patches, n_prefix = len(base.blocks), base.patch_embed.num_patches, base.num_prefix_tokens
    predictor, curve = setup.predictor, evaluator.latency.curve
    steps = learn_steps(s)

    def latency_of(rates: Mapping[int, torch.Tensor]) -> torch.Tensor:
        return rates_latency(rates, predictor, curve, setup.space.max_selectors, depth=depth, num_patches=n_patches,
                             num_prefix=n_prefix)

    learn = LearnSettings(steps=steps, keep_min=setup.space.keep_min)
    logger.info("learned strategy: %d steps learning keep rates at blocks %s (layer-to-phase), then %d steps on the "
                "merged config", steps, list(setup.space.blocks), s.train.steps)
    model = copy.deepcopy(base)
    run = learn_rates(model, base, setup.splits, setup.space.blocks, latency_of, setup.limit_ms, s.train, learn,
                      precision=setup.precision)
    merge = choose_merge(run.rates, setup.space.blocks, setup.space.max_selectors,
                         lambda c: predictor.predict(c).total_ms, setup.limit_ms, depth=depth, num_patches=n_patches,
                         num_prefix=n_prefix)
    config = merge.config
    logger.info("learned rates %s merged into %s: %.3f ms predicted (budget %.3f ms)", run.rates, config,
                merge.predicted_ms, setup.limit_ms)
    for block in [b for b in model.token_selectors if int(b) not in config.keep]:
        del model.token_selectors[block]  # merged away: the checkpoint holds the config's selectors only
    apply(model, config)
    result = train_candidate(model, base, setup.splits, s.train, latency=evaluator.latency, precision=setup.precision)
    pred = predictor.predict(config)
    val_accuracy, test_accuracy = held_out_accuracies(model, setup)
    cand = Candidate(config, KIND, pred.total_ms, accuracy=test_accuracy, val_accuracy=val_accuracy,
                     gmacs=gmacs(model), train_seconds=run.seconds + result.seconds, feasible=merge.within_budget,
                     status="trained (learned rates)" if merge.within_budget else
                     f"learned, but over budget by {pred.total_ms - setup.limit_ms:.3f} ms: the fastest merge of "
                     f"what was learned reached {pred.total_ms:.3f} ms",
                     block_tokens=token_schedule(config, depth=depth, num_patches=n_patches,
                                                 num_prefix=n_prefix).block_tokens,
                     selection_ms=pred.selection_ms)
    cand.trial = len(study.get_trials(deepcopy=False))  # the number add_trial gives it
    path = setup.folder.checkpoint(cand.trial)
    setup.folder.save_checkpoint(model, config, path)
    cand.checkpoint = setup.folder.relative(path)
    record(study, cand, setup.limit_ms, setup.space.max_selectors, run, learn, steps + s.train.steps)
    if not merge.within_budget:
        logger.warning("the learned strategy could not reach the budget of %.3f ms: %s", setup.limit_ms, cand.status)
    return cand


def record(study: optuna.Study, cand: Candidate, budget_ms: float, max_selectors: int, run: Any,
           learn: LearnSettings, total_steps: int) -> None:
    """The learned candidate as a complete trial: the objectives, the constraints (the one list, as for a trial),
    and what was learned."""
    constraints = {"latency_ms": cand.predicted_ms - budget_ms,
                   "selectors": float(max(len(cand.config.keep) - max_selectors, 1 - len(cand.config.keep)))}
    attrs = {k: getattr(cand, k) for k in TRAINED_ATTRS}
    attrs.update(kind=KIND, config=str(cand.config), predicted_ms=cand.predicted_ms,
                 block_tokens=list(cand.block_tokens), learned_rates={str(b): r for b, r in run.rates.items()},
                 learned_history=run.history, learned_settings=learn.to_dict(), train_steps=total_steps)
    study.add_trial(optuna.trial.create_trial(
        values=[cand.val_accuracy, cand.predicted_ms], user_attrs=attrs,
        system_attrs={CONSTRAINTS_LIST_KEY: constraint_list(constraints)}))

