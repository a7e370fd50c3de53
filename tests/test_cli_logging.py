"""Log lines (issue 28 item 6): one format for vitsearch's and Optuna's, printed above a progress bar and never onto
its line, and no long silence where there is no bar."""
import argparse
import logging
import re
import sys

import pytest
from tqdm import tqdm

from vitsearch import cli

LINE = re.compile(r"^\[(INFO|WARNING) \d\d:\d\d:\d\d [a-z_.]+\] ")


def setup_cli_logging():
    """The CLI's logging, its handler on sys.stderr as it is now (in the test's call: captured)."""
    cli._setup_logging(argparse.Namespace(verbose=False, quiet=False))


@pytest.fixture
def cli_logging():
    yield setup_cli_logging
    for name in ("vitsearch", "optuna"):
        logging.getLogger(name).handlers[:] = []


def test_optunas_lines_come_in_vitsearchs_format_once():
    """In the CLI's order: logging set up, then Optuna imported by the search (it adds a handler of its own then)."""
    import subprocess

    code = ("import argparse, logging\n"
            "from vitsearch import cli\n"
            "cli._setup_logging(argparse.Namespace(verbose=False, quiet=False))\n"
            "from vitsearch.search import run_search\n"
            "cli.route_optuna_logs()\n"
            "import optuna\n"
            "optuna.logging.get_logger('optuna.study').warning('from optuna')\n"
            "logging.getLogger('vitsearch.search').warning('from vitsearch')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(LINE.match(line) for line in lines), lines
    assert lines[0].endswith("optuna.study] from optuna") and lines[1].endswith("vitsearch.search] from vitsearch")


def test_a_log_line_is_printed_above_the_bar_not_onto_it(cli_logging, capsys):
    cli_logging()
    bar = tqdm(total=3, file=sys.stderr, mininterval=0, desc="search")
    bar.update(1)
    with cli.log_above_bars():
        logging.getLogger("vitsearch.search").info("trial 0 done")
    bar.update(1)
    bar.close()
    segments = re.split(r"[\r\n]", capsys.readouterr().err)
    said = [s for s in segments if "trial 0 done" in s]
    assert said and all(LINE.match(s) for s in said), said  # each starts a line of its own


def test_profile_off_a_terminal_says_how_far_it_is(tmp_path, caplog, monkeypatch):
    """Without a bar, a line at least every PROGRESS_EVERY_S while a kind is measured (here: at every point)."""
    import importlib

    from vitsearch.latency import GridSpec, MeasureSettings, profile

    profile_module = importlib.import_module("vitsearch.latency.profile")  # the package's `profile` is the function

    monkeypatch.setattr(profile_module, "PROGRESS_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="vitsearch")
    profile("cpu", model="vit_tiny_patch16_224", model_kwargs={"img_size": 32, "patch_size": 8, "depth": 2},
            threads=1, tables=tmp_path, progress=False,
            grid_spec=GridSpec(block_points=3, head_points=2, select_rows=2, select_cols=2, stage_points=2),
            settings=MeasureSettings(warmup=1, min_repeats=2, max_repeats=3, max_seconds=0.2))
    said = [r.getMessage() for r in caplog.records]
    assert "block: exporting 3 graphs" in said, said
    assert "block: 2 of 3 points measured" in said, said
