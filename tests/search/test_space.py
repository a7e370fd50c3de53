import optuna
import pytest

from vitsearch.pruning import PruneConfig
from vitsearch.errors import VitsearchError
from vitsearch.search import default_space_file, load_space


def test_builtin_spaces_skip_the_first_three_blocks():
    for model, depth in (("digits", 12), ("deit_small_patch16_224", 12)):
        space = load_space(default_space_file(model), depth=depth)
        assert space.blocks[0] == 3 and space.blocks[-1] < depth
        assert set(space.methods) == {"spvit", "evovit"}
        assert all(c.method in space.methods for c in space.baselines())


def test_the_digits_model_has_its_own_space():
    assert default_space_file("digits").name == "digits.toml"
    assert default_space_file("deit_small_patch16_224").name == "vit.toml"
    digits = load_space(default_space_file("digits"), depth=12)
    assert digits.keep_min < load_space(default_space_file("deit_tiny_patch16_224"), depth=12).keep_min


def test_suggest_and_params_of_round_trip_through_optuna():
    space = load_space(default_space_file("deit_small_patch16_224"), depth=12)
    config = PruneConfig("spvit", {3: 0.7, 6: 0.5, 9: 0.35})
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial(space.params_of(config))
    trial = study.ask()
    assert space.suggest(trial) == config
    # Free sampling stays inside the space.
    for _ in range(20):
        c = space.suggest(study.ask())
        assert set(c.keep) <= set(space.blocks)
        assert len(c.keep) <= space.max_selectors  # surplus flags are dropped, never a wasted trial
        assert all(space.keep_min - 1e-9 <= r <= space.keep_max + 1e-9 for r in c.keep.values())


def test_every_selector_count_is_sampled_often():
    space = load_space(default_space_file("digits"), depth=12)  # eight blocks, up to three selectors
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    counts = [len(space.suggest(study.ask()).keep) for _ in range(90)]
    assert all(counts.count(n) >= 15 for n in (1, 2, 3))  # about 30 each; eight free flags gave 1 in 3%


@pytest.mark.parametrize("body, message", [
    ("[space]\nfirst_block = 3\nlast_block = 20\n", "do not fit"),
    ("[space]\nkeep_min = 0\n", "keep ratios"),
    ("[space]\nmethods = ['tome']\n", "methods"),
    ("[space\n", "not valid TOML"),
    ("[baselines]\nblocks = [3, 14]\n", "baseline blocks"),
])
def test_bad_space_files_are_named(tmp_path, body, message):
    path = tmp_path / "space.toml"
    path.write_text(body)
    with pytest.raises(VitsearchError, match=message) as e:
        load_space(path, depth=12)
    assert str(path) in str(e.value)


def test_missing_space_file_lists_the_builtin_ones(tmp_path):
    with pytest.raises(VitsearchError, match="vit.toml"):
        load_space(tmp_path / "nope.toml", depth=12)
