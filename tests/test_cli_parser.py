"""The command line's edge (issue 28 item 5): options defined once and checked where they are parsed, every default
shown, a mistyped flag named with its subcommand's usage, and a parser that imports no torch (so ``--help`` and
``--version`` answer at once; timed by hand, never here)."""
import subprocess
import sys

import pytest

from vitsearch.cli import COMMANDS, HelpFormatter, build_parser, main

HEAVY = ("torch", "timm", "optuna", "onnxruntime", "vitsearch.search.running", "vitsearch.training.brief")


def _subparsers():
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def test_the_parser_and_every_help_import_no_torch():
    """``import vitsearch.cli``, building the parser, every command's --help, --version and a bad flag: none
    imports torch, timm, optuna or the search and training code (they load in ``run``)."""
    code = ("import sys\n"
            "from vitsearch.cli import COMMANDS, main\n"
            "codes = [main([c.name, '--help']) for c in COMMANDS] + [main(['--version']), main(['search', '--bad'])]\n"
            "assert codes == [0] * len(COMMANDS) + [0, 2], codes\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_every_option_with_a_default_shows_it_and_every_option_has_help():
    for name, parser in _subparsers().items():
        formatter = HelpFormatter(name)
        for action in parser._actions:
            if not action.option_strings or action.dest == "help" or action.help == "==SUPPRESS==":
                continue
            assert action.help, (name, action.option_strings)
            if action.default not in (None, False):
                assert "default" in formatter._get_help_string(action), (name, action.option_strings)
    options = _subparsers()["search"].format_help().split("options:")[1]
    assert "(default: 0)" in options.split("--seed S")[1].split("\n  --")[0]


@pytest.mark.parametrize("option", ["--model", "--checkpoint", "--reports", "--seed", "--device", "--tables",
                                    "--train-device", "--workers"])
def test_a_shared_option_means_one_thing_everywhere(option):
    """Defined once (a parent parser): the same help and type in every command that takes it (a command may set
    another default, as export's --model defers to a vitsearch checkpoint's own)."""
    found = {(a.help, a.type) for p in _subparsers().values() for a in p._actions if option in a.option_strings}
    assert len(found) == 1, found


def test_an_unknown_flag_prints_the_subcommands_usage(capsys):
    assert main(["report", "some-study", "--reprots", "r"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vitsearch report ") and "vitsearch report: error: unrecognized arguments: --reprots" in err


@pytest.mark.parametrize("args, message", [
    (["search", "--budget", "fast"], "argument --budget: cannot read budget 'fast'"),
    (["search", "--budget", "150%"], "argument --budget: budget '150%' is more than"),
    (["predict", "--config", "spvit:3=2"], "argument --config: keep ratio 2 for the selector at block 3"),
    (["profile", "--validate", "1"], "argument --validate: 1 config cannot be ranked"),
    (["finalize", "s", "--trial", "1", "--switch", "0.3,x"], "argument --switch: '0.3,x' is not a list of shares"),
    (["finalize", "s", "--trial", "1", "--switch", "0.5,1.5"], "argument --switch: '0.5,1.5' is not a list of shares"),
])
def test_budgets_configs_and_shares_are_checked_where_they_are_parsed(capsys, args, message):
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in last, last


def test_parsed_values_arrive_normalised():
    from vitsearch.pruning import PruneConfig
    from vitsearch.search import Budget

    args = build_parser().parse_args(["search", "--budget", "0.03 s"])
    assert args.budget == Budget(ms=30.0) and str(args.budget) == "30ms"
    assert build_parser().parse_args(["predict", "--config", "spvit:3=0.7"]).config == PruneConfig.parse("spvit:3=0.7")
    assert build_parser().parse_args(["finalize", "s", "--trial", "2", "--switch", "0.3,0.6"]).switch == (0.3, 0.6)


def test_resume_of_a_study_that_does_not_exist_is_refused_by_the_library(tmp_path):
    from vitsearch.errors import VitsearchError
    from vitsearch.search import SearchSettings, run_search

    with pytest.raises(VitsearchError, match="--resume: there is no study 'typo'"):
        run_search(SearchSettings(study="typo", reports=str(tmp_path)), resume=True)
    assert not any(tmp_path.iterdir())


def test_the_settings_default_draw_is_spvits_first():
    from vitsearch.pruning.methods.spvit import TRAIN_DRAWS
    from vitsearch.training.settings import TrainSettings

    assert TrainSettings.spvit_draw == TRAIN_DRAWS[0]


def test_every_command_is_built_from_its_registry_entry():
    assert set(_subparsers()) == {c.name for c in COMMANDS}
