"""The built-in cluttered digits and its embedded model: split by source digit, clutter only from the same split,
deterministic by seed, and a model whose cache key follows the data settings."""
import dataclasses

import numpy as np
import pytest
import torch

from vitsearch.data import CLUTTER, ClutterSpec, clutter_data, clutter_splits, load_dataset
from vitsearch.data.clutter import ink_boxes
from vitsearch.errors import VitsearchError
from vitsearch.models import CLUTTER_MODEL_ARGS, EMBEDDED, create_model, embedded_task, geometry
from vitsearch.pretrain import RECIPES, PretrainSettings, base_model, base_model_dir, recipe

# Tiny: 8-pixel digits (scale 1) on 32-pixel canvases, two renders per held-out digit, a few 4-pixel fragments.
TINY = ClutterSpec(canvas=32, scale=1, step=4, fragments=4, renders=2)
CFG = {"input_size": (1, 32, 32), "mean": (0.5,), "std": (0.5,)}
N_DIGITS = 1797


@pytest.fixture(scope="module")
def tiny():
    return clutter_data(TINY, CFG)


def test_held_out_digits_are_never_training_digits(tiny):
    train, val, test = (set(s.sources.tolist()) for s in (tiny.train, tiny.val, tiny.test))
    assert not train & val and not train & test and not val & test
    assert len(train) + len(val) + len(test) == N_DIGITS  # every digit in exactly one split
    assert len(tiny.train.sources) == len(train)  # a training digit once: its clutter is drawn per batch
    # each held-out digit at `renders` placements, each render an image of its own
    assert len(tiny.val.sources) == TINY.renders * len(val) and len(tiny.test.sources) == TINY.renders * len(test)
    assert abs(len(val) - 0.2 * N_DIGITS) < 10 and abs(len(test) - 0.2 * N_DIGITS) < 10
    # The recorded sources are the digits drawn: the target's pixels are its source digit's.
    from sklearn.datasets import load_digits

    glyphs = torch.from_numpy(load_digits().images / 16.0).float() * 2 - 1  # normalised like CFG
    for split in (tiny.train, tiny.val, tiny.test):
        for i in range(0, len(split.sources), 97):
            canvas, glyph = split.images[i, 0], glyphs[split.sources[i]]
            ink = glyph > -1  # the digit's strokes; clutter may fill its blank margin, never its strokes' box
            found = any(torch.equal(canvas[r:r + 8, c:c + 8][ink], glyph[ink])
                        for r in range(0, 25, TINY.step) for c in range(0, 25, TINY.step))
            assert found, f"image {i} does not hold digit {split.sources[i]} on the grid"


def test_clutter_comes_only_from_other_digits_of_the_same_split(tiny):
    # Training clutter is cut from training digits only: never from a digit held out.
    assert set(tiny.augment.clutter.sources.tolist()) == set(tiny.train.sources.tolist())
    for split in (tiny.val, tiny.test):
        own_split = set(split.sources.tolist())
        assert sum(len(used) for used in split.clutter) > 0.9 * TINY.fragments * len(split.sources)
        for target, used in zip(split.sources.tolist(), split.clutter):
            assert set(used) <= own_split - {target}


def test_clutter_never_covers_the_target_digit(tiny):
    bg = torch.tensor(tiny.background).view(-1, 1, 1)
    generator = torch.Generator().manual_seed(0)
    clean = tiny.train.images[:64]
    made = tiny.augment(clean, generator)
    assert not torch.equal(made, clean)
    for before, after in zip(clean, made):
        # the digit moved whole, on the grid, and no fragment touches its box
        r0, r1, c0, c1 = ink_boxes(before[None], bg)[0].tolist()
        digit = before[:, r0:r1, c0:c1]
        hits = [(r, c) for r in range(0, 33 - (r1 - r0)) for c in range(0, 33 - (c1 - c0))
                if (r - r0) % TINY.step == 0 and (c - c0) % TINY.step == 0
                and torch.equal(after[:, r:r + r1 - r0, c:c + c1 - c0], digit)]
        assert hits
        # the clutter is there: more ink than the digit alone
        assert int(((after - bg).abs() > 1e-5).sum()) > int(((before - bg).abs() > 1e-5).sum())


def test_the_same_seed_renders_the_same_images_and_another_seed_others(tiny):
    again = clutter_data(TINY, CFG)
    for a, b in ((tiny.train, again.train), (tiny.val, again.val), (tiny.test, again.test)):
        assert torch.equal(a.images, b.images) and np.array_equal(a.sources, b.sources) and a.clutter == b.clutter
    batch = tiny.train.images[:16]
    same = [tiny.augment(batch, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(same[0], same[1])
    assert not torch.equal(same[0], tiny.augment(batch, torch.Generator().manual_seed(6)))
    other = clutter_data(dataclasses.replace(TINY, seed=1), CFG)
    assert not np.array_equal(other.val.sources, tiny.val.sources)
    assert not np.array_equal(other.test.sources, tiny.test.sources)
    assert not torch.equal(other.val.images[:16], tiny.val.images[:16])


def test_the_clutter_model_sees_144_tokens_and_its_splits_fit_it():
    model = create_model(CLUTTER)
    g = geometry(model)
    assert g.num_patches == 144 and g.num_tokens == 145 and g.img_size == (96, 96)
    assert embedded_task("vit_clutter") is EMBEDDED[CLUTTER]
    splits = clutter_splits(model, ClutterSpec(fragments=2, renders=1))
    for split in ("val", "test"):
        x, y = next(splits.held_out_batches(8, split))
        assert x.shape == (8, 1, 96, 96) and y.shape == (8,)
    assert len(splits.val) == splits.provenance["val_size"] and len(splits.test) == splits.provenance["test_size"]
    assert len(splits.test) > 300
    with pytest.raises(VitsearchError, match="96x96 canvases"):
        load_dataset(CLUTTER, create_model("digits"))


def test_the_clutter_base_model_is_cached_by_its_data_settings(tmp_path):
    assert set(RECIPES) == set(EMBEDDED)  # every embedded model has a pretraining recipe
    settings = recipe(CLUTTER)
    assert settings.task == CLUTTER and settings.model == CLUTTER_MODEL_ARGS
    assert base_model_dir(settings, tmp_path).name == f"{CLUTTER}-{settings.key}"
    harder = dataclasses.replace(settings, data=dataclasses.replace(settings.data, fragments=20))
    assert harder.key != settings.key
    assert dataclasses.replace(settings, data=dataclasses.replace(settings.data, seed=1)).key != settings.key
    # a tiny clutter model, trained for one epoch into the tmp cache, loads back from it
    tiny = PretrainSettings(model={**CLUTTER_MODEL_ARGS, "depth": 2, "embed_dim": 16, "num_heads": 2},
                            data=ClutterSpec(fragments=2, renders=1), epochs=1, batch_size=256)
    model, meta = base_model(tiny, root=tmp_path)
    assert meta["model"] == CLUTTER and not meta["cached"] and meta["dataset_provenance"]["name"] == CLUTTER
    again, meta2 = base_model(tiny, root=tmp_path)
    assert meta2["cached"] and meta2["path"] == meta["path"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_a_clutter_search_reads_clutter_with_its_own_space():
    from vitsearch.search import SearchSettings
    from vitsearch.search.space import default_space_file, load_space

    assert SearchSettings(model=CLUTTER).dataset == CLUTTER
    assert SearchSettings().dataset == "digits"
    assert SearchSettings(model="deit_small_patch16_224", dataset="/data/pets").dataset == "/data/pets"
    assert default_space_file(CLUTTER).name == "clutter.toml"
    space = load_space(default_space_file("vit_clutter"), depth=12)
    assert space.keep_min == 0.1 and min(space.blocks) == 3
