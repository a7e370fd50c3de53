"""The search covers its space: every proposal is a feasible model no trial has taken, proposals spread over
methods and selector counts, and a space is trained whole before the search says it holds no more.

The latency table is the session's profiled one; every assertion is relative to what that table predicts, so
none depends on its timings."""
import dataclasses

import optuna
import pytest
import torch

from vitsearch.latency import table as table_mod
from vitsearch.latency.predict import Predictor
from vitsearch.models import create_model, geometry
from vitsearch.pruning import PruneConfig, canonical_key
from vitsearch.search import default_space_file, load_space
from vitsearch.search.claims import KEY, OWNS
from vitsearch.search.storage import make_sampler
from vitsearch.search.coverage import CoverageSampler, FeasibleSet, NoModelLeft


@pytest.fixture(scope="module")
def predictor(tables) -> Predictor:
    with torch.device("meta"):
        g = geometry(create_model("digits"))
    return Predictor(table_mod.load(table_mod.table_path(tables, "cpu", g, 1), geometry=g, batch=1))


def key(config: PruneConfig) -> str:
    return canonical_key(config, depth=12, num_patches=64, num_prefix=1)


def feasible_set(space, predictor, fraction: float, **kw) -> FeasibleSet:
    budget = fraction * predictor.predict(PruneConfig()).total_ms
    return FeasibleSet(space, lambda c: predictor.predict(c).total_ms, key, budget, **kw)


def search(space, feasible: FeasibleSet, trials: int, inner=None) -> tuple[optuna.Study, CoverageSampler]:
    """Trials as the search's objective makes them: the trial claims its config's key and owns it."""
    sampler = CoverageSampler(inner or make_sampler("tpe", 0), space, feasible, seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)

    def objective(trial):
        try:
            config = space.suggest(trial)
        except NoModelLeft:
            trial.study.stop()
            raise optuna.TrialPruned()
        trial.set_user_attr(KEY, key(config))
        trial.set_user_attr(OWNS, True)
        # A stand-in accuracy that prefers more tokens, so TPE has a front to chase.
        return sum(config.keep.values()) / len(config.keep), feasible.predict_ms(config)

    study.optimize(objective, n_trials=trials)
    return study, sampler


@pytest.mark.parametrize("inner", ["tpe", "random"])
def test_every_proposal_is_a_new_model_within_the_budget(predictor, inner):
    space = load_space(default_space_file("digits"), depth=12)
    feasible = feasible_set(space, predictor, 0.6)
    study, _ = search(space, feasible, 40, make_sampler(inner, 0))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 40
    keys = [t.user_attrs[KEY] for t in done]
    assert len(set(keys)) == 40  # no repeats
    assert all(t.values[1] <= feasible.budget_ms for t in done)  # none over the budget
    configs = [space.suggest(optuna.trial.FixedTrial(t.params)) for t in done]
    assert {c.method for c in configs} == set(space.methods)
    assert {len(c.keep) for c in configs} >= {1, 2, 3}  # 0: ToMe's r for every block
    # Conditional parameters: a trial holds the parameters of the selectors it uses, and no others (a token count
    # for ToMe, whose setting is one).
    for t, c in zip(done, configs):
        value = "count" if c.method == "tome" else "keep"
        assert set(t.params) == {"method", "selectors"} | {f"{p}_{i}" for p in ("block", value)
                                                           for i in range(1, len(c.keep) + 1)} | (
                                                               {"every"} if c.every is not None else set())


@pytest.mark.parametrize("inner", ["tpe", "random"])
def test_the_first_trials_take_every_method_and_selector_count_once(predictor, inner):
    space = load_space(default_space_file("digits"), depth=12)
    feasible = feasible_set(space, predictor, 0.6)
    strata = set(feasible.stratum.values())
    assert len(strata) >= 6  # SPViT, Evo-ViT and EViT with 1 to 3 selectors (no ToMe config fits here)
    study, _ = search(space, feasible, len(strata), make_sampler(inner, 0))
    first = [feasible.stratum[t.user_attrs[KEY]] for t in study.trials]
    assert sorted(first) == sorted(strata)  # each once, before the inner sampler chooses any


def test_a_small_space_is_trained_whole_and_then_the_search_stops(predictor, tmp_path):
    path = tmp_path / "small.toml"
    path.write_text("[space]\nmethods = ['spvit', 'evovit']\nfirst_block = 4\nlast_block = 6\nmax_selectors = 2\n"
                    "keep_min = 0.3\nkeep_max = 0.9\nkeep_step = 0.3\n")
    space = load_space(path, depth=12)
    feasible = feasible_set(space, predictor, 0.95)
    assert feasible.is_exact and 0 < len(feasible) < 60
    study, sampler = search(space, feasible, 60)
    trained = {t.user_attrs[KEY] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert trained == set(feasible.models)  # every feasible model, each once
    assert sampler.exhausted
    assert len(study.trials) == len(feasible) + 1  # one pruned trial found nothing left, and stopped the study


def test_a_sampled_part_of_the_space_is_listed_whole_before_none_is_left(predictor):
    space = load_space(default_space_file("digits"), depth=12)
    space = dataclasses.replace(space, max_selectors=2)  # 8,092 two-selector configs per method
    sampled = feasible_set(space, predictor, 0.6, sample=500)
    whole = feasible_set(space, predictor, 0.6, sample=10_000)
    assert whole.is_exact and not sampled.is_exact
    assert set(sampled.models) < set(whole.models)
    taken = set(sampled.models)
    while left := sampled.untaken(taken):  # every known model taken: the rest of the space is listed, part by part
        assert not taken & set(left)
        taken |= set(left)
    assert taken == set(whole.models) and sampled.is_exact
