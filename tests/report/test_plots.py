"""Plot data (pure functions of a study) and the drawings made from it: labelled axes, non-blank PNGs."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from vitsearch.errors import VitsearchError
from vitsearch.report import (Point, check_comparable, draw_flops, draw_overlay, draw_pareto, draw_tokens,
                              draw_validation, flops_info, front_steps, load_study, overlay_info, pareto_info,
                              save_figure, token_info, validation_info)

from .conftest import write_study


def test_front_steps_hold_each_accuracy_until_the_next_point_and_run_on_to_the_budget():
    front = [Point(1.0, 80.0, "a"), Point(2.0, 85.0, "b"), Point(3.0, 90.0, "c")]
    xs, ys = front_steps(front, right=4.0)
    assert xs == [1.0, 2.0, 2.0, 3.0, 3.0, 4.0]
    assert ys == [80.0, 80.0, 85.0, 85.0, 90.0, 90.0]
    assert front_steps(front[:1], right=0.5) == ([1.0], [80.0])  # nothing runs backwards
    assert front_steps([], right=4.0) == ([], [])


def test_pareto_info_splits_trials_by_feasibility_and_marks_budget_and_baselines(study_folder):
    info = pareto_info(load_study(study_folder))
    assert [p.label for p in info.front] == ["spvit:3=0.5", "spvit:3=0.7,6=0.7", "evovit:4=0.8"]
    assert {p.label for p in info.trained} == {p.label for p in info.front} | {"evovit:3=0.6"}
    assert info.rejected == [1.9, 2.1] and info.infeasible == []  # over budget: never trained
    assert info.front[1].y == pytest.approx(88.0) and info.front[1].trial == 1  # accuracy in percent
    assert info.budget == 1.6 and info.step_x[-1] == 1.6 and info.step_y[-1] == pytest.approx(90.0)
    assert (info.unpruned.x, info.unpruned.y) == (2.0, pytest.approx(91.0))
    # spvit uniform (84% at 1.45 ms) is beaten by trial 1; evovit uniform (89% at 1.30 ms) is not.
    assert [u.label for u in info.uniform] == ["spvit:3=0.7,5=0.7,7=0.7", "evovit:3=0.7,5=0.7,7=0.7"]
    assert info.uniform_matched == [True, False]
    assert info.x_label == "predicted latency (ms, batch 1, fp32)" and info.y_label == "top-1 accuracy on test (%)"


def test_a_trained_trial_over_budget_is_kept_apart_from_the_feasible(study_folder):
    study = load_study(study_folder)
    study.trials = [dataclasses.replace(t, feasible=False) if t.config == "evovit:4=0.8" else t for t in study.trials]
    info = pareto_info(study)
    assert [p.label for p in info.infeasible] == ["evovit:4=0.8"]
    assert "evovit:4=0.8" not in {p.label for p in info.front}


def test_gmacs_and_latency_fronts_show_where_flops_mislead(study_folder):
    info = flops_info(load_study(study_folder))
    assert info.gmacs.budget is None and "GMACs" in info.gmacs.x_label
    # evovit:3=0.6 computes fewer MACs than spvit:3=0.7,6=0.7 yet is predicted slower: only FLOPs keep it.
    assert info.only_on_gmacs_front == ["evovit:3=0.6"] and info.only_on_latency_front == []
    assert info.ranked == 4 and math.isnan(info.kendall_tau)  # no rank agreement from 4 points
    more = [("spvit:3=0.5", 1.2, 0.80), ("spvit:3=0.7,6=0.7", 1.4, 0.88), ("evovit:4=0.8", 1.55, 0.90),
            ("evovit:3=0.6", 1.5, 0.85), ("spvit:5=0.6", 1.3, 0.83)]
    info = flops_info(load_study(write_study(study_folder.parent, "five", trials=more)))
    assert info.ranked == 5 and -1 <= info.kendall_tau <= 1


def test_the_view_zooms_to_the_front_and_labels_do_not_overprint(reports):
    """The view is the region within the budget (the slower unpruned model is outside it, counted); of two front
    points closer than a label, only the first is labelled."""
    trials = [("spvit:3=0.5", 1.20, 0.80), ("spvit:3=0.55", 1.201, 0.801), ("evovit:4=0.8", 1.55, 0.90)]
    info = pareto_info(load_study(write_study(reports, "close", trials=trials)))
    assert [p.trial for p in info.front] == [0, 1, 2] and [p.trial for p in info.labelled] == [0, 2]
    assert info.x_view[1] < 2.0 and "1 unpruned model" in info.outside  # unpruned at 2.0 ms, budget 1.6 ms
    assert info.y_view[0] <= 91.0 <= info.y_view[1]  # its accuracy stays in view, as a reference line


def test_the_learned_trial_is_marked_on_the_front_and_named_in_the_tables(study_folder):
    from vitsearch.report.tables import entry_rows

    study = load_study(study_folder)
    study.trials = [dataclasses.replace(t, kind="learned") if t.config == "spvit:3=0.7,6=0.7" else t
                    for t in study.trials]
    info = pareto_info(study)
    assert [p.label for p in info.learned] == ["spvit:3=0.7,6=0.7"] and info.learned[0] in info.front
    ax = draw_pareto(info)
    assert "learned keep rates (SPViT)" in [t.get_text() for t in ax.get_legend().get_texts()]
    rows = {r[0]: r[1] for r in entry_rows(study.trials, study)}
    assert rows["1"] == "spvit (learned rates)" and rows["0"] == "spvit"


def test_legends_sit_outside_the_axes_and_hide_no_point(study_folder):
    study = load_study(study_folder)
    for name, ax in (("pareto", draw_pareto(pareto_info(study))), ("overlay", draw_overlay(overlay_info([study]))),
                     ("tokens", draw_tokens(token_info([study])))):
        ax.figure.canvas.draw()  # lays the figure out
        legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.x0 >= box.x1, name


def test_overlay_keeps_one_series_per_study_and_names_what_differs(reports):
    a = load_study(write_study(reports, "cpu-study"))
    b = load_study(write_study(reports, "pixel-study", device="pixel", budget_ms=1.5,
                               trials=[("spvit:3=0.5", 1.0, 0.82), ("evovit:3=0.6", 1.4, 0.87)]))
    info = overlay_info([a, b])
    assert [s.label for s in info.series] == ["cpu-study (cpu, fp32, budget 80%, spvit+evovit)",
                                              "pixel-study (pixel, fp32, budget 80%, spvit+evovit)"]
    assert [s.budget for s in info.series] == [1.6, 1.5]
    assert [len(s.front) for s in info.series] == [3, 2] and info.skipped == []


def test_an_int8_study_beside_an_fp32_one_says_so_in_legend_title_and_axis(reports):
    """Their latencies are of different graphs: the legend and the title name each study's precision, and the
    shared axis does not claim either."""
    a = load_study(write_study(reports, "fp32-study"))
    b = load_study(write_study(reports, "int8-study", precision="int8"))
    info = overlay_info([a, b])
    assert [s.label for s in info.series] == ["fp32-study (cpu, fp32, budget 80%, spvit+evovit)",
                                              "int8-study (cpu, int8, budget 80%, spvit+evovit)"]
    assert info.x_label == "predicted latency (ms per batch)"
    assert " in int8, budget" in pareto_info(b).title and pareto_info(b).x_label.endswith(", int8)")


def test_overlay_refuses_studies_with_different_metrics(reports):
    a = load_study(write_study(reports, "top1-study"))
    b = load_study(write_study(reports, "top5-study", metric="top5"))
    with pytest.raises(VitsearchError, match=r"top1-study: metric top1.*top5-study: metric top5.*separately"):
        overlay_info([a, b])
    check_comparable([a, a])  # the same study twice is fine


def test_overlay_leaves_out_studies_without_trained_trials(reports):
    a = load_study(write_study(reports, "done"))
    empty = load_study(write_study(reports, "empty", with_results=False))
    info = overlay_info([a, empty])
    assert len(info.series) == 1 and info.skipped == ["empty: no trained trial within budget yet"]
    with pytest.raises(VitsearchError, match="nothing to plot: empty"):
        overlay_info([empty])


def test_token_info_lists_each_front_config_against_the_unpruned_model(reports):
    a = load_study(write_study(reports, "a"))
    info = token_info([a])
    assert info.reference == [65] * 8
    assert [label.split(" ")[0] for label, _ in info.lines] == [e.config for e in a.front]
    assert info.lines[0][1] == [65, 65, 65, 34, 34, 34, 34, 34]
    both = token_info([a, load_study(write_study(reports, "b"))])
    assert len(both.lines) == 6 and both.lines[-1][0].startswith("b: ")


def test_validation_info_comes_from_the_tables_validation_or_is_none(reports):
    info = validation_info(load_study(write_study(reports, "v")))
    measured, at_speed = info.panels
    assert measured.statistic == "as measured" and at_speed.statistic == "at the table's speed"
    assert set(measured.series) == {"spvit", "evovit"} and measured.series["evovit"] == ([1.55], [1.62])
    assert at_speed.series["evovit"] == ([1.63], [1.62])
    assert (measured.lo, measured.hi) == (1.10, 1.62) and (at_speed.lo, at_speed.hi) == (1.10, 1.63)
    assert measured.summary["median_abs_error_pct"] == 5.0 and at_speed.summary["median_abs_error_pct"] == 1.5
    assert validation_info(load_study(write_study(reports, "nov", device="board", validation=False))) is None


def _png_pixels(path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(path)


@pytest.fixture(scope="module")
def drawings(tmp_path_factory):
    """Every drawing of the synthetic study, saved once as PNG and SVG."""
    reports = tmp_path_factory.mktemp("drawings") / "reports"
    study = load_study(write_study(reports, "s"))
    other = load_study(write_study(reports, "t", device="pixel", trials=[("spvit:3=0.5", 1.0, 0.82)]))
    axes = {"pareto": [draw_pareto(pareto_info(study))], "overlay": [draw_overlay(overlay_info([study, other]))],
            "tokens": [draw_tokens(token_info([study]))], "flops": list(draw_flops(flops_info(study))),
            "validation": list(draw_validation(validation_info(study)))}
    files = {name: save_figure(ax[0].figure, reports / name) for name, ax in axes.items()}
    return axes, files


@pytest.mark.parametrize("name, x_unit", [("pareto", "(ms"), ("overlay", "(ms"), ("tokens", "block"),
                                          ("flops", "GMACs"), ("validation", "(ms)")])
def test_drawings_have_labelled_axes_and_are_not_blank(drawings, name, x_unit):
    axes, files = drawings
    ax = axes[name][0]
    assert x_unit in ax.get_xlabel() and ax.get_ylabel()
    assert all(a.get_xlabel() and a.get_ylabel() for a in axes[name])
    pixels = _png_pixels(files[name]["png"])
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert float(pixels[..., :3].std()) > 0.05  # a white canvas has 0; text and lines make the spread
    assert files[name]["svg"].read_text().startswith("<?xml")


def test_the_pareto_drawing_shows_every_element_the_data_has(drawings):
    ax = drawings[0]["pareto"][0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["Pareto front", "trained, within budget", "rejected before training (over budget)",
                      "budget 1.6 ms", "unpruned (at 2, right of this view)", "unpruned accuracy",
                      "uniform baseline, matched by the front",
                      "uniform baseline, not matched"]
    step = ax.get_lines()[0]
    assert list(step.get_xdata()) == [1.2, 1.4, 1.4, 1.55, 1.55, 1.6]


def test_an_empty_study_draws_a_chart_that_says_so(reports):
    ax = draw_pareto(pareto_info(load_study(write_study(reports, "empty", with_results=False))))
    assert [t.get_text() for t in ax.texts] == ["no completed trials yet"]
    assert not math.isnan(ax.get_xlim()[0])


def test_saving_a_figure_twice_gives_the_same_bytes(drawings, tmp_path):
    axes, files = drawings
    again = save_figure(axes["pareto"][0].figure, tmp_path / "again")
    for fmt in ("png", "svg"):
        assert again[fmt].read_bytes() == files["pareto"][fmt].read_bytes()  # rebuilt reports diff cleanly
