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
    for config in (PruneConfig("spvit", {3: 0.7, 6: 0.5, 9: 0.35}), PruneConfig("evovit", {10: 0.5})):
        study = optuna.create_study(directions=["maximize", "minimize"])
        study.enqueue_trial(space.params_of(config))
        trial = study.ask()
        assert space.suggest(trial) == config
        # Only the parameters the config uses: no block_2/keep_2 for one selector.
        assert set(trial.params) == {"method", "selectors"} | {f"{p}_{i}" for p in ("block", "keep")
                                                               for i in range(1, len(config.keep) + 1)}


def test_a_proposal_whose_blocks_are_not_increasing_is_no_config():
    space = load_space(default_space_file("digits"), depth=12)
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial({"method": "spvit", "selectors": 2, "block_1": 7, "keep_1": 0.5, "block_2": 5, "keep_2": 0.5})
    with pytest.raises(VitsearchError, match="not increasing"):
        space.suggest(study.ask())


def test_the_space_lists_every_config_once():
    space = load_space(default_space_file("digits"), depth=12)  # eight blocks, up to three selectors, 17 ratios
    for method, n in space.strata():
        configs = list(space.configs(method, n))
        assert len(configs) == len({str(c) for c in configs}) == space.stratum_size(n)
    assert space.stratum_size(3) == 56 * 17 ** 3


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
