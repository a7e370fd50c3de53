"""The learned strategy in a study (issue 14, item 3): merging learned rates into a deployable config, fitting it to
the budget, and the learned trial beside the Optuna ones."""
import json

import optuna
import pytest

from vitsearch.errors import VitsearchError
from vitsearch.pruning import PruneConfig, token_schedule
from vitsearch.search import SearchSettings, run_search
from vitsearch.search.learned import choose_merge, fit_budget, learned_counts, merge_phases, phases_config
from vitsearch.search.storage import collect, count_trained, open_optuna_study
from vitsearch.training import TrainSettings

DEPTH, N, P = 12, 64, 1


def test_learned_counts_compound_the_rates():
    assert learned_counts({2: 0.5, 4: 0.5}, depth=6, num_patches=64) == [64, 64, 32, 32, 16, 16]


def test_merging_finds_the_steps_of_a_stepped_profile():
    counts = [64] * 3 + [40] * 3 + [20] * 6
    assert merge_phases(counts, range(3, 11), 2, N) == [(3, 40), (6, 20)]
    # One phase: the start that leaves the least error, at the mean of what follows it.
    (block, count), = merge_phases(counts, range(3, 11), 1, N)
    assert block in (4, 5, 6) and count == pytest.approx(sum(counts[block:]) / (DEPTH - block))
    # Only the allowed blocks start a phase.
    assert [b for b, _ in merge_phases(counts, [4, 7], 2, N)] == [4, 7]


def test_a_phase_config_keeps_exactly_the_phase_counts():
    config = phases_config([(3, 37.0), (6, 11.0), (8, 11.0)], 1.0, N)
    schedule = token_schedule(config, depth=DEPTH, num_patches=N, num_prefix=P)
    alive = [t - P - sum(s.block <= b for s in schedule.selectors) for b, t in enumerate(schedule.block_tokens)]
    assert alive == [64] * 3 + [37] * 3 + [11] * 6
    assert list(config.keep) == [3, 6]  # a phase that would prune nothing gets no selector
    assert str(phases_config([(3, 37.0)], 0.5, N)) == str(PruneConfig.parse(str(phases_config([(3, 37.0)], 0.5, N))))


def tokens_ms(config: PruneConfig) -> float:
    """A monotone stand-in latency: 0.01 ms per token per block, 0.05 ms per selector."""
    s = token_schedule(config, depth=DEPTH, num_patches=N, num_prefix=P)
    return 0.01 * sum(s.block_tokens) + 0.05 * len(s.selectors)


def test_fitting_scales_the_phases_to_the_most_tokens_within_the_budget():
    full = tokens_ms(PruneConfig())
    phases = [(3, 40.0), (6, 20.0)]
    fit = fit_budget(phases, tokens_ms, 0.6 * full, depth=DEPTH, num_patches=N, num_prefix=P)
    assert fit.within_budget and fit.predicted_ms <= 0.6 * full
    # One more token at the first phase goes over: nothing is left on the table.
    more = dict(fit.config.keep)
    n1 = token_schedule(fit.config, depth=DEPTH, num_patches=N, num_prefix=P).selectors[0].n_keep
    more[3] = round((n1 + 0.5) / N, 4)
    assert tokens_ms(PruneConfig("spvit", more)) > 0.6 * full
    # A budget below one token per phase: the fastest, marked as not within.
    low = fit_budget(phases, tokens_ms, 0.05 * full, depth=DEPTH, num_patches=N, num_prefix=P)
    assert not low.within_budget and low.predicted_ms > 0.05 * full


def test_the_merge_that_keeps_the_most_tokens_within_the_budget_wins():
    rates = {3: 0.6, 4: 0.95, 5: 0.95, 6: 0.5, 7: 0.95, 8: 0.95, 9: 0.95, 10: 0.95}
    full = tokens_ms(PruneConfig())
    m = choose_merge(rates, range(3, 11), 3, tokens_ms, 0.6 * full, depth=DEPTH, num_patches=N, num_prefix=P)
    assert m.within_budget and m.predicted_ms <= 0.6 * full
    kept = {k: fit_budget(merge_phases(learned_counts(rates, depth=DEPTH, num_patches=N), range(3, 11), k, N),
                          tokens_ms, 0.6 * full, depth=DEPTH, num_patches=N, num_prefix=P).kept for k in (1, 2, 3)}
    assert m.kept == max(kept.values())


@pytest.fixture(scope="module")
def written(tmp_path_factory, table_writer):
    """The predictor of the digits table written with chosen costs (selector costs included), and its geometry."""
    from vitsearch.latency.predict import Predictor

    predictor = Predictor(table_writer(tmp_path_factory.mktemp("table")))
    g = predictor.geometry
    return (lambda config: predictor.predict(config).total_ms), dict(depth=g.depth, num_patches=g.num_patches,
                                                                     num_prefix=g.num_prefix_tokens)


def alive_patches(config: PruneConfig, depth: int, num_patches: int, num_prefix: int) -> list[int]:
    schedule = token_schedule(config, depth=depth, num_patches=num_patches, num_prefix=num_prefix)
    return [t - num_prefix - sum(s.block <= b for s in schedule.selectors) for b, t in enumerate(schedule.block_tokens)]


@pytest.mark.parametrize("direction, factor", [("down", 0.8), ("up", 1.25)])
def test_fitting_scales_a_merge_over_the_budget_down_and_one_under_it_up(written, direction, factor):
    """A merge whose own counts are over the budget comes back with fewer patches at every block, one under it with
    more (each phase scaled by one factor), within the budget and keeping the most tokens any factor keeps within
    it (a scan of factors, for the fit's bisection). Three phases, so the later ones must keep scaling after the
    first keeps every patch."""
    ms, geom = written
    phases = [(3, 40.0), (6, 20.0), (9, 10.0)]
    own = phases_config(phases, 1.0, geom["num_patches"])
    budget = factor * ms(own)
    assert budget < ms(PruneConfig())  # the unpruned model is over it: the fit has something to find
    fit = fit_budget(phases, ms, budget, **geom)
    assert fit.within_budget and fit.predicted_ms == pytest.approx(ms(fit.config)) and fit.predicted_ms <= budget
    before, after = alive_patches(own, **geom), alive_patches(fit.config, **geom)
    if direction == "down":
        assert all(a <= b for a, b in zip(after, before)) and after != before
    else:
        assert all(a >= b for a, b in zip(after, before)) and after != before
    top = geom["num_patches"] / phases[-1][1]
    scanned = [phases_config(phases, top * i / 2000, geom["num_patches"]) for i in range(2001)]
    most = max(sum(token_schedule(c, **geom).block_tokens) for c in scanned if ms(c) <= budget)
    assert fit.kept >= most


def test_the_learned_merge_never_has_more_selectors_than_the_space_allows(written):
    """A learned profile with four steps, whose four-selector merge is the only one within the budget: capped at 3, 2
    or 1, the choice has at most that many selectors, and is the best of those merges (here none is within, so the
    fastest of them, marked as over the budget), never the four."""
    ms, geom = written
    rates = {b: {3: 0.95, 5: 0.4, 8: 0.3, 10: 0.3}.get(b, 0.999) for b in range(3, 11)}
    budget = 0.5 * ms(PruneConfig())
    free = choose_merge(rates, range(3, 11), 8, ms, budget, **geom)
    assert len(free.config.keep) == 4 and free.within_budget  # uncapped, the caps below bind
    counts = learned_counts(rates, depth=geom["depth"], num_patches=geom["num_patches"])
    for cap in (3, 2, 1):
        capped = choose_merge(rates, range(3, 11), cap, ms, budget, **geom)
        fits = [fit_budget(merge_phases(counts, range(3, 11), m, geom["num_patches"]), ms, budget, **geom)
                for m in range(1, cap + 1)]
        assert 1 <= len(capped.config.keep) <= cap and not capped.within_budget
        assert capped.predicted_ms == min(f.predicted_ms for f in fits) > budget


FAST = TrainSettings(steps=2, batch_size=16)


def settings(tmp_path, env, lean_space, **kw) -> SearchSettings:
    base = dict(budget="80%", trials=2, train=FAST, reports=str(tmp_path / "reports"), max_train=128, max_val=96,
                learned=True, learned_steps=20, **{**env, "space": str(lean_space)})
    return SearchSettings(**{**base, **kw})


@pytest.mark.slow
def test_the_learned_trial_lands_in_the_study_on_the_same_front(tmp_path, env, lean_space):
    result = run_search(settings(tmp_path, env, lean_space), progress=False)
    learned = [c for c in result.trials if c.kind == "learned"]
    assert len(learned) == 1 and len([c for c in result.trials if c.kind == "search" and c.accuracy is not None]) == 2
    cand = learned[0]
    assert cand.config.method == "spvit" and 1 <= len(cand.config.keep) <= 3 and cand.accuracy is not None
    assert cand.feasible == (cand.predicted_ms <= result.budget_ms)
    folder = result.folder
    rows = json.loads((folder / "trials.json").read_text())
    row = next(r for r in rows if r["kind"] == "learned")
    assert row["trial"] == cand.trial and (folder / row["checkpoint"]).is_file() or cand not in result.front
    # Optuna's own view: a complete trial with both objectives and the constraints, not counted as a sampled trial.
    study = open_optuna_study(SearchSettings.from_dict(json.loads((folder / "study.json").read_text())["settings"]),
                              folder_of(result))
    frozen = next(t for t in study.get_trials() if t.user_attrs.get("kind") == "learned")
    assert frozen.state == optuna.trial.TrialState.COMPLETE and frozen.values == [cand.val_accuracy, cand.predicted_ms]
    sampled = next(t for t in study.get_trials() if t.user_attrs.get("accuracy") is not None and t is not frozen
                   and t.user_attrs.get("kind") != "learned")
    assert set(frozen.constraints) == set(sampled.constraints) == {"0", "1"}  # the one list, stored as a trial's
    assert frozen.user_attrs["learned_rates"]
    assert count_trained(study) == 2 and len(collect(study)) == len(result.trials)
    # Resuming does not learn again.
    again = run_search(settings(tmp_path, env, lean_space), progress=False)
    assert [c.trial for c in again.trials if c.kind == "learned"] == [cand.trial]


def folder_of(result):
    from vitsearch.studyfolder import StudyFolder

    return StudyFolder(result.folder)


def test_a_space_without_spvit_is_refused_before_any_trial(tmp_path, env, lean_space):
    evo = lean_space.with_name("evo.toml")
    evo.write_text(lean_space.read_text().replace('methods = ["spvit", "evovit"]', 'methods = ["evovit"]'))
    with pytest.raises(VitsearchError, match="--learned learns SPViT's pruning rates.*add spvit"):
        run_search(settings(tmp_path, env, lean_space, space=str(evo)), progress=False)
    assert not list((tmp_path / "reports").glob("*/trials.json"))


def test_too_few_learning_steps_are_refused_before_any_trial(tmp_path, env, lean_space):
    with pytest.raises(VitsearchError, match="at least one per selector block.*--learned-steps"):
        run_search(settings(tmp_path, env, lean_space, learned_steps=5), progress=False)


def test_the_rates_latency_is_the_prediction_with_the_block_curves_gradient(tmp_path, table_writer):
    """L(r) of the learned strategy: the predictor's value for the rates' config, and the gradient of the table's
    block curve at the soft token counts (prefix + N x the rates so far + one package per selector so far).

    On a table written with strictly increasing costs, its block rows as if profiled at half speed (so the curve is
    the drift-scaled one), never a table timed in the session: a noisy profile's monotone fit can be flat where the
    soft counts fall, and the gradient 0."""
    import torch

    from vitsearch.latency.predict import Predictor
    from vitsearch.search.learned import rates_latency
    from vitsearch.training import PiecewiseLinear
    from vitsearch.training.learned import rates_config

    predictor = Predictor(table_writer(tmp_path / "drift", speeds={"block": 2.0}))
    (xs, ys), (even_xs, even_ys) = predictor.block_curve(), Predictor(table_writer(tmp_path / "even")).block_curve()
    assert xs == even_xs and ys == pytest.approx(even_ys)  # the drift-scaled curve is the one-speed table's
    curve = PiecewiseLinear(*predictor.block_curve())
    g = predictor.geometry
    depth, n, p = g.depth, g.num_patches, g.num_prefix_tokens
    rates = {3: torch.tensor(0.6, requires_grad=True), 7: torch.tensor(0.7, requires_grad=True)}
    ms = rates_latency(rates, predictor, curve, 3, depth=depth, num_patches=n, num_prefix=p)
    assert float(ms.detach()) == pytest.approx(predictor.predict(rates_config(rates)).total_ms)  # 2 <= 3 selectors
    ms.backward()
    r3, r7 = (torch.tensor(float(rates[b].detach()), requires_grad=True) for b in (3, 7))
    soft = sum(curve(torch.as_tensor(p + n * (r3 if b >= 3 else 1) * (r7 if b >= 7 else 1) + (b >= 3) + (b >= 7)))
               for b in range(depth))
    soft.backward()
    assert float(r3.grad) > 0 and float(rates[3].grad) == pytest.approx(float(r3.grad))
    assert float(r7.grad) > 0 and float(rates[7].grad) == pytest.approx(float(r7.grad))
    # More selectors than a deployed config keeps: selection is charged for max_selectors of them only.
    many = {b: torch.tensor(0.9) for b in (3, 4, 5, 6)}
    pred = predictor.predict(rates_config(many))
    charged = float(rates_latency(many, predictor, curve, 2, depth=depth, num_patches=n, num_prefix=p))
    assert pred.selection_ms > 0 and charged == pytest.approx(pred.total_ms - pred.selection_ms / 2)
