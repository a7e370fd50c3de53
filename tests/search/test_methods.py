"""A search over ToMe and EViT on the digits model: the training-free method is scored as it is and says so, the
trained one is trained, both in the space, the baselines and the report (issue 26 items 4 and 5)."""
import dataclasses
import json

import pytest

from vitsearch.report import load_study, write_report
from vitsearch.search import SearchSettings, run_search
from vitsearch.studyfolder import TRAINING_FREE
from vitsearch.training import TrainSettings

pytestmark = pytest.mark.slow  # a real search, training a few candidates


@pytest.fixture(scope="module")
def two_methods(space):
    """The tests' digits space offering ToMe (r at selector blocks, or r for every block) and EViT."""
    path = space.with_name("tome_evit.toml")
    text = space.read_text().replace('methods = ["spvit", "evovit"]', 'methods = ["tome", "evit"]')
    text = text.replace("counts = [2, 4, 6, 8, 10, 12, 14, 16]", "counts = [8, 16]")
    path.write_text(text.replace("counts_every = [1, 2, 3, 4]", "counts_every = [2, 4]"))
    return path


def test_a_search_scores_tome_without_training_and_trains_evit(tmp_path, env, two_methods):
    settings = SearchSettings(budget="95%", trials=4, train=TrainSettings(steps=2, batch_size=16),
                              reports=str(tmp_path / "reports"), max_train=128, max_val=96,
                              **{**env, "space": str(two_methods)})
    folder = run_search(settings, progress=False).folder
    baselines = {b["config"]: b for b in json.loads((folder / "baselines.json").read_text())}
    assert set(baselines) == {"none", "tome:r=2", "tome:r=4", "evit:3=0.5,6=0.5,9=0.5"}
    for config in ("tome:r=2", "tome:r=4"):  # ToMe's constant r: pruned, not the unpruned model
        b = baselines[config]
        assert b["status"] == TRAINING_FREE and b["train_seconds"] == 0 and b["accuracy"] is not None
        assert b["block_tokens"][-1] < baselines["none"]["block_tokens"][-1]
    evit = baselines["evit:3=0.5,6=0.5,9=0.5"]
    assert evit["status"] == "trained" and evit["train_seconds"] > 0
    for t in json.loads((folder / "trials.json").read_text()):  # the sampler picks the methods it tries
        if t["accuracy"] is not None:
            assert (t["status"] == TRAINING_FREE) == (t["method"] == "tome"), t
    md = write_report(load_study(folder)).markdown.read_text()
    line = next((l for l in md.splitlines() if l.startswith("**Methods:** on cpu (budget 95%): best method ")), "")
    assert "over the best training-free one (tome, `tome:" in line or "training-free: no trained method" in line, md

    # ToMe alone: every trial is scored as it is, from the base model's weights, in a second or two
    tome_only = two_methods.with_name("tome.toml")
    tome_only.write_text(two_methods.read_text().replace('methods = ["tome", "evit"]', 'methods = ["tome"]'))
    folder = run_search(dataclasses.replace(settings, space=str(tome_only), baselines="unpruned", trials=3,
                                         reports=str(tmp_path / "tome")),
                        progress=False).folder
    trials = [t for t in json.loads((folder / "trials.json").read_text()) if t["accuracy"] is not None]
    assert len(trials) == 3 and all(t["method"] == "tome" and t["status"] == TRAINING_FREE
                                    and t["train_seconds"] == 0 for t in trials)
