"""The headroom a search leaves under its budget for the latency table's own error (issue 25 item 6)."""
import argparse
import json
import os

import numpy as np
import pytest

from vitsearch.cli import headroom
from vitsearch.errors import VitsearchError
from vitsearch.latency.validate import HEADROOM_QUANTILE, measured_headroom, save
from vitsearch.stats import summarise
from vitsearch.search import SearchSettings, run_search
from vitsearch.training import TrainSettings


def validated(table, ratios):
    """Write ``table``'s validation as if its models had measured ``ratios`` x their prediction."""
    rows = [{"config": f"spvit:{3 + i % 8}=0.5", "method": "spvit", "predicted_ms": 1 + i, "measured_ms": (1 + i) * r,
             "measured_at_table_speed_ms": (1 + i) * r} for i, r in enumerate(ratios)]
    save(table.path, rows, summarise([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]))
    return table


@pytest.fixture
def table(tmp_path, table_writer):
    return table_writer(tmp_path / "tables")


def test_the_headroom_is_how_far_the_table_under_predicts_nine_in_ten_models(table):
    ratios = np.linspace(0.95, 1.25, 13)
    found = measured_headroom(validated(table, ratios).path)
    assert found.fraction == pytest.approx(np.quantile(ratios, HEADROOM_QUANTILE) - 1.0)
    assert found.fraction > 0.2 and "13 models measured" in found.source
    assert found.limit_ms(10.0) == pytest.approx(10.0 / (1.0 + found.fraction))


def test_a_table_that_over_predicts_leaves_none_and_a_stale_validation_is_not_read(table):
    assert measured_headroom(validated(table, [0.8, 0.9, 0.95]).path).fraction == 0.0
    validated(table, [1.3, 1.3])
    later = os.stat(table.path.with_name(table.path.stem + ".validation.csv")).st_mtime + 10
    os.utime(table.path, (later, later))  # profiled again after it was validated
    assert measured_headroom(table.path) is None


def test_the_headroom_option_reads_auto_a_share_or_a_percentage():
    assert headroom("auto") is None and headroom("0") == 0.0
    assert headroom("5%") == pytest.approx(0.05) and headroom("0.05") == pytest.approx(0.05)
    for bad in ("150%", "-1%", "nan", "lots"):
        with pytest.raises(argparse.ArgumentTypeError, match="'auto' or a headroom"):
            headroom(bad)


def test_a_headroom_that_leaves_no_config_under_the_budget_is_refused_before_training(tmp_path, table, env):
    validated(table, [3.0, 3.0, 3.0])  # the table predicts a third of what its models measure
    s = SearchSettings(budget="60%", reports=str(tmp_path / "reports"), max_train=64, max_val=32,
                       **{**env, "tables": str(table.path.parent.parent)})
    with pytest.raises(VitsearchError, match=r"with the headroom of 200\.0% .* Give a budget of at least [0-9.]+ ms, "
                                             r"or --headroom 0"):
        run_search(s, progress=False)
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").rglob("trials.json"))


@pytest.mark.slow
def test_the_search_stays_under_the_budget_less_the_headroom_and_a_resumed_study_keeps_its_own(tmp_path, table, env):
    validated(table, [1.0, 1.1, 1.2, 1.2, 1.2])  # 20% over at the 90th percentile
    s = SearchSettings(budget="80%", trials=2, train=TrainSettings(steps=2, batch_size=16), max_train=128,
                       max_val=96, reports=str(tmp_path / "reports"),
                       **{**env, "tables": str(table.path.parent.parent)})
    result = run_search(s, progress=False)
    study = json.loads((result.folder / "study.json").read_text())
    assert study["headroom"]["fraction"] == pytest.approx(0.2) and result.limit_ms == pytest.approx(result.budget_ms / 1.2)
    assert study["limit_ms"] == pytest.approx(result.limit_ms, abs=1e-6)
    trained = [c for c in result.trials if c.accuracy is not None]
    assert trained and all(c.predicted_ms <= result.limit_ms for c in trained)
    assert {str(c.config) for c in result.front} <= {str(c.config) for c in trained}

    validated(table, [1.0, 1.0])  # validated again: the study keeps the limit its trials were judged by
    again = run_search(SearchSettings(**{**s.__dict__, "trials": 3}), progress=False)
    assert again.limit_ms == pytest.approx(result.limit_ms)
    with pytest.raises(VitsearchError, match="different limit_ms"):
        run_search(SearchSettings(**{**s.__dict__, "headroom": 0.0}), progress=False)
