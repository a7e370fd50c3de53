"""Bad input at the edges (issue 27, part B), through the real CLI: numeric flags, space files, a diverging
training, damaged or unsafe checkpoints, folders that cannot be written and study names. Each gets one line
naming the input and the fix, exit 2, no traceback, and nothing completed is lost."""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
from test_bad_input import fails_cleanly as one_clean_failure


def fails_cleanly(result: subprocess.CompletedProcess, *needles: str) -> str:
    """test_bad_input's check of one clean failure, with bad input's exit code 2."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    return one_clean_failure(result, *needles)


# Numeric flags ------------------------------------------------------------------------------------------------

# A search that would otherwise run (and fail much later, on the missing data set): the flag must be named first.
SEARCH = ("search", "--dataset", "no-such-folder")


@pytest.mark.parametrize("args, message", [
    (("--lr", "nan"), "argument --lr: 'nan' is not a finite number"),
    (("--train-batch", "0"), "argument --train-batch: 0 is not a positive whole number"),
    (("--steps", "0"), "argument --steps: 0 is not a positive whole number"),
])
def test_search_refuses_a_bad_number_before_any_work(run_cli, tmp_path, args, message):
    reports = tmp_path / "reports"
    fails_cleanly(run_cli(*SEARCH, "--reports", str(reports), "--tables", str(tmp_path / "t"), *args), message)
    assert not reports.exists() and not (tmp_path / "t").exists()


# The same parser in this process (a subprocess each would take seconds): main() returns the exit code.
@pytest.mark.parametrize("args, message", [
    (SEARCH + ("--lr", "inf"), "argument --lr: 'inf' is not a finite number"),
    (SEARCH + ("--lr", "-1"), "argument --lr: '-1' is not positive"),
    (SEARCH + ("--selector-lr", "NaN"), "argument --selector-lr: 'NaN' is not a finite number"),
    (SEARCH + ("--distill-weight=-inf",), "argument --distill-weight: '-inf' is not a finite number"),
    (SEARCH + ("--trials", "0"), "argument --trials: 0 is not a positive whole number"),
    (SEARCH + ("--max-train", "-5"), "argument --max-train: -5 is not a positive whole number"),
    (SEARCH + ("--shared-finetune-steps", "-1"), "argument --shared-finetune-steps: expected a whole number >= 0"),
    (("finalize", "s", "--trial", "1", "--lr", "nan"), "argument --lr: 'nan' is not a finite number"),
    (("finalize", "s", "--trial", "1", "--epochs", "inf"), "argument --epochs: 'inf' is not a finite number"),
    (("finalize", "s", "--trial", "1", "--merge-tol", "nan"), "argument --merge-tol: 'nan' is not a finite number"),
    (("finalize", "s", "--trial", "1", "--train-batch", "0"), "argument --train-batch: 0 is not a positive"),
    (("export", "-o", "m.onnx", "--batch", "0"), "argument --batch: 0 is not a positive whole number"),
    (("profile", "--threads", "-1"), "argument --threads: expected a whole number >= 0, got -1"),
])
def test_every_command_refuses_a_bad_number(capsys, args, message):
    from vitsearch.cli import main

    assert main(list(args)) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: " in last and message in last, last


def test_the_float_types_refuse_nan_and_infinity():
    from vitsearch.cli import finite_float, non_negative_float, positive_float

    for check in (finite_float, positive_float, non_negative_float):
        for bad in ("nan", "inf", "-inf", "1e400", "x"):
            with pytest.raises(argparse.ArgumentTypeError):
                check(bad)
    assert positive_float("1e-4") == 1e-4 and non_negative_float("0") == 0.0 and finite_float("-2") == -2.0
    for bad in ("0", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(bad)


def test_train_settings_refuse_what_the_cli_refuses():
    """A library caller gets the same refusal as the command line (a NaN rate trains NaN weights silently)."""
    from vitsearch.errors import VitsearchError
    from vitsearch.training import TrainSettings

    for bad in ({"lr": float("nan")}, {"lr": -1.0}, {"selector_lr": float("inf")}, {"batch_size": 0},
                {"steps": -1}):
        with pytest.raises(VitsearchError):
            TrainSettings(**bad)
    assert TrainSettings(steps=0).steps == 0  # 0 steps stays a library setting (the learned strategy's tests)


# Space files (every rule has a library test in tests/search/test_space.py; one goes through the CLI) ---------

def test_search_refuses_a_misspelt_space_key_before_any_work(run_cli, tmp_path, checkpoint):
    space = tmp_path / "space.toml"
    space.write_text("[space]\nmax_selector = 2\n")
    result = run_cli("search", "--space", str(space), "--checkpoint", str(checkpoint), "--reports",
                     str(tmp_path / "reports"), "--tables", str(tmp_path / "t"))
    fails_cleanly(result, f"search space file {space}: unknown key in [space] 'max_selector' (did you mean "
                          "'max_selectors'?)")
    assert not (tmp_path / "reports").exists() and not (tmp_path / "t").exists()


# Training that diverges ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_diverging_training_stops_naming_the_learning_rate(run_cli, tmp_path, checkpoint, tables):
    """A finite but far too high rate (the CLI refuses NaN): the first NaN loss stops the search; no trial or
    baseline is stored as trained on NaN weights."""
    import json

    import optuna

    reports = tmp_path / "reports"
    result = run_cli("search", "--budget", "1000ms", "--checkpoint", str(checkpoint), "--tables", str(tables),
                     "--reports", str(reports), "--study", "diverged", "--trials", "1", "--steps", "4",
                     "--max-train", "32", "--max-val", "16", "--lr", "1e30")
    fails_cleanly(result, "the training diverged: its loss is nan at step", "lower the learning rate (--lr",
                  "under a new --study name")
    folder = reports / "diverged"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "journal.log")))
    study = optuna.load_study(study_name="diverged", storage=storage)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(t.user_attrs.get("accuracy") is None for t in study.trials)
    assert not list(folder.rglob("*.pt"))
    if (folder / "trials.json").exists():
        assert not [t for t in json.loads((folder / "trials.json").read_text()) if t.get("accuracy") is not None]


def test_train_steps_stops_at_a_nan_loss_or_nan_weights():
    """The step loop's two checks in this process: a NaN loss stops before the optimiser steps; weights that an
    update made NaN (the loss before it was finite) are caught after the last step."""
    import torch

    from vitsearch.training import TrainingDiverged, train_steps

    layer = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)

    def step_nan_loss(i: int) -> dict[str, float]:
        return {"total": 1.0 if i < 2 else float("nan")}

    with pytest.raises(TrainingDiverged, match=r"its loss is nan at step 3 of 5 \(learning rates 0.1\): lower"):
        train_steps(opt, [0.1], range(5), step_nan_loss, warmup=0, total=5)

    def step_nan_grad(i: int) -> dict[str, float]:
        loss = layer(torch.ones(1, 2)).sum() * (float("inf") if i == 1 else 1.0)
        loss.backward()
        return {"total": 1.0}  # what the loss was before the update

    with pytest.raises(TrainingDiverged, match="its weights hold NaN or infinite values after step 2 of 2"):
        train_steps(opt, [0.1], range(2), step_nan_grad, warmup=0, total=2)


# Folders that cannot be written, study names ------------------------------------------------------------------
# Tests run as root, for whom permission bits do not count: a folder "under" a regular file cannot be made by
# anyone (ENOTDIR), and an immutable folder (chattr +i, where the file system has it) cannot be written by root.

@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder\n")
    return path


@pytest.fixture
def immutable():
    """Make a folder (made if missing) immutable for the test: even root cannot write in it; writable again after."""
    import contextlib

    made: list[Path] = []

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here (needs root and a file system with the attribute)")
        made.append(folder)
        return folder

    yield make
    for folder in made:
        with contextlib.suppress(OSError):
            subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_search_refuses_a_reports_folder_it_cannot_make(run_cli, tmp_path, a_file, checkpoint, tables):
    reports = a_file / "reports"
    result = run_cli("search", "--checkpoint", str(checkpoint), "--tables", str(tables), "--reports", str(reports),
                     "--trials", "1", "--steps", "1")
    fails_cleanly(result, f"reports folder {reports} cannot be made: {a_file} is a file, not a folder",
                  "pass --reports DIR with a folder you can write")


def test_profile_refuses_a_tables_folder_it_cannot_write(run_cli, tmp_path, immutable):
    tables = immutable(tmp_path / "tables")
    # A missing folder under an immutable one: the nearest existing folder decides.
    result = run_cli("profile", "--threads", "1", "--tables", str(tables / "cpu"))
    fails_cleanly(result, f"latency tables folder {tables / 'cpu'} is not writable ({tables} above it)",
                  "pass --tables DIR")


def test_export_refuses_an_output_folder_it_cannot_make(run_cli, checkpoint, a_file):
    out = a_file / "m.onnx"
    fails_cleanly(run_cli("export", "--checkpoint", str(checkpoint), "-o", str(out)),
                  f"the folder of the ONNX file {a_file} cannot be made: {a_file} is a file", "pass -o")


def test_a_home_that_is_a_file_is_named_with_the_fix(run_cli, monkeypatch, a_file):
    monkeypatch.delenv("VITSEARCH_CACHE")
    monkeypatch.setenv("HOME", str(a_file))
    fails_cleanly(run_cli("pretrain"), f"cache folder {a_file}/.cache/vitsearch/base_models cannot be made: "
                                       f"{a_file} is a file", "set $VITSEARCH_CACHE to a folder you can write")


def test_a_read_only_cache_serves_its_model_and_refuses_training(run_cli, monkeypatch, tmp_path, digits_base,
                                                                 immutable):
    """A cache folder no one can write (a shared or read-only one): a model already in it is used (no lock file
    is needed where nobody can write); one that is not there is refused before training, naming the folder."""
    import shutil

    entry = Path(digits_base[1]["path"])
    cache = tmp_path / "cache"
    shutil.copytree(entry, cache / "base_models" / entry.name)
    monkeypatch.setenv("VITSEARCH_CACHE", str(cache))
    immutable(cache / "base_models")
    result = run_cli("pretrain")
    assert result.returncode == 0 and "(cached)" in result.stdout, result.stderr
    empty = immutable(tmp_path / "empty")
    monkeypatch.setenv("VITSEARCH_CACHE", str(empty))
    fails_cleanly(run_cli("pretrain"), f"cache folder {empty}/base_models is not writable ({empty} above it)")


@pytest.mark.parametrize("name, shown", [("x" * 300, "(300 characters)"), ("two\nlines", "'two\\nlines'")])
def test_a_study_name_too_long_or_with_a_newline_is_refused_with_the_rule(run_cli, tmp_path, name, shown):
    result = run_cli("search", "--study", name, "--checkpoint", str(tmp_path / "missing.pt"), "--reports",
                     str(tmp_path / "reports"))
    fails_cleanly(result, "is not a plain folder name", shown, "at most 128 printable characters",
                  "a newline or other control character")
    assert not (tmp_path / "reports").exists()


def test_study_names_in_this_process():
    from vitsearch.errors import VitsearchError
    from vitsearch.studyfolder import check_study_name

    for bad in ("a/b", "a\\b", "..", " a", "a\tb", "a\x00", "é" * 128, "x" * 129):
        with pytest.raises(VitsearchError, match="is not a plain folder name"):
            check_study_name(bad)
    assert check_study_name("x" * 128) and check_study_name("é" * 127) and check_study_name("digits-60pct")


# Checkpoints ---------------------------------------------------------------------------------------------------

def test_a_checkpoint_of_nan_weights_is_named_as_such(run_cli, checkpoint, tmp_path):
    import torch

    state = torch.load(checkpoint, weights_only=True)
    state["blocks.5.mlp.fc1.weight"][0, 0] = float("nan")
    path = tmp_path / "diverged.pt"
    torch.save(state, path)
    out = tmp_path / "m.onnx"
    fails_cleanly(run_cli("export", "--checkpoint", str(path), "-o", str(out)),
                  f"checkpoint {str(path)!r} holds NaN or infinite weights (in blocks.5.mlp.fc1.weight)",
                  "train again with a lower learning rate")
    assert not out.exists()


def test_export_of_a_model_with_nan_weights_names_the_weights(tiny_vit, tmp_path):
    """A model trained in this process (finalize's) never passes through a checkpoint file: export says it too."""
    import torch

    from vitsearch.errors import VitsearchError
    from vitsearch.export import export_model

    with torch.no_grad():
        tiny_vit.blocks[2].attn.qkv.weight[0, 0] = float("nan")
    with pytest.raises(VitsearchError, match=r"its weights hold NaN or infinity \(in blocks.2.attn.qkv.weight\)"):
        export_model(tiny_vit, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


class RunsCode:
    """Unpickling this runs a shell command (the marker file shows whether it ran)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_with_code_is_refused_naming_what_it_holds(run_cli, tmp_path, writer):
    import pickle

    import torch

    marker, path = tmp_path / "ran", tmp_path / "weights.pt"
    obj = {"blocks.0.norm1.weight": torch.ones(3), "hook": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    fails_cleanly(run_cli("info", "--checkpoint", str(path)),
                  f"checkpoint {str(path)!r} holds code or Python objects (posix.system) besides tensors",
                  "re-save just its weights as a plain state_dict", "or as safetensors")
    assert not marker.exists()
