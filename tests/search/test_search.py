"""The search end to end on the digits default: a coarse real latency table, a few briefly trained trials."""
import json
import subprocess
import sys
import time

import optuna
import pytest

from vitsearch.errors import VitsearchError
from vitsearch.pareto import dominates
from vitsearch.search import SearchSettings, run_search, summary
from vitsearch.training import TrainSettings

pytestmark = pytest.mark.slow  # real searches, each training a few candidates

FAST = TrainSettings(steps=2, batch_size=16)


def settings(tmp_path, env, **kw) -> SearchSettings:
    base = dict(budget="95%", trials=3, train=FAST, reports=str(tmp_path / "reports"), max_train=128, max_val=96, **env)
    return SearchSettings(**{**base, **kw})


def test_search_writes_trials_front_baselines_and_front_checkpoints(tmp_path, env):
    result = run_search(settings(tmp_path, env), progress=False)
    folder = result.folder
    for name in ("study.json", "trials.csv", "trials.json", "front.csv", "front.json", "baselines.json", "journal.log"):
        assert (folder / name).is_file(), name
    trials = json.loads((folder / "trials.json").read_text())
    assert sum(t["accuracy"] is not None for t in trials) == 3 and len({t["trial"] for t in trials}) == len(trials)
    front = json.loads((folder / "front.json").read_text())
    for f in front:
        assert f["feasible"] and f["predicted_ms"] <= result.budget_ms
        assert (folder / f["checkpoint"]).is_file()
        # the front is chosen on val: no trained trial beats a front config there (on test one may)
        assert not any(dominates((t["val_accuracy"], t["predicted_ms"]), (f["val_accuracy"], f["predicted_ms"]))
                       for t in trials if t["accuracy"] is not None and t["feasible"])
    assert len(list((folder / "checkpoints").glob("trial_*.pt"))) == len(front)
    baselines = json.loads((folder / "baselines.json").read_text())
    assert baselines[0]["kind"] == "unpruned" and [b["config"] for b in baselines[1:]] == [
        "spvit:3=0.5,6=0.5,9=0.5", "evovit:3=0.5,6=0.5,9=0.5"]
    record = json.loads((folder / "study.json").read_text())
    assert record["budget"] == "95%" and record["sha256"] and record["versions"]["optuna"].startswith(("4", "5"))
    assert summary(result)["trained"] == 3  # trials counts trained candidates; rejections are extra


def test_the_search_decides_on_val_and_never_reads_test(tmp_path, env):
    """Issue 25: val is what the search ranks and selects on, test what it states. Two searches whose test splits
    differ (all 359 test digits, or 24 of them) sample the same configs, score them the same on val and keep the same
    front: no decision reads test. Their stated (test) accuracies differ."""
    full = run_search(settings(tmp_path, env, study="full-test"), progress=False)
    small = run_search(settings(tmp_path, env, study="small-test", max_test=24), progress=False)

    def decisions(result):
        return ([(str(c.config), c.val_accuracy, c.predicted_ms) for c in result.trials],
                [str(c.config) for c in result.front], str(result.best.config))

    assert decisions(full) == decisions(small)
    assert [c.accuracy for c in full.trials if c.accuracy is not None] != \
        [c.accuracy for c in small.trials if c.accuracy is not None]
    study = optuna.load_study(study_name="full-test", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(full.folder / "journal.log"))))
    assert study.metric_names == ["val_accuracy", "predicted_latency_ms"]
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("accuracy") is not None:  # the objective is val's; test's sits beside it
            assert t.values[0] == t.user_attrs["val_accuracy"] and 0 <= t.user_attrs["accuracy"] <= 1
    line = summary(full)
    assert line["best"]["val_accuracy"] == full.best.val_accuracy and line["best"]["accuracy"] == full.best.accuracy
    record = json.loads((full.folder / "study.json").read_text())
    assert record["splits"]["decides_by"] == "val" and record["splits"]["test_size"] == 359
    assert json.loads((small.folder / "study.json").read_text())["splits"]["test_size"] == 24


def test_the_cost_estimate_comes_before_the_first_result_and_adds_up(tmp_path, env, lean_space, caplog):
    """Issue 13: before any result, what one candidate costs on the training device and the whole search."""
    import logging

    caplog.set_level(logging.INFO, logger="vitsearch")
    run_search(settings(tmp_path, env, space=str(lean_space), trials=2, train=TrainSettings(steps=5, batch_size=16)),
               progress=False)
    lines = [r.getMessage() for r in caplog.records]
    at = next(i for i, line in enumerate(lines) if "s per training step of one config" in line)
    assert at < next(i for i, line in enumerate(lines) if "accuracy" in line)  # the unpruned baseline's included
    assert "(2 candidates, 1 baselines)" in lines[at]


@pytest.mark.parametrize("strategy, expected", [("brief", (400.0, 35 * 400.0)), ("shared", (20.0, 35 * 20 + 1800.0))])
def test_the_search_cost_counts_every_candidate_baseline_and_the_supernet(strategy, expected):
    from vitsearch.search.evaluation import training_seconds

    s = SearchSettings(strategy=strategy, trials=24, train=TrainSettings(steps=40), shared_steps=60,
                       shared_finetune_steps=2)
    assert training_seconds(10.0, s, baselines=11) == pytest.approx(expected)


def test_rerunning_a_study_continues_without_repeating_trials(tmp_path, env):
    first = run_search(settings(tmp_path, env, study="resume"), progress=False)
    again = run_search(settings(tmp_path, env, study="resume", trials=5), progress=False)
    before = {c.trial: (c.config, c.accuracy) for c in first.trials}
    after = {c.trial: (c.config, c.accuracy) for c in again.trials}
    assert sum(acc is not None for _, acc in after.values()) == 5 and all(after[k] == v for k, v in before.items())


def test_a_budget_below_the_fastest_config_names_the_minimum(tmp_path, env):
    with pytest.raises(VitsearchError, match=r"below the fastest config .* at least [0-9.]+ ms"):
        run_search(settings(tmp_path, env, budget="1%"), progress=False)


def test_a_budget_that_holds_fewer_models_than_asked_trains_them_all_and_says_so(tmp_path, env, caplog):
    from vitsearch.pruning import canonical_key
    from vitsearch.search import fastest_config, load_base, load_predictor
    from vitsearch.search import load_space
    from vitsearch.search.coverage import FeasibleSet

    s = settings(tmp_path, env)
    base, _ = load_base(s)
    predictor = load_predictor(s, base, progress=False)
    space = load_space(env["space"], depth=len(base.blocks))
    _, fastest_ms = fastest_config(space, predictor)
    budget_ms = fastest_ms + 1e-5
    feasible = FeasibleSet(space, lambda c: predictor.predict(c).total_ms,
                           lambda c: canonical_key(c, depth=12, num_patches=64), budget_ms)
    while feasible.complete():  # the parts known from a sample, listed whole
        pass
    asked = len(feasible) + 2
    with caplog.at_level("INFO"):
        result = run_search(settings(tmp_path, env, budget=f"{budget_ms:.6f}ms", trials=asked, study="tight"),
                            progress=False)
    trained = [c for c in result.trials if c.accuracy is not None]
    assert {canonical_key(c.config, depth=12, num_patches=64) for c in trained} == set(feasible.models)
    assert all(c.predicted_ms <= budget_ms for c in trained) and result.best is not None
    assert "distinct models fit the budget" in caplog.text  # said at the start
    assert f"trained {len(feasible)} of the {asked} candidates asked" in caplog.text


def test_changing_the_settings_of_an_existing_study_is_refused(tmp_path, env):
    run_search(settings(tmp_path, env, study="fixed", trials=1), progress=False)
    with pytest.raises(VitsearchError, match="different budget_ms"):
        run_search(settings(tmp_path, env, study="fixed", trials=1, budget="90%"), progress=False)


def test_a_device_without_a_table_says_how_to_profile_it(tmp_path, env):
    with pytest.raises(VitsearchError, match="vitsearch profile --device pixel"):
        run_search(settings(tmp_path, env, device="pixel"), progress=False)


def test_an_unreachable_database_is_a_clear_error(tmp_path, env):
    with pytest.raises(VitsearchError, match="cannot open the study storage at postgresql://nobody@127.0.0.1:9/"):
        run_search(settings(tmp_path, env, storage="postgresql://nobody@127.0.0.1:9/none"), progress=False)


def test_weight_sharing_evaluates_candidates_from_one_supernet(tmp_path, env):
    result = run_search(settings(tmp_path, env, strategy="shared", shared_steps=3, shared_finetune_steps=0,
                                 trials=3), progress=False)
    assert (result.folder / "supernet.pt").is_file()
    trained = [c for c in result.trials if c.accuracy is not None]
    assert len(trained) == 3 and all(c.train_seconds == 0.0 for c in trained)  # evaluated as the supernet left them



# Many workers, one study: two worker processes share a real PostgreSQL server started on loopback (conftest.py).
WORKER = """
import sys
from vitsearch.search import SearchSettings, run_search
from vitsearch.training import TrainSettings
run_search(SearchSettings(budget="95%", trials=4, study="shared-db", storage=sys.argv[1], reports=sys.argv[2],
                          tables=sys.argv[3], space=sys.argv[4], checkpoint=sys.argv[5], max_train=128, max_val=96,
                          train=TrainSettings(steps=2, batch_size=16)), progress=False)
"""


@pytest.mark.server
def test_two_workers_record_every_trial_exactly_once(postgres, tmp_path, env):
    args = [postgres, str(tmp_path / "reports"), env["tables"], env["space"], env["checkpoint"]]
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared-db", storage=postgres.replace("postgresql://", "postgresql+psycopg2://"))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    numbers = [t.number for t in complete]
    assert len(complete) >= 4 and len(set(numbers)) == len(numbers)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both workers took trials
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    recorded = json.loads((tmp_path / "reports" / "shared-db" / "trials.json").read_text())
    # The last worker to finish wrote every trial of the study, each once.
    assert sorted(r["trial"] for r in recorded) == sorted(numbers)


KILLABLE = """
import sys
from vitsearch.search import SearchSettings, run_search
from vitsearch.training import TrainSettings
run_search(SearchSettings(budget="95%", trials=8, study="killed", reports=sys.argv[1], tables=sys.argv[2],
                          space=sys.argv[3], checkpoint=sys.argv[4], max_train=128, max_val=96,
                          train=TrainSettings(steps=30, batch_size=16)),
           progress=False)
"""


def test_a_search_killed_mid_trial_resumes_with_every_completed_trial_intact(tmp_path, env):
    import signal

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    reports = tmp_path / "reports"
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-c", KILLABLE, str(reports), env["tables"], env["space"], env["checkpoint"]],
                              stdout=log.open("w"), stderr=subprocess.STDOUT)
    journal, deadline, before = reports / "killed" / "journal.log", time.time() + 600, []
    try:
        while time.time() < deadline and worker.poll() is None:
            time.sleep(0.2)
            if not journal.exists():
                continue
            study = optuna.load_study(study_name="killed", storage=JournalStorage(JournalFileBackend(str(journal))))
            done = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                    if t.user_attrs.get("accuracy") is not None]
            running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
            if done and running and "config" in running[0].user_attrs:
                worker.send_signal(signal.SIGKILL)
                before = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                killed = running[0]
                break
    finally:
        worker.kill()
        worker.wait()
    assert before, f"the worker finished or never reached a trained trial in time:\n{log.read_text()[-3000:]}"
    result = run_search(settings(tmp_path, env, study="killed", trials=8,
                                 train=TrainSettings(steps=30, batch_size=16)), progress=False)
    after = {c.trial: (str(c.config), c.accuracy, c.predicted_ms) for c in result.trials}
    for t in before:  # every trial completed before the kill is there, unchanged, and was not run again
        assert after[t.number] == (t.user_attrs["config"], t.user_attrs.get("accuracy"), t.user_attrs["predicted_ms"])
    study = optuna.load_study(study_name="killed", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert study.trials[killed.number].state == optuna.trial.TrialState.FAIL
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params  # the interrupted config ran again
    assert sum(c.accuracy is not None for c in result.trials) == 8


def test_a_config_suggested_again_is_not_trained_again(tmp_path, env):
    """A trained config enqueued twice more (as TPE re-suggests one in a discrete space): both repeats reuse its
    result, are not counted as trained and are left out of the study's candidates."""
    from vitsearch.search import load_space

    first = run_search(settings(tmp_path, env, trials=1, study="again"), progress=False)
    done = next(c for c in first.trials if c.accuracy is not None)
    storage = optuna.load_study(study_name="again", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(first.folder / "journal.log"))))
    params = load_space(env["space"], depth=12).params_of(done.config)
    # stop right after the two repeats (baselines are pruned trials, not counted as attempts)
    attempts = len(storage.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) + 2
    for _ in range(2):
        storage.enqueue_trial(params)
    again = run_search(settings(tmp_path, env, trials=2, study="again", max_attempts=attempts), progress=False)
    assert [(c.trial, c.accuracy) for c in again.trials] == [(c.trial, c.accuracy) for c in first.trials]
    repeats = storage.trials[-2:]
    assert all(t.user_attrs["config"] == str(done.config) and t.user_attrs["same_as"] == done.trial
               and t.values == storage.trials[done.trial].values and "accuracy" not in t.user_attrs
               for t in repeats)


def test_a_config_rejected_before_training_is_pruned_tried_but_not_trained_and_not_run_again(tmp_path, env):
    """A config over the budget (here enqueued twice: the sampler never proposes one) ends pruned, without an
    accuracy (issue 28 item 9: no placeholder 0.0 on the accuracy axes), counts as a candidate tried
    (--max-attempts) but not as trained, stays in trials.json, and a resumed search neither runs it again nor
    counts it."""
    from pathlib import Path

    from vitsearch.pruning import PruneConfig
    from vitsearch.search import load_space
    from vitsearch.search.storage import count_trained, open_optuna_study
    from vitsearch.studyfolder import StudyFolder

    first = settings(tmp_path, env, budget="80%", trials=3, max_attempts=3, baselines="none", study="rejected")
    space = load_space(env["space"], depth=12)
    over = PruneConfig("evovit", {space.blocks[-1]: space.keep_max})  # about the unpruned model's latency
    folder = Path(first.reports) / first.name()
    folder.mkdir(parents=True)
    study = open_optuna_study(first, StudyFolder(folder))
    for _ in range(2):
        study.enqueue_trial(space.params_of(over))
    result = run_search(first, progress=False)
    rejected = [c for c in result.trials if c.accuracy is None]
    assert [c.trial for c in rejected] == [0, 1] and all(not c.feasible and c.val_accuracy is None for c in rejected)
    assert all(c.status.startswith("rejected before training: over budget") for c in rejected)
    # Three candidates tried (--max-attempts 3): the two rejected ones and one trained.
    assert len(result.trials) == 3 and count_trained(study) == 1
    stored = study.trials
    assert all(stored[n].state == optuna.trial.TrialState.PRUNED and stored[n].values is None for n in (0, 1))
    assert all(stored[n].constraints["0"] > 0 for n in (0, 1))
    assert [r["trial"] for r in json.loads((folder / "trials.json").read_text()) if r["accuracy"] is None] == [0, 1]

    again = run_search(settings(tmp_path, env, budget="80%", trials=2, baselines="none", study="rejected"),
                       progress=False)
    assert count_trained(study) == 2 and sum(c.accuracy is not None for c in again.trials) == 2
    assert [c.trial for c in again.trials if c.accuracy is None] == [0, 1]  # the same two, not run again
    assert sum(t.user_attrs.get("config") == str(over) for t in study.trials) == 2


def test_an_int8_search_says_its_candidates_are_scored_in_float_and_why(tmp_path, env, table_writer, caplog):
    """issue 29 item 3: a search whose latency is int8 scores its candidates by their float accuracy; it says so
    and why at its start, in study.json and in the report. An fp32 study says nothing of the kind."""
    from vitsearch.report import load_study, write_report

    int8_tables = tmp_path / "int8-tables"
    table_writer(int8_tables, precision="int8")
    with caplog.at_level("INFO", logger="vitsearch"):
        result = run_search(settings(tmp_path, env, tables=str(int8_tables), precision="int8", trials=1,
                                     baselines="none", study="int8"), progress=False)
    why = json.loads((result.folder / "study.json").read_text())["scoring"]["why"]
    assert why.startswith("candidates are scored by their float (fp32) accuracy after brief training, not in int8")
    assert "finalize --precision int8" in why and "claim-int8-accuracy" in why
    said = [r.getMessage() for r in caplog.records]
    assert why in said and said.index(why) < next(i for i, m in enumerate(said) if m.startswith("trial 0: training"))
    assert f"| scoring | {why} |" in write_report(load_study(result.folder)).markdown.read_text()

    fp32 = run_search(settings(tmp_path, env, trials=1, baselines="none", study="fp32"), progress=False)
    assert json.loads((fp32.folder / "study.json").read_text())["scoring"] == {"accuracy_in": "fp32", "why": None}
    assert "| scoring |" not in write_report(load_study(fp32.folder)).markdown.read_text()
