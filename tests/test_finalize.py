"""Finalizing a chosen config: the methods' schedules, resume, ONNX, measurement, finalized.json, bad input."""
import copy
import json
import shutil

import pytest
import torch

from vitsearch import finalize as fin
from vitsearch.cli import main
from vitsearch.pruning import PruneConfig
from vitsearch.errors import VitsearchError
from vitsearch.export import example_input, read_metadata, run_onnxruntime
from vitsearch.pruning import apply
from vitsearch.report import load_study
from vitsearch.search import SearchSettings, run_search
from vitsearch.training import TrainSettings, accuracy, fresh_model, progressive

pytestmark = pytest.mark.slow  # a real search, then finalize training

FAST = TrainSettings(steps=2, batch_size=16)
TINY = fin.FinalizeSettings(steps=6, batch_size=16, warmup_steps=1, checkpoint_every=2)


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    from vitsearch.search import default_space_file

    # Selectors early and keeping at most half, so every trial is well within the budget and the front is never
    # empty, however noisy the coarse table on a busy machine.
    text = default_space_file("digits").read_text().replace("keep = [0.9, 0.7, 0.5, 0.3]", "keep = [0.5]")
    text = text.replace("last_block = -2", "last_block = 6").replace("keep_max = 0.9", "keep_max = 0.5")
    assert "last_block = 6" in text and "keep_max = 0.5" in text
    path = tmp_path_factory.mktemp("space") / "vit.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def made_study(tmp_path_factory, tables, space, checkpoint):
    """A real small study; tests finalize copies of it."""
    reports = tmp_path_factory.mktemp("reports")
    result = run_search(SearchSettings(budget="95%", trials=3, train=FAST, reports=str(reports), tables=str(tables),
                                       space=str(space), checkpoint=str(checkpoint), max_train=128, max_val=96,
                                       study="small"), progress=False)
    assert result.front, "the fixture study needs a trial on the front"
    return result.folder


@pytest.fixture
def study(made_study, tmp_path):
    folder = tmp_path / "small"
    shutil.copytree(made_study, folder)
    return folder


@pytest.fixture(scope="module")
def ctx(made_study):
    return fin.load_context(made_study)


def front_trial(folder) -> int:
    return json.loads((folder / "front.json").read_text())[0]["trial"]


def edit_meta(folder, **changes) -> None:
    meta = json.loads((folder / "study.json").read_text())
    meta.update(changes)
    (folder / "study.json").write_text(json.dumps(meta))


# Training through the schedule -------------------------------------------------------------------------------

def _recording_apply(monkeypatch):
    """What the training loop really applies to the model at each step."""
    applied = []

    def record(model, config, *, every_block=False):
        applied.append((str(PruneConfig.parse(config)), every_block))
        return apply(model, config, every_block=every_block)

    monkeypatch.setattr(progressive, "apply", record)
    return applied


@pytest.mark.parametrize("spec, expected", [
    ("spvit:3=0.8,6=0.7,9=0.6", [("spvit:3=0.8", False)] * 2 + [("spvit:3=0.8,6=0.7", False)] * 2
     + [("spvit:3=0.8,6=0.7,9=0.6", False)] * 2),
    ("evovit:4=0.5,8=0.6", [("evovit:4=0.5,8=0.6", True)] * 3 + [("evovit:4=0.5,8=0.6", False)] * 3),
])
def test_training_applies_the_schedule_step_by_step(ctx, tmp_path, monkeypatch, spec, expected):
    config = PruneConfig.parse(spec)
    model = apply(copy.deepcopy(ctx.base), config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    applied = _recording_apply(monkeypatch)
    progressive.train_schedule(model, ctx.base, ctx.splits, config, progressive.plan(config, TINY, 6), TINY,
                               latency=ctx.latency, state_path=tmp_path / "state.pt", progress=False)
    per_step = applied[1:-1]  # first: every selector before the optimiser; last: the whole config for inference
    assert per_step == expected
    assert applied[-1] == (spec, False) and model.prune_config == config and not model.every_block
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("blocks.") for k in changed)  # the rest of the network fine-tunes too
    if config.method == "spvit":
        assert {k.split(".")[1] for k in changed if k.startswith("token_selectors.")} == {"3", "6", "9"}


def test_an_interrupted_training_resumes_to_the_same_weights(ctx, tmp_path):
    config = PruneConfig.parse("spvit:3=0.8,6=0.7")
    phases = progressive.plan(config, TINY, 6)

    def run(state_path, on_step=None):
        model = fresh_model(ctx.base, config)
        progressive.train_schedule(model, ctx.base, ctx.splits, config, phases, TINY, latency=ctx.latency,
                                   state_path=state_path, on_step=on_step, progress=False)
        return model

    reference = run(tmp_path / "a.pt")

    def stop(step, phase):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.pt", stop)
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert saved["step"] == 4  # the last checkpoint before the interruption
    steps_run = []
    resumed = run(tmp_path / "b.pt", lambda step, phase: steps_run.append(step))
    assert steps_run == [4, 5]
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(VitsearchError, match="different settings.*--restart"):
        progressive.train_schedule(apply(copy.deepcopy(ctx.base), config), ctx.base, ctx.splits, config, phases,
                                   fin.FinalizeSettings(steps=6, lr=1.0), latency=ctx.latency,
                                   state_path=tmp_path / "b.pt", progress=False)


# The whole command -------------------------------------------------------------------------------------------

def test_finalize_trains_exports_measures_and_records_the_row(study, capsys):
    trial = front_trial(study)
    rc = main(["finalize", str(study), "--trial", str(trial), "--steps", "4", "--batch-size", "16",
               "--warmup-steps", "1", "--aux-weight", "0.2", "--batch", "3", "--opset", "17"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = json.loads((study / "finalized.json").read_text())
    assert len(rows) == 1
    row = rows[0]
    brief = next(t for t in json.loads((study / "trials.json").read_text()) if t["trial"] == trial)
    assert row["trial"] == trial and row["config"] == brief["config"] and row["accuracy_brief"] == brief["accuracy"]
    assert row["val_accuracy_brief"] == brief["val_accuracy"]
    assert 0 <= row["accuracy"] <= 1 and 0 <= row["accuracy_training_free"] <= 1
    assert row["measured_ms"] > 0 and row["predicted_ms"] > 0 and row["gmacs"] > 0 and row["steps"] == 4
    assert row["onnx_max_diff"] < 1e-3 and row["settings"]["weights"]["aux"] == 0.2
    # timed beside the drift reference: also given at the table's speed
    reference_ms = fin.load_context(study).predictor.reference_ms
    assert row["measured_at_table_speed_ms"] == pytest.approx(
        row["measured_ms"] * reference_ms / row["measured_reference_ms"])
    budget_ms = json.loads((study / "study.json").read_text())["budget_ms"]
    assert row["within_budget"] == (row["measured_at_table_speed_ms"] <= budget_ms)
    assert ("within the budget" if row["within_budget"] else "OVER the budget") in out
    # The ONNX file is the trained model, static shapes, matching PyTorch.
    model = apply(copy.deepcopy(fin.load_context(study).base), brief["config"])
    model.load_state_dict(torch.load(study / row["checkpoint"], weights_only=True)["state_dict"])
    model.eval()
    x = example_input(model)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.from_numpy(run_onnxruntime(study / row["onnx"], [x])[0]), expected,
                               atol=1e-4, rtol=1e-4)
    # The accuracy finalize states is the test split's; val's (what the search chose by) beside it.
    splits = fin.load_context(study).splits
    assert row["accuracy"] == accuracy(model, splits, split="test") and row["val_accuracy"] == accuracy(model, splits)
    assert f"test accuracy {100 * row['accuracy']:.2f}% (val {100 * row['val_accuracy']:.2f}%" in out
    assert not (study / "finalized" / f"trial_{trial:04d}" / "state.pt").exists()
    # The report shows it.
    finalized = load_study(study).finalized
    assert [e.config for e in finalized] == [brief["config"]] and finalized[0].measured_ms == row["measured_ms"]
    assert finalized[0].extra["accuracy_training_free"] == row["accuracy_training_free"]
    printed = json.loads(out.strip().splitlines()[-1])
    assert printed["finalized"][0]["trial"] == trial
    # Printed paths open from the working folder, like the study's (issue 28 item 7).
    assert printed["finalized"][0]["onnx"] == str(study / row["onnx"]) and printed["study"] == str(study)
    # --batch adds a file at that batch; --opset reaches both exports (issue 28 item 1).
    extra = study / row["onnx_batches"]["3"]
    assert extra.is_file() and printed["finalized"][0]["onnx_batches"]["3"] == str(extra)
    assert json.loads(read_metadata(extra)["input_shapes"]) == [[3, 1, 64, 64]]
    assert read_metadata(extra)["opset"] == read_metadata(study / row["onnx"])["opset"] == "17" == str(row["onnx_opset"])
    # Class names and preprocessing travel with the study, the finalized ONNX and the checkpoint (item 7).
    meta = json.loads((study / "study.json").read_text())
    onnx_meta = read_metadata(study / row["onnx"])
    assert meta["classes"] == list("0123456789") == json.loads(onnx_meta["classes"])
    assert meta["preprocessing"]["input_size"] == [1, 64, 64] == json.loads(onnx_meta["preprocessing"])["input_size"]
    # The finalized checkpoint exports again alone: no --model, no --config (item 1).
    again = study / "again.onnx"
    assert main(["export", "--checkpoint", str(study / row["checkpoint"]), "-o", str(again)]) == 0
    assert read_metadata(again)["config"] == brief["config"] and read_metadata(again)["classes"] == onnx_meta["classes"]
    torch.testing.assert_close(torch.from_numpy(run_onnxruntime(again, [x])[0]), expected, atol=1e-4, rtol=1e-4)


def _error(capsys, argv, code: int = 2) -> str:
    """The one error line of a failed command; exit 2 for bad input, 1 for a failure while running (issue 17)."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == code and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def test_finalize_says_what_it_does_before_its_bar_and_before_its_evaluation(study, monkeypatch):
    """No silence over 10 s (issue 28 item 6): a line before loading the base model, the data and the table (the
    bar only comes with the training, 27 s later on a loaded machine), progress lines while it trains without a
    bar (off a terminal; here at every step), and one after the training, before the held-out evaluation and the
    export (minutes on a large test split). Each is checked against the step it announces, so a line removed, or
    moved after its step, fails."""
    import logging

    from vitsearch.training import loop

    monkeypatch.setattr(loop, "PROGRESS_EVERY_S", 0.0)

    events: list[str] = []

    def mark(name, function):
        def marked(*args, **kwargs):
            events.append(f"<{name}>")
            return function(*args, **kwargs)
        monkeypatch.setattr(fin, name, marked)

    for name in ("load_context", "train_schedule", "accuracy", "fresh_model"):
        mark(name, getattr(fin, name))
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: events.append(record.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("vitsearch")
    level, log.level = log.level, logging.INFO
    log.addHandler(handler)
    trial = front_trial(study)
    try:
        fin.finalize(study, [trial], TINY, progress=False)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    start = next(i for i, e in enumerate(events) if e.startswith(f"finalize of {study}: loading the base model"))
    evaluating = events.index(f"trial {trial}: evaluating on val and test, then exporting to ONNX")
    assert start < events.index("<load_context>"), events
    trained = events.index("<train_schedule>")
    # after the training; before the untrained copy for the training-free accuracy, and every evaluation
    assert trained < evaluating < events.index("<fresh_model>", trained + 1) < events.index("<accuracy>"), events
    config = next(r["config"] for r in json.loads((study / "trials.json").read_text()) if r["trial"] == trial)
    said = [e.split(", ")[0] for e in events[trained:evaluating] if e.startswith(f"finalize {config}: step ")]
    assert said == [f"finalize {config}: step {k}/{TINY.steps}" for k in range(1, TINY.steps)], events


def test_a_missing_or_rejected_trial_lists_the_front(study, capsys):
    front = ", ".join(str(t["trial"]) for t in json.loads((study / "front.json").read_text()))
    err = _error(capsys, ["finalize", str(study), "--trial", "999"])
    assert "no trial 999" in err and f"front's trials are {front}" in err
    trials = json.loads((study / "trials.json").read_text())
    trials[0].update(feasible=False, accuracy=None, status="rejected before training: over budget by 1 ms")
    (study / "trials.json").write_text(json.dumps(trials))
    err = _error(capsys, ["finalize", str(study), "--trial", str(trials[0]["trial"])])
    assert "cannot be finalized" in err and "over budget" in err and "front's trials are" in err


def test_a_moved_or_changed_base_checkpoint_is_named(study, tmp_path, capsys):
    meta = json.loads((study / "study.json").read_text())
    copy_path = tmp_path / "base.pt"
    shutil.copy(meta["checkpoint"], copy_path)
    edit_meta(study, checkpoint=str(copy_path))
    with open(copy_path, "ab") as f:
        f.write(b"\0")
    err = _error(capsys, ["finalize", str(study), "--pareto"])
    assert f"{copy_path} has changed" in err
    copy_path.unlink()
    err = _error(capsys, ["finalize", str(study), "--pareto"])
    assert f"{copy_path} has moved" in err


def test_an_unreachable_device_keeps_the_model_and_the_measurement_can_be_retried(study, capsys):
    trial = front_trial(study)
    edit_meta(study, device="ssh://nobody@127.0.0.1:9")
    argv = ["finalize", str(study), "--trial", str(trial), "--steps", "2", "--batch-size", "16", "--warmup-steps", "1"]
    err = _error(capsys, argv, code=1)  # an unreachable device is a failure while running
    assert "--measure-only" in err and "127.0.0.1" in err
    row = json.loads((study / "finalized.json").read_text())[0]
    assert row["measured_ms"] is None and row["measure_error"] and row["accuracy"] is not None
    model_pt = study / row["checkpoint"]
    stamp = model_pt.stat().st_mtime_ns
    edit_meta(study, device="cpu")
    assert main(argv[:4] + ["--measure-only"]) == 0
    row = json.loads((study / "finalized.json").read_text())[0]
    assert row["measured_ms"] > 0 and row["measure_error"] is None
    assert model_pt.stat().st_mtime_ns == stamp  # not trained again


def test_measure_only_without_a_finalized_model_says_what_to_do(study, capsys):
    err = _error(capsys, ["finalize", str(study), "--trial", str(front_trial(study)), "--measure-only"])
    assert "without --measure-only first" in err


def test_a_finalized_model_that_no_longer_fits_names_the_restart(study, capsys):
    """A model.pt from another vitsearch version (SPViT's per-head selector weights were 3-D before issue 18) is one
    error naming --restart, and is not replaced."""
    trial = front_trial(study)
    argv = ["finalize", str(study), "--trial", str(trial), "--steps", "2", "--batch-size", "16", "--warmup-steps", "1"]
    assert main(argv) == 0
    model_pt = study / json.loads((study / "finalized.json").read_text())[0]["checkpoint"]
    saved = torch.load(model_pt, weights_only=True)
    key = next(k for k, v in saved["state_dict"].items() if v.ndim == 2)
    saved["state_dict"][key] = saved["state_dict"][key][None].expand(3, -1, -1).clone()
    torch.save(saved, model_pt)
    stamp = model_pt.stat().st_mtime_ns
    err = _error(capsys, argv[:4] + ["--measure-only"])
    assert str(model_pt) in err and key in err and "--restart" in err
    assert model_pt.stat().st_mtime_ns == stamp


def test_finalize_int8_reports_both_accuracies_and_the_int8_latency(study, capsys):
    """--precision int8: the exported model quantized (calibrated on training images), its test accuracy run by
    onnxruntime beside fp32's, its latency measured; a second run keeps the row, a torch device is refused."""
    trial = front_trial(study)
    argv = ["finalize", str(study), "--trial", str(trial), "--steps", "2", "--batch-size", "16", "--warmup-steps", "1",
            "--precision", "int8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    row = json.loads((study / "finalized.json").read_text())[0]
    q = row["int8"]
    assert (study / q["onnx"]).is_file() and q["onnx"].endswith("model-int8.onnx")
    assert q["accuracy_fp32_onnx"] == pytest.approx(row["accuracy"], abs=0.02)  # the fp32 file, same test split
    assert 0 <= q["accuracy"] <= 1 and q["measured_ms"] > 0 and 0 < q["p99_rel_diff"] <= q["tolerance"]
    assert q["calibration_images"] >= 32 and f"test accuracy {100 * q['accuracy']:.2f}% vs fp32" in out
    assert json.loads(out.strip().splitlines()[-1])["finalized"][0]["int8"]["accuracy"] == q["accuracy"]
    edit_meta(study, device="torch-cpu")
    assert "fp32 only, not int8" in _error(capsys, argv)
