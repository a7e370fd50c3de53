"""Bad input at the edges (issue 27, part B), through the real CLI: numeric flags, space files, a diverging
training, damaged or unsafe checkpoints, folders that cannot be written and study names. Each gets one line
naming the input and the fix, exit 2, no traceback, and nothing completed is lost."""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest


def fails_cleanly(result: subprocess.CompletedProcess, *needles: str) -> str:
    """The failure's last stderr line, after checking exit 2, the absence of a traceback and the needles."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error: " in last, result.stderr
    for needle in needles:
        assert needle in last, last
    return last


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
