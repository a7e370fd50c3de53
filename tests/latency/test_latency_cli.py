"""`vitsearch profile` / `vitsearch predict`: results on stdout ending in JSON, bad input as one message."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vitsearch.cli import main
from vitsearch.flops import count_macs
from vitsearch.latency import grid
from vitsearch.latency import table as T
from vitsearch.models import create_model, geometry


@pytest.fixture(scope="module")
def digits_tables(tmp_path_factory):
    """A made-up table for the digits model (the CLI's default), so predict runs without profiling."""
    tables = tmp_path_factory.mktemp("tables")
    g = geometry(create_model("digits"))
    rows = [T.Row(p, 1, 0.01 * p.n + 0.001 * p.k + 0.05, 0.02 * p.n, 0.0, 5) for p in grid(g)]
    meta = {"device": {"name": "cpu"}, "geometry": g.to_dict(), "batch": 1, "runtime": {}, "threads": 1}
    T.save(T.table_path(tables, "cpu", g, 1), meta, rows)
    return tables


def test_predict_prints_a_summary_and_json(digits_tables, capsys):
    assert main(["predict", "--device", "cpu", "--config", "spvit:3=0.7,5=0.7", "--tables", str(digits_tables)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "ms predicted" in out[0]
    record = json.loads(out[-1])
    assert record["predicted_ms"] > 0 and record["config"] == "spvit:3=0.7,5=0.7" and "spvit_select" in record["by_kind_ms"]
    assert "GMACs per image (matmuls)" in out[0]
    assert 0 < record["gmacs"] < count_macs(create_model("digits")).gmacs  # the config's own count, not the model's


@pytest.mark.parametrize("argv, message", [
    (["predict", "--device", "nope", "--config", "spvit:3=0.7"], "unknown device 'nope': known devices are"),
    (["predict", "--config", "spvit:3=much"], "cannot read selector '3=much'"),
    (["predict", "--config", "spvit:30=0.5"], "selector at block 30 does not exist"),
    (["predict", "--config", "spvit:3=0.7", "--batch", "8"], "profile it first with: vitsearch profile --device cpu"),
    (["predict", "--config", "spvit:30=0.5", "--batch", "8"], "selector at block 30 does not exist"),  # config first
    (["profile", "--batch", "0"], "argument --batch: 0 is not a positive whole number"),  # argparse's type=
    (["profile", "--validate", "-3"], "argument --validate: expected a whole number >= 0, got -3"),
    (["profile", "--validate", "1"], "argument --validate: 1 config cannot be ranked: give 0 (no validation) or at least 2"),
])
def test_bad_input_is_one_message(digits_tables, capsys, argv, message):
    assert main([*argv, "--tables", str(digits_tables)]) == 2
    err = capsys.readouterr().err
    # One error line: ours, or argparse's after its usage where the option's type= refused the value.
    assert [line for line in err.splitlines() if "error: " in line] == [next(line for line in err.splitlines()
                                                                            if message in line)]
    assert "Traceback" not in err


def test_the_installed_entry_point_exits_nonzero_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vitsearch", "predict", "--device", "ssh://", "--config", "none",
                           "--tables", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "cannot read ssh device" in done.stderr and "Traceback" not in done.stderr
