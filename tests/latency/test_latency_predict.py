"""Prediction: the sum of the config's components, linear between grid points, never extrapolated; and the
components are what the real pruned forward runs."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vitsearch import pruning
from vitsearch.pruning import PruneConfig
from vitsearch.errors import VitsearchError
from vitsearch.latency import Predictor, components_of, grid
from vitsearch.latency import artefacts as art
from vitsearch.latency import table as T
from vitsearch.latency.components import Point, component_graphs
from vitsearch.models import create_model, geometry

from .conftest import TINY_GRID, TINY_KWARGS, TINY_MODEL

CONFIGS = ["none", "spvit:1=0.5", "spvit:0=0.7,1=0.4", "evovit:1=0.5", "evit:1=0.5", "tome:r=4", "tome:0=8,1=2"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(TINY_MODEL, **TINY_KWARGS)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, model):
    """A table with a known latency at every grid point: a linear function of the counts, so interpolation
    between grid points must reproduce it exactly."""
    g = geometry(model)
    rows = [T.Row(p, 1, _value(p), _value(p), 0.0, 1) for p in grid(g, TINY_GRID)]
    meta = {"device": {"name": "cpu"}, "geometry": g.to_dict(), "batch": 1, "runtime": {}, "threads": 1}
    return T.save(tmp_path_factory.mktemp("t") / "t.csv", meta, rows)


def _value(p: Point) -> float:
    base = {"overhead": 0.01, "embed": 0.2, "block": 1.0, "block_cls": 1.5, "head": 0.1, "spvit_select": 0.3,
            "evo_stage": 0.05, "evo_enter": 0.03, "evo_block": 1.1, "evo_block_cls": 1.6, "tome_attn": 0.5,
            "tome_merge": 0.2, "tome_mlp": 0.6, "evit_attn": 0.55, "evit_fuse": 0.1, "evit_mlp": 0.6}[p.kind]
    return base + 0.01 * p.n + 0.001 * p.k


@pytest.mark.parametrize("config", CONFIGS)
def test_prediction_is_the_sum_of_components(synthetic, model, config):
    pred = Predictor(synthetic).predict(config)
    parts = components_of(config, geometry(model))
    assert [p for p, _ in pred.parts] == parts
    assert [p.kind for p in parts].count("overhead") == 1
    # a merge's k range, n - (the most it merges) .. n - 1, is not linear in n: interpolated within a token
    assert pred.total_ms == pytest.approx(sum(_value(p) for p in parts), abs=0.001 * len(parts))
    assert pred.total_ms == pytest.approx(sum(pred.by_kind().values()))


def test_every_tome_and_evit_config_of_the_tiny_model_is_predicted_within_the_grid(synthetic, model):
    """A 2-D kind's k range may depend on n (EViT keeps 1 .. n - P - 1; ToMe merges at most about half of a
    block's tokens, k = n - r): every config the methods accept is predicted from the grid, never refused."""
    predictor, g = Predictor(synthetic), geometry(model)
    configs = [f"tome:0={a},1={b}" for a in range(9) for b in range(7) if b <= (17 - a - 1) // 2]
    configs += [f"evit:1={r / 10:g}" for r in range(1, 11)]
    # between grid rows (n = 10 and 17 here), k at the same place of each row's own range: EViT keeps at most
    # n - P - 1, so the top of the range at n = 13 is 11, read at the top of both rows
    rows = sorted({p.n for p in synthetic.rows if p.kind == "evit_fuse"})
    assert 13 not in rows and rows[0] < 13 < rows[-1]
    for k in (1, 6, 11):
        assert predictor.component(Point("evit_fuse", 13, k)) == pytest.approx(_value(Point("evit_fuse", 13, k)))
    for config in configs:
        pred = predictor.predict(config)
        assert pred.total_ms == pytest.approx(sum(_value(p) for p in components_of(config, g)), abs=0.01), config


def test_interpolates_between_grid_points(synthetic):
    predictor = Predictor(synthetic)
    blocks = sorted(p.n for p in synthetic.rows if p.kind == "block")
    n = (blocks[0] + blocks[1]) // 2
    assert n not in blocks
    assert predictor.component(Point("block", n)) == pytest.approx(_value(Point("block", n)))
    # spvit_select is bilinear in (n, relative k); off-grid in both, and exact on a linear function
    assert predictor.component(Point("spvit_select", 11, 4)) == pytest.approx(_value(Point("spvit_select", 11, 4)))


def test_out_of_grid_counts_are_refused(tmp_path, synthetic):
    rows = [r for p, r in synthetic.rows.items() if not (p.kind == "block" and p.n < 5)]
    short = T.save(tmp_path / "short.csv", synthetic.meta, rows)
    predictor = Predictor(short)
    with pytest.raises(VitsearchError, match=r"n = 3 is outside the profiled grid \[7, 17\]"):
        predictor.component(Point("block", 3))
    with pytest.raises(VitsearchError, match="outside the profiled grid"):
        predictor.predict("spvit:0=0.1,1=0.1")  # blocks on 4 tokens: class, 1-2 patches, packages
    with pytest.raises(VitsearchError, match="k = 16 is outside"):
        Predictor(synthetic).component(Point("spvit_select", 16, 16))


def test_missing_kind_says_the_profile_is_incomplete(tmp_path, synthetic):
    # also a table profiled before the open last stage of a class-token Evo-ViT (issue 14 item 4) was charged apart
    rows = [r for p, r in synthetic.rows.items() if p.kind != "evo_enter"]
    with pytest.raises(VitsearchError, match="no evo_enter rows .*run the same vitsearch profile command again; it "
                       "measures only the missing kinds"):
        Predictor(T.save(tmp_path / "t.csv", synthetic.meta, rows)).predict("evovit:1=0.5")


@pytest.mark.parametrize("config", CONFIGS)
def test_components_follow_the_real_forward(model, config):
    """The block and head token counts of components_of are those the patched model computes on."""
    pruning.apply(model, config)
    seen = []
    hook = model.norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    model(torch.randn(1, 3, 32, 32))
    hook.remove()
    ran = pruning.prune_state(model).block_tokens
    parts = components_of(config, geometry(model))
    assert [p.n for p in parts if "block" in p.kind or p.kind.endswith("_attn")] == ran
    assert [p.n for p in parts if p.kind == "head"] == seen


def test_every_kind_exports_and_specialises_to_the_torch_output(tmp_path, model):
    """One export per kind with dynamic token axes; the specialised copies compute what the module does."""
    pruning.apply(model, PruneConfig())
    graphs = component_graphs(model)
    points = grid(geometry(model), TINY_GRID)
    for kind, g in graphs.items():
        kind_points = [p for p in points if p.kind == kind]
        template = art.load_template(art.export_kind(g, kind_points[len(kind_points) // 2], tmp_path))
        for p in {kind_points[0], kind_points[-1]}:
            args = g.example(p)
            path = art.specialise(template, [a.shape for a in args], tmp_path / f"{kind}-{p.n}-{p.k}.onnx")
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            assert all(isinstance(d, int) for i in sess.get_inputs() for d in i.shape)
            outs = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})
            with torch.no_grad():
                expected = g.module(*args)
            expected = expected if isinstance(expected, tuple) else (expected,)
            for o, e in zip(outs, expected):
                np.testing.assert_allclose(o, e.numpy(), atol=1e-5, err_msg=f"{kind} at {p}")


def test_monotone_fit_removes_only_inversions():
    from vitsearch.latency.predict import monotone

    assert monotone([1.0, 2.0, 5.0]) == [1.0, 2.0, 5.0]  # a real step up is kept
    assert monotone([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]  # a noisy inversion is pooled
    assert monotone([4.0, 3.0, 2.0]) == pytest.approx([3.0, 3.0, 3.0])


def test_noisy_block_rows_never_predict_more_tokens_as_faster(tmp_path, synthetic):
    """A table whose block row at a larger count was measured faster (noise) still predicts non-decreasing
    latency in the token count."""
    rows = list(synthetic.rows.values())
    blocks = sorted((r for r in rows if r.point.kind == "block"), key=lambda r: r.point.n)
    slow = blocks[1]
    noisy = [T.Row(r.point, r.steps, r.median_ms * (3 if r is slow else 1), r.p90_ms, r.spread_ms, r.repeats)
             for r in rows]
    predictor = Predictor(T.save(tmp_path / "noisy.csv", synthetic.meta, noisy))
    lo, hi = blocks[0].point.n, blocks[-1].point.n
    values = [predictor.component(Point("block", n)) for n in range(lo, hi + 1)]
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_rows_are_scaled_to_the_tables_reference_speed(tmp_path, synthetic):
    """Rows measured while the machine ran at half speed (their call's reference took twice as long) are halved
    back to the table's speed, the median of the references; a table without references is read as stored."""
    rows = list(synthetic.rows.values())
    slow_kinds = {"block", "head"}  # as if profiled in a slow minute: every latency doubled, reference too
    scaled = [T.Row(r.point, r.steps, r.median_ms * (2 if r.point.kind in slow_kinds else 1), r.p90_ms,
                    r.spread_ms, r.repeats, ref_ms=2.0 if r.point.kind in slow_kinds else 1.0) for r in rows]
    predictor = Predictor(T.save(tmp_path / "drift.csv", synthetic.meta, scaled))
    assert predictor.reference_ms == 1.0  # most rows ran at speed 1
    plain = Predictor(synthetic)
    assert plain.reference_ms is None
    for config in CONFIGS:
        assert predictor.predict(config).total_ms == pytest.approx(plain.predict(config).total_ms)
    reloaded = T.load(tmp_path / "drift.csv")
    assert {r.ref_ms for r in reloaded.rows.values()} == {1.0, 2.0}


def test_rows_without_a_reference_turn_drift_correction_off_with_a_warning(tmp_path, synthetic, caplog):
    rows = [T.Row(r.point, r.steps, r.median_ms, r.p90_ms, r.spread_ms, r.repeats,
                  ref_ms=float("nan") if r.point.kind == "head" else 1.0) for r in synthetic.rows.values()]
    with caplog.at_level("WARNING", logger="vitsearch.latency.predict"):
        predictor = Predictor(T.save(tmp_path / "partial.csv", synthetic.meta, rows))
    assert predictor.reference_ms is None
    assert "have no drift reference (ref_ms), so drift correction is off" in caplog.text and "head(n=" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="vitsearch.latency.predict"):
        Predictor(synthetic)  # no row has a reference: an older table, read as stored without a word
    assert caplog.text == ""


def test_monotone_fit_is_the_least_squares_non_decreasing_fit():
    """Against scikit-learn's isotonic regression (an independent pool-adjacent-violators) on noisy curves with
    runs of inversions: breaks if pooled means lose their weights, or a new point pools with one block only."""
    from sklearn.isotonic import IsotonicRegression

    from vitsearch.latency.predict import monotone

    rng = np.random.default_rng(0)
    for size in (2, 5, 25, 60):
        for _ in range(20):
            ys = list(np.linspace(0.1, 1.0, size) + rng.normal(0, 0.15, size))
            fit = monotone(ys)
            assert fit == pytest.approx(list(IsotonicRegression().fit_transform(range(size), ys)), abs=1e-12)
            assert all(b >= a for a, b in zip(fit, fit[1:]))


def test_the_block_curve_the_losses_differentiate_is_drift_scaled_and_monotone(tmp_path, model):
    """``Predictor.block_curve`` (what PiecewiseLinear turns into the latency losses' gradient): each block row
    scaled by the table's reference over its own call's, then made non-decreasing. Block rows profiled at half
    speed (latency and reference doubled) with one noisy inversion give back the true costs, the inversion pooled;
    the curve's slope, the loss's gradient, is then the true one and never 0 or negative where costs rise.
    Breaks if the rows are not scaled, scaled the wrong way, or the curve skips the monotone fit."""
    from vitsearch.training import PiecewiseLinear

    g = geometry(model)
    points = grid(g, TINY_GRID)
    blocks = sorted(p.n for p in points if p.kind == "block")
    noisy = blocks[1]  # measured too fast: below its left neighbour

    def cost(p: Point) -> float:
        if p.kind != "block":
            return 0.5
        return 0.1 * blocks[0] - 0.1 if p.n == noisy else 0.1 * p.n

    rows = [T.Row(p, 1, cost(p) * (2 if p.kind == "block" else 1), 1.0, 0.0, 1,
                  ref_ms=2.0 if p.kind == "block" else 1.0) for p in points]
    predictor = Predictor(T.save(tmp_path / "t.csv", {"device": {"name": "cpu"}, "geometry": g.to_dict(), "batch": 1,
                                                      "runtime": {}, "threads": 1}, rows))
    assert predictor.reference_ms == 1.0
    xs, ys = predictor.block_curve()
    pooled = 0.1 * blocks[0] - 0.05
    assert xs == blocks
    assert ys == pytest.approx([pooled, pooled] + [0.1 * n for n in blocks[2:]])
    n = torch.tensor(float(blocks[-2] + 1), requires_grad=True)
    PiecewiseLinear(xs, ys)(n).backward()
    assert float(n.grad) == pytest.approx(0.1, rel=1e-5)  # the true slope, as a latency loss sees it
    # A prediction reads the same curve: what the loss differentiates is what the search is told.
    assert predictor.component(Point("block", blocks[-1])) == pytest.approx(ys[-1])
