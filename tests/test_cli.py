"""The CLI layer: commands from the registry, summaries ending in one JSON line, and errors without tracebacks."""
import json
import logging

import pytest
import torch

from vitsearch.cli import COMMANDS, build_parser, main
from vitsearch.errors import VitsearchError
from vitsearch.models import create_model


def _json_tail(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_every_registered_command_is_a_subcommand():
    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names)) and {"pretrain", "info"} <= set(names)
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(names)
    assert all(c.help for c in COMMANDS)


def test_info_prints_the_geometry_and_a_json_line(capsys):
    assert main(["info", "--model", "vit_tiny_patch16_224"]) == 0
    out = capsys.readouterr().out
    assert "12 blocks, embed dim 192, 3 heads" in out and "196 patch tokens + 1 prefix" in out
    record = _json_tail(out)
    assert record["geometry"]["key"] == "d192-h3-l12-m4-p16-i224-c3" and record["parameters"] > 5e6
    assert "GMACs per image (matmuls)" in out and record["gmacs"] == pytest.approx(1.26, abs=0.01)  # ViT-Ti: 1.3


def test_info_checks_a_checkpoint_and_reports_its_hash(tmp_path, capsys):
    path = tmp_path / "ft.pt"
    torch.save(create_model("digits", num_classes=4).state_dict(), path)
    assert main(["info", "--model", "digits", "--checkpoint", str(path)]) == 0
    out = capsys.readouterr().out
    assert "loads cleanly" in out
    record = _json_tail(out)
    assert record["geometry"]["num_classes"] == 4 and len(record["checkpoint"]["sha256"]) == 64


@pytest.mark.parametrize("argv, needle", [
    (["info", "--model", "vit_tiny_patch16_224", "--checkpoint", "/no/such/file.pt"], "does not exist"),
    (["info", "--model", "swin_tiny_patch4_window7_224"], "not a plain ViT"),
])
def test_bad_input_is_one_error_line_and_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err


def test_debug_shows_the_traceback():
    with pytest.raises(VitsearchError, match="unknown model"):
        main(["--debug", "info", "--model", "no_such_vit"])


def test_command_line_errors_and_version(capsys):
    assert main([]) == 2  # a command is required
    assert main(["info", "--no-such-option"]) == 2
    assert main(["--version"]) == 0
    assert "vitsearch" in capsys.readouterr().out


def test_logging_is_set_up_once_per_main():
    for _ in range(2):
        main(["-q", "info", "--model", "digits"])
    vitsearch_logger = logging.getLogger("vitsearch")
    assert len(vitsearch_logger.handlers) == 1 and vitsearch_logger.level == logging.WARNING


def test_pretrain_reports_the_cached_base_model(digits_base, capsys):
    _, meta = digits_base
    assert main(["pretrain"]) == 0
    out = capsys.readouterr().out
    record = _json_tail(out)
    assert record["cached"] and record["path"] == meta["path"]
    # the accuracy stated is the test split's, val's beside it
    assert record["accuracy"] == meta["test_accuracy"] >= 0.94 and record["val_accuracy"] == meta["val_accuracy"]
    assert f"test accuracy {100 * meta['test_accuracy']:.2f}% (val" in out


def test_python_dash_m_runs_the_cli(run_cli):
    result = run_cli("info", "--model", "digits")
    assert result.returncode == 0, result.stderr
    assert _json_tail(result.stdout)["geometry"]["in_chans"] == 1


def test_exit_codes_tell_bad_input_from_a_failure_at_run_time(tmp_path, capsys):
    assert main(["predict", "--config", "spvit:3=much", "--tables", str(tmp_path)]) == 2
    assert "cannot read selector" in capsys.readouterr().err
    # Nothing listens on port 1 of the loopback: the device is out of reach, the input was fine.
    assert main(["profile", "--device", "ssh://nobody@127.0.0.1:1", "--threads", "1", "--tables", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "\nerror: cannot reach ssh device" in err and "Traceback" not in err


def test_options_mean_one_thing_across_commands(capsys):
    """The training batch is --train-batch wherever one is trained (--batch is always the latency's batch); the old
    --batch-size still works, hidden, with a warning; --threads wherever a latency table may be profiled."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    options = {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}
    for name in ("search", "finalize"):
        assert "--train-batch" in options[name] and "--batch-size" not in sub.choices[name].format_help()
    assert all("--threads" in options[name] for name in ("profile", "search"))
    assert all("--model" in options[name] for name in ("info", "profile", "predict", "export", "search"))
    assert all("--reports" in options[name] for name in ("report", "plot", "finalize", "search"))
    args = build_parser().parse_args(["search", "--batch-size", "8", "--batch", "2"])
    assert (args.train_batch, args.batch) == (8, 2)
    assert "--batch-size is deprecated, use --train-batch" in capsys.readouterr().err
