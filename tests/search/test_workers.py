"""Workers that divide one study: real `vitsearch search` processes on one journal file or one PostgreSQL study
train distinct models (by canonical key), evaluate each baseline once, and lose nothing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from vitsearch.pruning import PruneConfig, canonical_key
from vitsearch.search.claims import KEY, OWNS



@pytest.mark.parametrize("a, b, same", [
    ("spvit:4=0.5,8=1.0", "spvit:4=0.5", True),  # a selector that keeps every token is no selector
    ("evovit:4=0.5,8=0.49", "evovit:4=0.5,8=0.5", True),  # 32 of 64 patches at block 8 either way
    ("evovit:4=0.5,8=0.5", "evovit:4=0.5", False),  # the same counts, but block 8 re-selects from all patches
    ("spvit:4=0.5", "spvit:4=0.505", False),  # 32 and 33 patches kept of 64
    ("spvit:4=0.5", "evovit:4=0.5", False),
    ("none", "spvit:4=1.0", True),
])
def test_the_canonical_key_is_the_token_schedule(a, b, same):
    geo = dict(depth=12, num_patches=64, num_prefix=1)
    key_a, key_b = (canonical_key(PruneConfig.parse(c), **geo) for c in (a, b))
    assert (key_a == key_b) == same, (key_a, key_b)


def run_workers(n: int, tmp_path: Path, tables: Path, space: Path, checkpoint: Path, storage: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "vitsearch", "-q", "search", "--study", "shared", "--budget", "95%", "--trials", "6",
           "--steps", "2", "--train-batch", "16", "--max-train", "128", "--max-val", "96", "--space", str(space),
           "--tables", str(tables), "--checkpoint", str(checkpoint), "--reports", str(tmp_path / "reports"),
           *(["--storage", storage] if storage else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                                env=env) for _ in range(n)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * n, outputs
    return outputs


def check_study(study: optuna.Study, folder: Path) -> None:
    trials = study.trials
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    trained = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("accuracy") is not None]
    keys = [t.user_attrs[KEY] for t in trained]
    assert len(trained) >= 6 and len(keys) == len(set(keys)), keys  # no model trained twice
    assert all(t.user_attrs.get(OWNS) for t in trained)
    assert len({t.user_attrs["worker"] for t in trained}) >= 2  # the workers divided the study
    baselines = [t.user_attrs[KEY] for t in trials if t.user_attrs.get(OWNS) and t.user_attrs[KEY].startswith("baseline:")]
    assert sorted(baselines) == sorted(f"baseline:{c}" for c in ("none", "spvit:3=0.5,6=0.5,9=0.5",
                                                                 "evovit:3=0.5,6=0.5,9=0.5")), baselines
    assert len(json.loads((folder / "baselines.json").read_text())) == 3
    recorded = json.loads((folder / "trials.json").read_text())  # the last worker to finish wrote every trial
    assert {r["trial"] for r in recorded if r["accuracy"] is not None} == {t.number for t in trained}
    front = json.loads((folder / "front.json").read_text())
    assert front and all((folder / r["checkpoint"]).is_file() for r in front)  # no worker deleted another's


@pytest.mark.slow
def test_three_workers_on_one_journal_file(tmp_path, tables, space, checkpoint):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    run_workers(3, tmp_path, tables, space, checkpoint, None)
    folder = tmp_path / "reports" / "shared"
    check_study(optuna.load_study(study_name="shared", storage=JournalStorage(JournalFileBackend(
        str(folder / "journal.log")))), folder)


@pytest.mark.slow
@pytest.mark.server
def test_two_workers_on_one_postgresql_study(postgres, tmp_path, tables, space, checkpoint):
    run_workers(2, tmp_path, tables, space, checkpoint, postgres)
    study = optuna.load_study(study_name="shared", storage=postgres.replace("postgresql://", "postgresql+psycopg2://"))
    check_study(study, tmp_path / "reports" / "shared")


def test_a_higher_trial_waits_for_a_lower_one_still_sampling_and_defers_to_it(tmp_path):
    """B (higher number) claims first while A has no key yet: B must wait for A, then A owns the key (fails if
    the claim trains whoever asks first, or ignores lower trials still sampling)."""
    import threading

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from vitsearch.search.claims import claim

    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(tmp_path / "j.log"))),
                                directions=["maximize", "minimize"])
    a, b = study.ask(), study.ask()
    result = {}
    waiter = threading.Thread(target=lambda: result.update(b=claim(b, "spvit:65,34")))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive()  # B waits: A, lower, has not chosen its config
    assert claim(a, "spvit:65,34") is None  # A owns the key
    waiter.join(10)
    assert result["b"].number == a.number
    c = study.ask()
    assert claim(c, "evovit:65,34") is None  # another key is free
    study.tell(a, state=optuna.trial.TrialState.FAIL)
    d = study.ask()
    assert claim(d, "spvit:65,34").number == b.number  # A failed: B's claim, lower than D's, now holds it
