"""The search through the CLI: what it ends with (the pick's trial, the commands to run next) and --baselines."""
import json
import shlex

import pytest

from vitsearch.cli import main

pytestmark = pytest.mark.slow  # real (tiny) searches


def _search(tmp_path, env, *extra):
    return main(["search", "--budget", "95%", "--trials", "2", "--steps", "2", "--train-batch", "16",
                 "--max-train", "64", "--max-val", "48", "--max-test", "48", "--study", "cli smoke",
                 "--reports", str(tmp_path / "my reports"), "--tables", env["tables"], "--space", env["space"],
                 "--checkpoint", env["checkpoint"], *extra])


def test_the_search_names_its_pick_and_the_commands_to_run_next(tmp_path, env, capsys, caplog):
    """Issue 28 items 2 and 10: the best trial's number in the summary and the JSON, the report and finalize
    commands with the user's own study and reports folder; --baselines none trains no baseline, and a resumed
    search with --baselines unpruned adds the unpruned one only."""
    assert _search(tmp_path, env, "--baselines", "none") == 0
    out = capsys.readouterr().out
    said = [r.getMessage() for r in caplog.records]  # issue 28 item 6: a line at the start and before each evaluation
    assert said[0] == "search cli smoke: loading the base model, the data and the latency table", said[:3]
    assert sum("evaluating on val and test (48 + 48 images)" in m for m in said) == 2, said
    record = json.loads(out.strip().splitlines()[-1])
    best = record["best"]
    trials = json.loads((tmp_path / "my reports" / "cli smoke" / "trials.json").read_text())
    assert best["trial"] in {t["trial"] for t in trials if t["config"] == best["config"]}
    assert f"best under budget (by val): trial {best['trial']} {best['config']}" in out
    reports = shlex.quote(str(tmp_path / "my reports"))
    assert record["next"] == [f"vitsearch report 'cli smoke' --reports {reports}",
                              f"vitsearch finalize 'cli smoke' --reports {reports} --trial {best['trial']}"]
    assert all(f"  {c}\n" in out for c in record["next"])
    assert json.loads((tmp_path / "my reports" / "cli smoke" / "baselines.json").read_text()) == []
    # The commands it prints run as printed.
    assert main(shlex.split(record["next"][0])[1:]) == 0

    assert _search(tmp_path, env, "--baselines", "unpruned") == 0
    baselines = json.loads((tmp_path / "my reports" / "cli smoke" / "baselines.json").read_text())
    assert [b["kind"] for b in baselines] == ["unpruned"]
    assert "unpruned" in capsys.readouterr().out
