"""A real search folder opened with the real optuna-dashboard (a client vitsearch did not write), served on
127.0.0.1: the objectives carry their names and a trial rejected over the budget is listed there, pruned without
an accuracy and with its constraints infeasible, through its HTTP API and on its page rendered by headless
Chromium."""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from vitsearch.pruning import PruneConfig
from vitsearch.search import SearchSettings, run_search
from vitsearch.search.storage import open_optuna_study
from vitsearch.studyfolder import StudyFolder
from vitsearch.search.record import OBJECTIVES
from vitsearch.training import TrainSettings

from .conftest import missing, require_chromium

pytestmark = pytest.mark.server


def dashboard_binary() -> str:
    """optuna-dashboard beside this Python (the test extra installs it); skips locally, fails in CI."""
    found = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or shutil.which("optuna-dashboard")
    return found or missing("optuna-dashboard is missing: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tables, checkpoint):
    """A tiny real search with one config enqueued that is over the budget (rejected) and one within it (trained)."""
    from vitsearch.search.space import default_space_file, load_space

    tmp = tmp_path_factory.mktemp("dashboard")
    space_file = tmp / "space.toml"
    space_file.write_text(default_space_file("digits").read_text().replace("keep = [0.9, 0.7, 0.5, 0.3]", "keep = [0.5]"))
    settings = SearchSettings(budget="80%", trials=1, train=TrainSettings(steps=2, batch_size=16), study="dash",
                              reports=str(tmp / "reports"), tables=str(tables), space=str(space_file),
                              checkpoint=str(checkpoint), max_train=64, max_val=64, max_attempts=2)
    space = load_space(space_file, depth=12)
    folder = Path(settings.reports) / settings.name()
    folder.mkdir(parents=True)
    study = open_optuna_study(settings, StudyFolder(folder))
    study.enqueue_trial(space.params_of(PruneConfig("evovit", {space.blocks[-1]: space.keep_max})))  # ~ unpruned
    study.enqueue_trial(space.params_of(PruneConfig("evovit", {b: space.keep_min for b in space.blocks[:2]})))
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("vitsearch")
    level, log.level = log.level, logging.INFO
    log.addHandler(handler)
    try:
        result = run_search(settings, progress=False)  # as off a terminal: no bar, plain log lines
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    rejected = [c.trial for c in result.trials if c.accuracy is None]
    trained = [c.trial for c in result.trials if c.accuracy is not None]
    assert rejected and trained, [(c.config, c.status) for c in result.trials]  # both kinds, or the test is vacuous
    return folder, rejected, trained, lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dashboard(searched):
    """optuna-dashboard serving the study's journal file; yields its base URL."""
    folder, *_ = searched
    port = free_port()
    proc = subprocess.Popen([dashboard_binary(), str(folder / "journal.log"), "--storage-class", "JournalFileStorage",
                             "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/meta", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                    pytest.fail(f"optuna-dashboard did not start on {url}: {out[-2000:]}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_the_dashboard_names_the_objectives_and_lists_rejected_trials_infeasible_without_accuracy(dashboard, searched):
    """A rejected trial reaches the dashboard pruned, with no objective values (so no accuracy on any of its axes,
    where a placeholder 0.0 started them at 0) and with its constraints infeasible by the dashboard's own rule."""
    _, rejected, trained, _ = searched
    (summary,) = get(f"{dashboard}/api/studies")["study_summaries"]
    assert summary["study_name"] == "dash" and summary["directions"] == ["maximize", "minimize"]
    assert {a["key"] for a in summary["user_attrs"]} >= {"objectives", "constraints"}
    detail = get(f"{dashboard}/api/studies/{summary['study_id']}")
    assert detail["objective_names"] == list(OBJECTIVES)
    trials = {t["number"]: t for t in detail["trials"]}
    for n in rejected:  # the dashboard's own rule: feasible when every constraint is <= 0
        assert trials[n]["constraints"] and not all(c <= 0 for c in trials[n]["constraints"]), trials[n]
        assert trials[n]["state"] == "Pruned" and not trials[n].get("values"), trials[n]
        status = {a["key"]: a["value"] for a in trials[n]["user_attrs"]}["status"]
        assert status.startswith("rejected before training: over budget"), status
    for n in trained:
        assert trials[n]["constraints"] and all(c <= 0 for c in trials[n]["constraints"]), trials[n]
        assert trials[n]["state"] == "Complete" and trials[n]["values"][0] > 0, trials[n]
    assert not {t["number"] for t in detail["best_trials"]} & set(rejected)


def test_optuna_reads_the_same_constraints_and_names(searched):
    """Optuna's own readers: FrozenTrial.constraints, best_trials and plot_pareto_front's infeasible trials."""
    import warnings

    import matplotlib.pyplot as plt
    import optuna

    folder, rejected, trained, _ = searched
    study = optuna.load_study(study_name="dash", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "journal.log"))))
    assert study.metric_names == list(OBJECTIVES)
    by_number = {t.number: t for t in study.trials}
    # One list (as Optuna's samplers store it): latency_ms, then selectors, as the study's user attr says.
    assert all(len(by_number[n].constraints) == 2 and by_number[n].constraints["0"] > 0 for n in rejected)
    # No fake accuracy: pruned, without values; Optuna's DataFrame has no value for it either.
    assert all(by_number[n].state == optuna.trial.TrialState.PRUNED and by_number[n].values is None for n in rejected)
    optuna_frame = study.trials_dataframe().set_index("number")
    assert optuna_frame.loc[rejected, "values_val_accuracy"].isna().all()
    assert list(study.user_attrs["constraints"]) == ["latency_ms", "selectors"]
    # vitsearch's DataFrame of the same trials: the rejected ones without an accuracy, lists as lists.
    from vitsearch.report import trials_dataframe

    frame = trials_dataframe(folder).set_index("trial")
    assert frame.loc[rejected, "val_accuracy"].isna().all() and frame.loc[trained, "val_accuracy"].notna().all()
    assert isinstance(frame.loc[trained[0], "block_tokens"], list)
    assert all(v <= 0 for n in trained for v in by_number[n].constraints.values())
    # Optuna's front (feasible trials only) is vitsearch's front.json.
    front = json.loads((folder / "front.json").read_text())
    assert {t.number for t in study.best_trials} == {f["trial"] for f in front} and not set(rejected) & {
        f["trial"] for f in front}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_pareto_front(study)
    try:
        assert (ax.get_xlabel(), ax.get_ylabel()) == OBJECTIVES
        # Only the trained trials are drawn: the accuracy axis spans their accuracies (a rejected trial at a
        # placeholder 0.0 started it at 0).
        drawn = [x for c in ax.collections for x, _ in c.get_offsets()]
        accuracies = [by_number[n].values[0] for n in trained]
        assert sorted(drawn) == sorted(accuracies) and ax.get_xlim()[0] > 0, (drawn, ax.get_xlim())
    finally:
        plt.close(ax.figure)


def test_chromium_renders_the_dashboard_page(dashboard, searched, tmp_path):
    """The study page in headless Chromium: the React app loads, fetches the study and draws it (not a blank page);
    the DOM it builds names the objectives."""
    from PIL import Image

    chromium = require_chromium()
    detail_id = get(f"{dashboard}/api/studies")["study_summaries"][0]["study_id"]
    page = f"{dashboard}/dashboard/studies/{detail_id}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1400",
             "--virtual-time-budget=15000"]
    shot = tmp_path / "dashboard.png"
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([chromium, *flags, f"--user-data-dir={profile}", "--dump-dom", page],
                             capture_output=True, text=True, timeout=180).stdout
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *flags, f"--user-data-dir={profile}", f"--screenshot={shot}", page],
                       capture_output=True, text=True, timeout=180)
    if os.environ.get("VITSEARCH_KEEP_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["VITSEARCH_KEEP_SCREENSHOTS"]) / "dashboard.png")
    assert all(name in dom for name in OBJECTIVES), dom[-3000:]
    image = Image.open(shot).convert("L")
    histogram = image.histogram()
    share_of_commonest = max(histogram) / sum(histogram)
    assert share_of_commonest < 0.97, f"the page is {100 * share_of_commonest:.1f}% one shade: blank"


def test_off_a_terminal_each_trial_is_a_plain_log_line_naming_what_runs(searched):
    _, rejected, trained, lines = searched
    assert all(any(line.startswith(f"trial {n}: training evovit:") for line in lines) for n in trained), lines
    assert all(any(line.startswith(f"trial {n} ") and "rejected before training: over budget" in line
                   for line in lines) for n in rejected), lines
