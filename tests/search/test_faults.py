"""Faults in a study's life, through real processes and real files (issue 15): a torn or lost journal, a resume
with other settings, a worker that dies (SIGKILL, on this host or another), Ctrl-C. Each test checks that every
completed trial and baseline is still there, once, and that a refusal is one line naming the file and the fix."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

pytestmark = pytest.mark.slow  # real searches of a few two-step trials

ROOT = Path(__file__).resolve().parents[2]


def search_args(reports: Path, env: dict, study: str = "s", trials: int = 2, steps: int = 2) -> list[str]:
    # A budget in ms far above any digits config: a noisy coarse table on a busy machine never rejects a trial.
    return ["search", "--budget", "1000ms", "--trials", str(trials), "--steps", str(steps), "--max-train", "64",
            "--max-val", "48", "--study", study, "--reports", str(reports), "--tables", env["tables"],
            "--space", env["space"], "--checkpoint", env["checkpoint"]]


def vitsearch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitsearch", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def start(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vitsearch", *args], stdout=subprocess.DEVNULL,
                            stderr=log.open("w"), env={**os.environ, "PYTHONPATH": str(ROOT)})


def fails_cleanly(result: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, last
    return last


def load(journal: Path, study: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=study, storage=JournalStorage(JournalFileBackend(str(journal))))


def trained(study: optuna.Study) -> dict[int, tuple]:
    """Trial number -> (config, accuracy) of every trained, completed trial."""
    return {t.number: (t.user_attrs["config"], t.user_attrs["accuracy"])
            for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) if t.user_attrs.get("accuracy") is not None}


@pytest.fixture(scope="module")
def made(tmp_path_factory, env):
    """A finished study of two trained trials; tests work on copies."""
    reports = tmp_path_factory.mktemp("made")
    result = vitsearch(*search_args(reports, env), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return reports


@pytest.fixture
def reports(made, tmp_path):
    shutil.copytree(made, tmp_path / "reports")
    return tmp_path / "reports"


# The journal ----------------------------------------------------------------------------------------------------

def test_a_torn_last_journal_line_is_moved_aside_and_the_study_goes_on(reports, env):
    journal = reports / "s" / "journal.log"
    before = trained(load(journal))
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 6, "worker_id": "x", "trial_id": 2, "us')  # killed mid-write
    result = vitsearch(*search_args(reports, env, trials=3))
    assert result.returncode == 0, result.stderr[-3000:]
    aside = list((reports / "s").glob("journal.log.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes().endswith(b'"us') and aside[0].name in result.stderr
    after = trained(load(journal))
    assert journal.read_bytes().startswith(whole) and len(after) == 3
    assert all(after[k] == v for k, v in before.items())


def test_a_damaged_journal_line_is_one_message_naming_the_journal(reports, env):
    journal = reports / "s" / "journal.log"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:3] + [b'{"op_code": 6, "worker_id\n'] + lines[3:]))
    fails_cleanly(vitsearch(*search_args(reports, env)), f"{journal} line 4 is damaged", "--study NEW_NAME")


@pytest.mark.parametrize("how", ["emptied", "deleted"])
def test_a_lost_journal_beside_trained_trials_is_refused(reports, env, how):
    folder = reports / "s"
    trials = (folder / "trials.json").read_bytes()
    if how == "emptied":
        (folder / "journal.log").write_bytes(b"")
    else:
        (folder / "journal.log").unlink()
    fails_cleanly(vitsearch(*search_args(reports, env)), str(folder / "journal.log"), str(folder / "trials.json"),
                  "--study NEW_NAME")
    assert (folder / "trials.json").read_bytes() == trials


# study.json -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, named", [
    (["--steps", "3"], "steps 2 -> 3"),
    (["--lr", "0.01"], "lr "),
    (["--max-train", "32"], "max_train 64 -> 32"),
    (["--max-val", "40"], "max_val 48 -> 40"),
])
def test_a_resume_with_other_training_settings_is_refused(reports, env, flags, named):
    study_file = reports / "s" / "study.json"
    before = study_file.read_bytes()
    args = search_args(reports, env)
    for flag, value in zip(flags[::2], flags[1::2]):
        i = args.index(flag) if flag in args else len(args)
        args[i:i + 2] = [flag, value]
    fails_cleanly(vitsearch(*args), named, "--study NEW_NAME", str(study_file))
    assert study_file.read_bytes() == before


@pytest.mark.parametrize("content, named", [
    ("[]", "a JSON list"), ("{}", "no 'settings'"), ('{"study": "s", "model": "digits"}', "no 'settings'"),
    ('{"study": ', "is not valid JSON"),
])
@pytest.mark.parametrize("command", ["search", "finalize"])
def test_a_damaged_study_json_is_one_message_naming_it(reports, env, content, named, command):
    study_file = reports / "s" / "study.json"
    study_file.write_text(content)
    args = search_args(reports, env) if command == "search" else [
        "finalize", "s", "--reports", str(reports), "--trial", "0", "--steps", "1"]
    fails_cleanly(vitsearch(*args), str(study_file), named)


def test_invalid_trials_json_is_one_message_naming_it_under_finalize(reports):
    trials = reports / "s" / "trials.json"
    trials.write_text("[{")
    fails_cleanly(vitsearch("finalize", "s", "--reports", str(reports), "--trial", "0"), str(trials),
                  "is not valid JSON")


def test_an_ssh_device_read_back_from_study_json_is_checked(reports):
    study_file = reports / "s" / "study.json"
    meta = json.loads(study_file.read_text())
    study_file.write_text(json.dumps({**meta, "device": "ssh://-oProxyCommand=touch%20pwned@board"}))
    fails_cleanly(vitsearch("finalize", "s", "--reports", str(reports), "--trial", "0"), "start with '-'")
    assert not (reports / "s" / "finalized").exists()


def test_a_truncated_finalize_state_is_one_message_naming_it(reports):
    front = json.loads((reports / "s" / "front.json").read_text())[0]["trial"]
    state = reports / "s" / "finalized" / f"trial_{front:04d}" / "state.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"PK\x03\x04 cut short")
    fails_cleanly(vitsearch("finalize", "s", "--reports", str(reports), "--trial", str(front), "--steps", "2"),
                  str(state), "--restart")


def test_sigterm_ends_a_finalize_keeping_its_training_state(reports, tmp_path):
    """SIGTERM mid-training: the resumable state stays, no temporary file is left, one line, exit 143 (it used to
    die at once, -15, without a word)."""
    front = json.loads((reports / "s" / "front.json").read_text())[0]["trial"]
    state = reports / "s" / "finalized" / f"trial_{front:04d}" / "state.pt"
    log, tmp = tmp_path / "finalize.log", tmp_path / "tmp"
    tmp.mkdir()
    worker = subprocess.Popen([sys.executable, "-m", "vitsearch", "finalize", "s", "--reports", str(reports), "--trial",
                               str(front), "--steps", "400", "--checkpoint-every", "2"], stdout=subprocess.DEVNULL,
                              stderr=log.open("w"), env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)})
    try:
        wait_for(state.is_file, worker, log)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=300) == 143, log.read_text()[-3000:]
    finally:
        worker.kill()
        worker.wait()
    stderr = log.read_text()
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted while finalizing trial {front}") and str(state.parent) in last, last
    assert state.is_file() and not list(tmp.glob("vitsearch-*")) and not list(tmp.glob("tmp*"))


@pytest.mark.parametrize("name", ["../../etc", "/abs", "a/b", "..", "", "."])
def test_a_study_name_is_one_folder_under_reports(tmp_path, name):
    reports = tmp_path / "deep" / "reports"  # refused before any table, space or checkpoint is read
    env = {"tables": str(tmp_path / "tables"), "space": str(tmp_path / "space.toml"), "checkpoint": "none.pt"}
    fails_cleanly(vitsearch(*search_args(reports, env, study=name)), repr(name), "--study")
    assert not any(p.name == "study.json" for p in tmp_path.rglob("*")) and not Path("/abs").exists()


# What a storage holds is not trusted; a study lives in one storage ---------------------------------------------------

def test_a_checkpoint_path_read_from_the_storage_never_deletes_a_file(reports, env):
    """Trials whose ``checkpoint`` attribute names a file outside the study, or a study file (a hostile colleague's
    shared database, a handed-over journal): the end-of-search cleanup removes checkpoints by trial number only,
    and the records name only the study's own checkpoints."""
    victim = reports.parent / "victim.txt"
    victim.write_text("keep me")
    folder = reports / "s"
    journal = folder / "journal.log"
    study = load(journal)
    done = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) if "accuracy" in t.user_attrs]
    kept = {json.loads((folder / "front.json").read_text())[0]["checkpoint"]}
    before = json.loads((folder / "trials.json").read_text())
    assert (folder / next(iter(kept))).is_file()
    for path in ("../../victim.txt", str(victim), "study.json"):  # dominated by the trained trials: off the front
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, values=[0.0, 999.0], params=done[0].params,
            distributions=done[0].distributions, system_attrs=done[0].system_attrs,
            user_attrs={**done[0].user_attrs, "accuracy": 0.0, "predicted_ms": 999.0, "checkpoint": path}))
    result = vitsearch(*search_args(reports, env))  # enough trials: straight to the records and the cleanup
    assert result.returncode == 0, result.stderr[-3000:]
    assert victim.read_text() == "keep me" and (folder / "study.json").is_file()
    records = json.loads((folder / "trials.json").read_text())
    assert len(records) == len(before) + 3
    named = {r["checkpoint"] for r in records} - {None}
    assert named and all(re.fullmatch(r"checkpoints/trial_\d{4}\.pt", c) for c in named), named
    assert all((folder / c).is_file() for c in kept)


@pytest.mark.parametrize("recorded, given", [(None, "sqlite:///{tmp}/sq.db"), ("sqlite:///{tmp}/sq.db", None)])
def test_another_storage_than_the_studys_is_refused(reports, env, tmp_path, recorded, given):
    """A study made on its journal, rerun with --storage (or the other way round), used to start afresh in the
    other storage and rewrite trials.json and front.json from it."""
    folder = reports / "s"
    study_file = folder / "study.json"
    if recorded is not None:
        meta = json.loads(study_file.read_text())
        meta["settings"]["storage"] = recorded.format(tmp=tmp_path)
        study_file.write_text(json.dumps(meta))
    before = {name: (folder / name).read_bytes() for name in ("study.json", "trials.json", "front.json")}
    args = search_args(reports, env) + (["--storage", given.format(tmp=tmp_path)] if given else [])
    last = fails_cleanly(vitsearch(*args), "--study NEW_NAME", "keeps its trials in")
    assert ("without --storage" if recorded is None else f"with --storage {recorded.format(tmp=tmp_path)}") in last
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert not (tmp_path / "sq.db").exists()


def test_records_are_written_as_trials_finish_so_a_killed_search_reports_them(tmp_path, env, lean_space):
    """SIGKILL a search while it trains its second trial: trials.json already holds the first (written when it
    finished), and report and plot show the study as it is, not "0 trials"."""
    reports, log = tmp_path / "reports", tmp_path / "worker.log"
    journal = reports / "r" / "journal.log"
    args = search_args(reports, {**env, "space": str(lean_space)}, study="r", trials=3, steps=8)
    worker = start(*args, log=log)
    try:
        wait_for(lambda: "accuracy" in log.read_text() and log.read_text().count(": training ") >= 2, worker, log)
    finally:
        worker.kill()
        worker.wait()
    done = trained(load(journal, "r"))
    assert done
    records = json.loads((reports / "r" / "trials.json").read_text())
    assert {r["trial"]: (r["config"], r["accuracy"]) for r in records if r["accuracy"] is not None} == done
    report = vitsearch("report", "r", "--reports", str(reports))
    assert report.returncode == 0 and f"report of r: {len(records)} trials" in report.stdout, report.stderr[-3000:]
    plot = vitsearch("plot", "r", "--reports", str(reports), "-o", str(tmp_path / "overlay.png"))
    assert plot.returncode == 0 and "left out" not in plot.stdout, plot.stdout + plot.stderr[-3000:]


# Workers that die -----------------------------------------------------------------------------------------------

def test_a_trial_left_running_on_another_host_is_run_again(reports, env):
    """A worker on another host died mid-trial: its heartbeat is old, so the next run fails the trial, runs its
    config again and still trains as many trials as asked (it used to stop one short)."""
    journal = reports / "s" / "journal.log"
    study = load(journal)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[-1]
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.RUNNING, params=done.params, distributions=done.distributions,
        user_attrs={"worker": "elsewhere:4242", "heartbeat": time.time() - 3600, "config": done.user_attrs["config"]}))
    dead = study.trials[-1].number
    result = vitsearch(*search_args(reports, env, trials=3))
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(journal)
    assert study.trials[dead].state == optuna.trial.TrialState.FAIL and f"trial {dead} was interrupted" in result.stderr
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == dead]
    assert len(retries) == 1 and retries[0].params == done.params
    assert len(trained(study)) == 3 and not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def test_a_live_worker_beats_while_its_trial_trains(tmp_path, env, lean_space):
    """While a trial trains, its worker stamps the trial's heartbeat into the journal every heartbeat_s seconds
    (read back from the journal's own lines, as another host would see them)."""
    code = ("import sys; from vitsearch.search import SearchSettings, run_search; "
            "from vitsearch.training import TrainSettings; "
            "run_search(SearchSettings(budget='1000ms', trials=1, study='beat', reports=sys.argv[1], "
            "tables=sys.argv[2], space=sys.argv[3], checkpoint=sys.argv[4], max_train=64, max_val=48, heartbeat_s=1, "
            "train=TrainSettings(steps=20, batch_size=16)), progress=False)")
    reports = tmp_path / "reports"
    subprocess.run([sys.executable, "-c", code, str(reports), env["tables"], str(lean_space), env["checkpoint"]],
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, timeout=600, capture_output=True)
    study = load(reports / "beat" / "journal.log", "beat")
    (trial,) = [t for t in study.trials if t.user_attrs.get("accuracy") is not None]
    beats = [op["user_attr"]["heartbeat"] for op in map(json.loads, (reports / "beat" / "journal.log").read_text().splitlines())
             if "heartbeat" in op.get("user_attr", {})]
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    assert len(beats) >= min(3, int(seconds) - 1) and beats == sorted(beats), (beats, seconds)
    assert trial.state == optuna.trial.TrialState.COMPLETE  # never taken for dead while it beat


def wait_for(predicate, worker: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if worker.poll() is not None:
            pytest.fail(f"the worker ended before the point to interrupt it:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"the worker never reached the point to interrupt it:\n{log.read_text()[-3000:]}")


def journal_has(journal: Path, text: str) -> bool:
    return journal.exists() and text.encode() in journal.read_bytes()


def training_after_a_trial_finished(log: Path, journal: Path) -> bool:
    """The worker logging to ``log`` trains a trial now, and some worker has finished a trial before."""
    text = log.read_text()
    started = re.findall(r"trial (\d+): training ", text)
    return (bool(started) and f"trial {started[-1]} " not in text.rsplit(f"trial {started[-1]}: training ", 1)[1]
            and journal_has(journal, '"user_attr":{"accuracy":'))


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_in_a_trial_keeps_the_trials_and_runs_the_trial_again(tmp_path, env, lean_space, signum, code):
    """Ctrl-C, and SIGTERM (a scheduler, docker stop, timeout) the same way: the running trial re-queued, the
    records written, one line, exit 128 + the signal."""
    reports, log = tmp_path / "reports", tmp_path / "worker.log"
    journal = reports / "c" / "journal.log"
    args = search_args(tmp_path / "reports", {**env, "space": str(lean_space)}, study="c", trials=3, steps=20)
    worker = start(*args, log=log)
    wait_for(lambda: "accuracy" in log.read_text() and log.read_text().count(": training ") >= 2, worker, log)
    worker.send_signal(signum)
    assert worker.wait(timeout=120) == code
    stderr = log.read_text()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted:") and "trained trials are kept" in last and "run the same command" in last
    study = load(journal, "c")
    before = trained(study)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert before and len(failed) == 1 and not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.WAITING
    recorded = json.loads((reports / "c" / "trials.json").read_text())
    assert {r["trial"] for r in recorded if r["accuracy"] is not None} == set(before)
    assert (reports / "c" / "trials.csv").is_file() and (reports / "c" / "front.csv").is_file()
    result = vitsearch(*args, timeout=900)  # two 20-step trials: minutes on a loaded machine
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(journal, "c")
    after = trained(study)
    assert len(after) == 3 and all(after[k] == v for k, v in before.items())
    assert study.trials[retry[0].number].state == optuna.trial.TrialState.COMPLETE  # the interrupted config ran


# SIGKILL at any point: nothing completed lost, nothing run twice ---------------------------------------------------

@pytest.mark.parametrize("point", ["baselines", "trials"])
@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_in_a_search_loses_and_repeats_nothing(tmp_path, env, point, workers):
    """SIGKILL one worker after the first baseline is stored, or while a trial trains after one finished (with
    two workers on one journal, the other one goes on); the resumed study holds every baseline and trial that
    was completed before, unchanged and once, and reaches its trial count."""
    reports, log = tmp_path / "reports", tmp_path / "worker.log"
    journal = reports / "k" / "journal.log"
    # Two workers share the trials: six, so the victim reliably trains one after the first is done anywhere.
    count = 4 if workers == 1 else 6
    args = search_args(reports, env, study="k", trials=count, steps=6)
    victim = start(*args, log=log)
    others = [start(*args, log=tmp_path / f"other{i}.log") for i in range(workers - 1)]
    try:
        if point == "baselines":
            # a baseline stored in the study (a baseline trial's own claim is '"key":"baseline:...')
            wait_for(lambda: journal_has(journal, '"user_attr":{"baseline:'), victim, log)
        else:
            wait_for(lambda: training_after_a_trial_finished(log, journal), victim, log)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        study = load(journal, "k")
        baselines_before = {k: v for k, v in study.user_attrs.items() if k.startswith("baseline:")}
        trials_before = trained(study)
        for other in others:
            assert other.wait(timeout=600) == 0, (tmp_path / "other0.log").read_text()[-3000:]
    finally:
        for p in [victim, *others]:
            p.kill()
            p.wait()
    result = vitsearch(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(journal, "k")
    baselines = {k: v for k, v in study.user_attrs.items() if k.startswith("baseline:")}
    assert len(baselines) == 3 and all(baselines[k] == v for k, v in baselines_before.items())
    after = trained(study)
    assert len(after) == count and all(after[k] == v for k, v in trials_before.items())
    configs = [c for c, _ in after.values()]
    assert len(set(configs)) == len(configs)  # no config trained twice
    records = json.loads((reports / "k" / "trials.json").read_text())
    assert sorted(r["trial"] for r in records if r["accuracy"] is not None) == sorted(after)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


PG_WORKER = """
import logging, sys
logging.basicConfig(level=logging.INFO)  # the trial lines the test waits for (the CLI sets this up itself)
from vitsearch.search import SearchSettings, run_search
from vitsearch.training import TrainSettings
run_search(SearchSettings(budget="1000ms", trials=3, study="pg", storage=sys.argv[1], reports=sys.argv[2],
                          tables=sys.argv[3], space=sys.argv[4], checkpoint=sys.argv[5], max_train=64, max_val=48,
                          heartbeat_s=1, train=TrainSettings(steps=40, batch_size=16)), progress=False)
"""


@pytest.mark.server
def test_a_dead_database_worker_on_another_host_is_failed_by_optunas_heartbeat(postgres, tmp_path, env):
    """SIGKILL a worker mid-trial on PostgreSQL and make its trial look like another host's: the next worker's
    Optuna heartbeat check fails it and re-queues its config, the study reaches its count, and the password of
    the storage URL is in no file of the study folder."""
    url = postgres.replace("vitsearch@", "vitsearch:s3cret-pw@")  # trust auth: the password is only carried along
    rdb = postgres.replace("postgresql://", "postgresql+psycopg2://")
    reports, log = tmp_path / "reports", tmp_path / "worker.log"
    args = [url, str(reports), env["tables"], env["space"], env["checkpoint"]]
    pyenv = {**os.environ, "PYTHONPATH": str(ROOT)}
    victim = subprocess.Popen([sys.executable, "-c", PG_WORKER, *args], stderr=log.open("w"), env=pyenv)
    try:
        def mid_trial() -> bool:
            text = log.read_text()
            return "accuracy" in text and text.count(": training ") >= 2

        wait_for(mid_trial, victim, log)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    finally:
        victim.kill()
        victim.wait()
    study = optuna.load_study(study_name="pg", storage=rdb)
    before = trained(study)
    dead = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert len(dead) == 1
    storage = optuna.storages.RDBStorage(rdb)  # the trial made another host's, out of this host's pid rule
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("pg"), dead[0].number)
    storage.set_trial_user_attr(trial_id, "worker", "elsewhere:4242")
    time.sleep(5)  # past the grace period (4 heartbeats of 1 s)
    result = subprocess.run([sys.executable, "-c", PG_WORKER, *args], capture_output=True, text=True, env=pyenv,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="pg", storage=rdb)
    assert study.trials[dead[0].number].state == optuna.trial.TrialState.FAIL
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == dead[0].number]
    assert len(retries) == 1 and retries[0].params == dead[0].params and "stopped beating" in result.stderr
    after = trained(study)
    assert len(after) == 3 and all(after[k] == v for k, v in before.items())
    recorded = json.loads((reports / "pg" / "study.json").read_text())
    assert recorded["settings"]["storage"] == url.replace("s3cret-pw", "***")
    assert not any(b"s3cret-pw" in p.read_bytes() for p in (reports / "pg").rglob("*") if p.is_file())
    assert "s3cret-pw" not in log.read_text() + result.stderr


@pytest.mark.server
def test_a_database_stopped_during_a_trial_is_one_message(stoppable_postgres, tmp_path, env, lean_space):
    """PostgreSQL stopped while a worker trains: one line naming the storage (its password hidden) and how to go
    on, exit 1, instead of Optuna's tracebacks ending in "invalid data in the commit, e.g. exceeding max length"."""
    url, stop = stoppable_postgres
    url = url.replace("vitsearch@", "vitsearch:s3cret-pw@")  # trust auth: the password is only carried along
    log = tmp_path / "worker.log"
    args = search_args(tmp_path / "reports", {**env, "space": str(lean_space)}, study="down", trials=3, steps=10)
    worker = start(*args, "--storage", url, log=log)
    try:
        wait_for(lambda: ": training " in log.read_text(), worker, log)
        stop()
        assert worker.wait(timeout=600) == 1, log.read_text()[-3000:]
    finally:
        worker.kill()
        worker.wait()
    stderr = log.read_text()
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr[-5000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the study storage {url.replace('s3cret-pw', '***')} stopped answering"), last
    assert "run the same command to resume" in last and "s3cret-pw" not in stderr


# The held-out split belongs to the base model ----------------------------------------------------------------------

def test_the_digits_split_is_the_base_models_whatever_the_search_seed(digits_base):
    """--seed 1 used to re-draw the split: 80% of the held-out digits had trained the base model."""
    from vitsearch.errors import VitsearchError
    from vitsearch.search import SearchSettings, load_base, load_splits

    _, meta = digits_base
    base, info = load_base(SearchSettings())
    recorded = meta["dataset_provenance"]["split_sha256"]
    data = meta["settings"]["data"]
    assert info["split"] == {"seed": data["seed"], "val_fraction": data["val_fraction"],
                             "test_fraction": data["test_fraction"], "sha256": recorded}
    for seed in (0, 1, 7):
        splits = load_splits(SearchSettings(seed=seed, max_val=100), base, info["split"])
        assert splits.provenance["split_sha256"] == recorded
    for other in ({"seed": 1}, {"test_fraction": 0.25}):  # another seed or other shares: other held-out images
        with pytest.raises(VitsearchError, match="held-out splits .* are not the base model's"):
            load_splits(SearchSettings(), base, {**info["split"], **other})
