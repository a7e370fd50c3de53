import optuna
import pytest

from vitsearch.pruning import PruneConfig
from vitsearch.errors import VitsearchError
from vitsearch.search import default_space_file, load_space


def test_builtin_spaces_skip_the_first_three_blocks():
    for model, depth in (("digits", 12), ("deit_small_patch16_224", 12)):
        space = load_space(default_space_file(model), depth=depth)
        assert space.blocks[0] == 3 and space.blocks[-1] < depth
        assert set(space.methods) == {"spvit", "evovit", "tome", "evit"}
        assert all(c.method in space.methods for c in space.baselines())


def test_the_digits_model_has_its_own_space():
    assert default_space_file("digits").name == "digits.toml"
    assert default_space_file("deit_small_patch16_224").name == "vit.toml"
    digits = load_space(default_space_file("digits"), depth=12)
    assert digits.keep_min < load_space(default_space_file("deit_tiny_patch16_224"), depth=12).keep_min


def test_suggest_and_params_of_round_trip_through_optuna():
    space = load_space(default_space_file("deit_small_patch16_224"), depth=12)
    study = optuna.create_study(directions=["maximize", "minimize"])  # one study: the parameters share it
    for config in (PruneConfig("spvit", {3: 0.7, 6: 0.5, 9: 0.35}), PruneConfig("evovit", {10: 0.5}),
                   PruneConfig("evit", {3: 0.7, 6: 0.7}), PruneConfig("tome", {3: 16, 7: 8}),
                   PruneConfig("tome", every=13)):
        study.enqueue_trial(space.params_of(config))
        trial = study.ask()
        assert space.suggest(trial) == config
        # Only the parameters the config uses: no block_2/keep_2 for one selector; a token count for ToMe.
        value = "count" if config.method == "tome" else "keep"
        expected = {f"{p}_{i}" for p in ("block", value) for i in range(1, len(config.keep) + 1)}
        assert set(trial.params) == {"method", "selectors"} | expected | ({"every"} if config.every else set())
        study.tell(trial, [0.5, 1.0])


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
        assert len(configs) == len({str(c) for c in configs}) == space.stratum_size(method, n)
    assert space.stratum_size("spvit", 3) == 56 * 17 ** 3
    assert space.stratum_size("tome", 3) == 56 * 8 ** 3  # eight counts of tokens merged
    assert [str(c) for c in space.configs("tome", 0)] == ["tome:r=1", "tome:r=2", "tome:r=3", "tome:r=4"]
    assert ("tome", 0) in space.strata() and ("spvit", 0) not in space.strata()


@pytest.mark.parametrize("model, patches", [("digits", 64), ("clutter", 144), ("deit_small_patch16_224", 196)])
def test_every_tome_config_of_a_builtin_space_fits_its_model(model, patches):
    """The largest merge count at the earliest blocks of each count (the hardest placement to fit), and each r
    for every block: the token schedule accepts them all, so a search never samples a config its model refuses."""
    from vitsearch.pruning import token_schedule

    space = load_space(default_space_file(model), depth=12)
    worst = [PruneConfig("tome", {b: max(space.count_choices) for b in space.blocks[:n]})
             for n in range(1, space.max_selectors + 1)]
    for config in worst + list(space.configs("tome", 0)):
        token_schedule(config, depth=12, num_patches=patches)
    assert {str(c) for c in space.baselines() if c.method == "tome"} == {f"tome:r={r}" for r in space.every_choices}


@pytest.mark.parametrize("body, message", [
    ("[space]\nfirst_block = 3\nlast_block = 20\n", "do not fit"),
    ("[space]\nkeep_min = 0\n", "keep_min = 0 is outside"),
    ("[space]\nmethods = ['nope']\n", "methods must be among"),
    ("[space]\nmethods = ['tome']\n", "tome take a token count at each block, not a keep ratio: give counts"),
    ("[space]\ncounts = [0, 4]\n", "counts = 0 must be at least 1"),
    ("[space\n", "not valid TOML"),
    ("[baselines]\nblocks = [3, 14]\n", "baseline blocks"),
])
def test_bad_space_files_are_named(tmp_path, body, message):
    path = tmp_path / "space.toml"
    path.write_text(body)
    with pytest.raises(VitsearchError, match=message) as e:
        load_space(path, depth=12)
    assert str(path) in str(e.value)


# Issue 27: each of these ran on defaults, or sampled outside the space, without a word.
@pytest.mark.parametrize("body, message", [
    ("[space]\nmax_selector = 2\n", "unknown key in [space] 'max_selector' (did you mean 'max_selectors'?): the "
                                     "known ones are counts, counts_every, first_block, keep_max, keep_min, keep_step, last_block, "
                                     "max_selectors, methods"),
    ("[spaec]\nkeep_min = 0.5\n", "unknown section 'spaec' (did you mean 'space'?): the known ones are baselines, "
                                   "space"),
    ("[baselines]\nkep = [0.5]\n", "unknown key in [baselines] 'kep' (did you mean 'keep'?)"),
    ("[space]\nkeep_step = nan\n", "keep_step = nan must be a finite number"),
    ("[space]\nkeep_max = inf\n", "keep_max = inf must be a finite number"),
    ("[baselines]\nblocks = [3]\nkeep = [1.5]\n", "baselines.keep = 1.5 is outside (0, 1]"),
    ("[baselines]\nblocks = [3.5]\nkeep = [0.5]\n", "baselines.blocks = 3.5 must be a whole number"),
    ("[space]\nfirst_block = 3.0\n", "first_block = 3.0 must be a whole number"),
    ("[space]\nmax_selectors = true\n", "max_selectors = True must be a whole number"),
    ("[space]\nkeep_min = '0.3'\n", "keep_min = '0.3' must be a finite number"),
    ("[space]\nlast_block = -2\nmax_selectors = 1000000\n",
     "max_selectors = 1000000 is more than the 8 blocks that may hold a selector (3..10): use at most 8"),
    ("[space]\nkeep_min = 0.3\nkeep_max = 0.9\nkeep_step = 0.07\n",
     "keep_step 0.07 does not divide keep_max - keep_min = 0.6 (8.57 steps): use a step that does (e.g. 0.05), or "
     "keep_max = 0.86"),
    ("[space]\nkeep_min = 0.8\nkeep_max = 0.5\n", "keep_min 0.8 is above keep_max 0.5"),
    ("[baselines]\nblocks = [3, 3]\nkeep = [0.5]\n", "name a block twice"),
    ("space = 3\n", "space must be a [space] section"),
])
def test_a_space_file_is_checked_against_its_schema(tmp_path, body, message):
    path = tmp_path / "space.toml"
    path.write_text("# a user's space\n" + body)
    with pytest.raises(VitsearchError) as e:
        load_space(path, depth=12)
    assert str(e.value).startswith(f"search space file {path}: ") and message in str(e.value), str(e.value)


def test_a_space_whose_step_divides_the_range_stays_inside_it(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text("[space]\nkeep_min = 0.3\nkeep_max = 0.86\nkeep_step = 0.07\nlast_block = -2\n"
                    "max_selectors = 8\n")
    space = load_space(path, depth=12)
    assert space.keep_choices[0] == 0.3 and space.keep_choices[-1] == 0.86 and space.max_selectors == 8


def test_missing_space_file_lists_the_builtin_ones(tmp_path):
    with pytest.raises(VitsearchError, match="vit.toml"):
        load_space(tmp_path / "nope.toml", depth=12)
