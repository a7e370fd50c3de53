"""Data sets: the digits default and real ImageFolder trees with timm's transforms, and the batches they give."""
import dataclasses
import os

import re

import numpy as np
import pytest
import torch
from PIL import Image

from vitsearch.data import (SplitFractions, check_num_classes, digits_canvases, load_dataset, stratified_split,
                            translate_within_canvas)
from vitsearch.errors import VitsearchError
from vitsearch.models import create_model


@pytest.fixture(autouse=True)
def image_check_cache(tmp_path, monkeypatch):
    """ImageFolder checks remember what they checked in the cache: these tests keep theirs in a tmp folder."""
    monkeypatch.setenv("VITSEARCH_CACHE", str(tmp_path / "cache"))


def _write_images(folder, classes=("cat", "dog"), per_class=5, size=40):
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")


def test_image_folder_loads_with_the_models_eval_transform(tmp_path):
    _write_images(tmp_path / "train")
    _write_images(tmp_path / "val", per_class=2)
    model = create_model("vitsearch_test_vit", patch_size=8, num_classes=2)
    splits = load_dataset(tmp_path, model)
    assert splits.classes == ("cat", "dog") and splits.num_classes == 2
    # val/ as given; test is split off train/ (one of each class's five), so no image is in two splits
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 2)
    for split in ("val", "test"):
        x, y = next(splits.held_out_batches(4, split))
        assert x.shape == (len(y), 3, 32, 32) and set(y.tolist()) == {0, 1}
        assert model(x).shape == (len(y), 2)


def test_a_flat_image_folder_is_split_by_class(tmp_path):
    _write_images(tmp_path, per_class=10)
    splits = load_dataset(tmp_path, create_model("vitsearch_test_vit", patch_size=8, num_classes=2))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 4)


@pytest.mark.parametrize("layout", ["missing", "no images", "val only"])
def test_bad_image_folders_are_named(tmp_path, layout):
    root = tmp_path / "data"
    if layout == "no images":
        (root / "cat").mkdir(parents=True)
    if layout == "val only":
        _write_images(root / "val")
    with pytest.raises(VitsearchError) as e:
        load_dataset(root, create_model("vitsearch_test_vit", patch_size=8, num_classes=2))
    assert str(root) in str(e.value)


def test_digits_sit_on_the_patch_grid_of_a_larger_canvas():
    images, labels = digits_canvases()
    assert images.shape == (1797, 1, 64, 64) and labels.max() == 9
    background = (images[:, 0] == 0).float().mean()
    assert background > 0.9  # most of every canvas is background: what token pruning removes
    rows = (images[:, 0] > 0).any(dim=2).float().argmax(dim=1)  # first ink row of each digit
    assert torch.unique(rows % 8).numel() < 8  # placements are multiples of the patch, not every offset


# --- the digits splits --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_model():
    return create_model("digits")


@pytest.fixture(scope="module")
def digits(digits_model):
    return load_dataset("digits", digits_model)


def test_digits_splits_are_stratified_disjoint_and_complete(digits):
    train, val, test = digits.train, digits.val, digits.test
    assert len(train) + len(val) + len(test) == 1797
    assert abs(len(val) / 1797 - 0.2) < 0.01 and abs(len(test) / 1797 - 0.2) < 0.01
    assert digits.num_classes == 10 and digits.classes == tuple("0123456789")
    for split in (train, val, test):  # every class in each, in proportion
        counts = torch.bincount(split.labels, minlength=10)
        assert counts.min() >= 0.9 * counts.max()
    assert "load_digits" in digits.description and f"{len(val)} val / {len(test)} test" in digits.description
    assert [digits.provenance[f"{k}_size"] for k in ("train", "val", "test")] == [len(train), len(val), len(test)]


def test_digits_are_deterministic(digits, digits_model):
    again = load_dataset("digits", digits_model)
    assert torch.equal(again.train.images, digits.train.images) and torch.equal(again.val.labels, digits.val.labels)
    assert torch.equal(again.test.images, digits.test.images)
    assert again.provenance["split_sha256"] == digits.provenance["split_sha256"]
    other_split = load_dataset("digits", digits_model, split_seed=1)
    assert not torch.equal(other_split.val.labels, digits.val.labels)
    assert other_split.provenance["split_sha256"] != digits.provenance["split_sha256"]
    # A search's seed never moves the held-out splits: they belong to the base model (issue 15)
    same = load_dataset("digits", digits_model, seed=1)
    assert torch.equal(same.val.labels, digits.val.labels) and torch.equal(same.test.images, digits.test.images)


def test_digits_are_normalised_for_the_model(digits, digits_model):
    x, y = digits.val[0]
    assert x.shape == (1, *digits_model.patch_embed.img_size) and isinstance(y, int)
    images = digits.val.images
    assert images.min() == -1.0 and images.max() <= 1.0  # pixels in [0, 1], mean 0.5 / std 0.5 (vit_digits cfg)
    assert digits_model(images[:4]).shape == (4, 10)


def test_digits_for_a_three_channel_model_of_another_size(tiny_vit):
    splits = load_dataset("digits", tiny_vit)
    x, _ = splits.train[0]
    assert x.shape == (3, 32, 32)
    check_num_classes(splits, create_model("vitsearch_test_vit", patch_size=8))


def test_augmentation_moves_the_digit_and_keeps_it_whole(digits):
    x = digits.train.images[:16]
    out = digits.augment(x, torch.Generator().manual_seed(0))
    again = digits.augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and out.shape == x.shape
    assert not torch.equal(out, x)
    torch.testing.assert_close((out + 1).sum(dim=(1, 2, 3)), (x + 1).sum(dim=(1, 2, 3)))  # no ink lost


def test_translate_keeps_blank_images_and_stays_on_the_step_grid():
    img = torch.full((2, 1, 16, 16), -1.0)
    img[0, 0, 4:8, 8:12] = 1.0
    out = translate_within_canvas(img, torch.Generator().manual_seed(3), background=(-1.0,), step=4)
    assert torch.equal(out[1], img[1])
    r, c = torch.nonzero(out[0, 0] > 0).min(dim=0).values.tolist()
    assert r % 4 == 0 and c % 4 == 0 and (out[0] > 0).sum() == 16


def test_stratified_split_keeps_one_of_each_class_out_of_train_in_val_and_in_test():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    train, val, test = stratified_split(labels, SplitFractions(0.2, 0.2), seed=0)
    for split in (train, val, test):
        assert sorted(set(labels[split])) == [0, 1, 2]
    assert sorted([*train, *val, *test]) == list(range(10))  # complete, and no index twice
    with pytest.raises(VitsearchError, match="class 'owl' has 2 images.*at least 3 per class"):
        stratified_split(np.array([0, 0, 0, 1, 1]), SplitFractions(), seed=0, classes=("cat", "owl"))
    two = np.array([0, 0, 1, 1])
    train, val, test = stratified_split(two, SplitFractions(0.0, 0.3), seed=0)
    assert len(val) == 0 and sorted(two[test]) == [0, 1] and sorted(two[train]) == [0, 1]  # a share of 0: that split comes from elsewhere


def test_class_count_mismatch_names_a_command_that_exists(digits, tiny_vit):
    """The fix it names is `vitsearch pretrain` with flags that command has (search has no --num-classes)."""
    from vitsearch.cli import build_parser

    with pytest.raises(VitsearchError, match="10 classes but the model's head has 5") as e:
        check_num_classes(digits, tiny_vit)
    command = re.search(r"vitsearch (pretrain [^(]*)", str(e.value)).group(1).split()
    build_parser().parse_args([w.replace("NAME", "m").replace("PATH", "c.pt").replace("DIR", "d") for w in command])


# --- more ImageFolder cases ---------------------------------------------------------------------------------------

def test_image_folder_split_is_deterministic_and_subsets_are_seeded(tmp_path, tiny_vit):
    _write_images(tmp_path / "pets", per_class=5)
    splits = load_dataset(tmp_path / "pets", tiny_vit)
    assert splits.name == "pets" and "ImageFolder" in splits.description and "2 classes" in splits.description
    assert load_dataset(tmp_path / "pets", tiny_vit).val.samples == splits.val.samples
    small = load_dataset(tmp_path / "pets", tiny_vit, max_train=3, max_val=1)
    assert (len(small.train), len(small.val)) == (3, 1) and "subset" in small.description


def test_image_folder_for_a_grey_model(tmp_path):
    _write_images(tmp_path / "ds", per_class=3, size=70)
    x, _ = load_dataset(tmp_path / "ds", create_model("digits", num_classes=2)).train[0]
    assert x.shape == (1, 64, 64)


def test_more_bad_image_folders(tmp_path, tiny_vit):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(VitsearchError, match="not a folder"):
        load_dataset(tmp_path / "file.txt", tiny_vit)
    _write_images(tmp_path / "mixed" / "train", classes=("a", "b"), per_class=2)
    _write_images(tmp_path / "mixed" / "val", classes=("a", "c"), per_class=1)
    with pytest.raises(VitsearchError, match="different classes"):
        load_dataset(tmp_path / "mixed", tiny_vit)
    with pytest.raises(VitsearchError, match="does not exist.*ImageNet-style"):
        load_dataset(tmp_path / "nowhere", tiny_vit)


# --- batches: the interface training code calls ---------------------------------------------------------------------

def _first(batches, n):
    return [next(batches) for _ in range(n)]


def test_digits_batches_are_the_seeded_dataloaders_of_earlier_versions(digits):
    """The in-memory fast path slices tensors, yet gives exactly the batches a shuffling DataLoader seeded with
    seed + epoch gave (what digits results in benchmarks/RESULTS.md were trained on), across epoch boundaries."""
    from torch.utils.data import DataLoader

    def dataloaders(seed):
        for epoch in range(3):
            yield from DataLoader(digits.train, batch_size=32, shuffle=True,
                                  generator=torch.Generator().manual_seed(seed + epoch))

    per_epoch = -(-len(digits.train) // 32)
    expected = list(dataloaders(5))[:per_epoch + 3]
    got = _first(digits.train_batches(32, 5), per_epoch + 3)
    assert len(got[per_epoch - 1][0]) == len(digits.train) % 32  # an epoch ends with its smaller batch
    for (x, y), (ex, ey) in zip(got, expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    resumed = _first(digits.train_batches(32, 5, start=per_epoch - 1), 3)  # skips without making batches
    for (x, _), (ex, _) in zip(resumed, expected[per_epoch - 1:]):
        assert torch.equal(x, ex)
    held_out = torch.cat([y for _, y in digits.held_out_batches(100)])
    assert torch.equal(held_out, digits.val.labels)


def _folder_splits(tmp_path, model, per_class=6, **kwargs):
    _write_images(tmp_path / "pets", per_class=per_class, size=48)
    return load_dataset(tmp_path / "pets", model, **kwargs)


def test_image_folders_train_through_timms_training_transform_and_hold_out_through_its_eval_one(tmp_path):
    from timm.data import create_transform
    from timm.data.transforms import RandomResizedCropAndInterpolation

    from vitsearch.data import model_input

    model = create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=2)
    splits = _folder_splits(tmp_path, model)
    assert any(isinstance(t, RandomResizedCropAndInterpolation) for t in splits.train.transform.transforms)
    # Held out: exactly timm's eval transform of each file, in order.
    eval_tf = create_transform(**model_input(model), is_training=False)
    x, y = next(splits.held_out_batches(len(splits.val)))
    for i, (path, label) in enumerate(splits.val.samples):
        torch.testing.assert_close(x[i], eval_tf(Image.open(path).convert("RGB")))
        assert int(y[i]) == label
    # Training: augmented, a function of the key alone.
    path, _ = splits.train.samples[0]
    plain = eval_tf(Image.open(path).convert("RGB"))
    a, b, c = splits.train[(0, 1)][0], splits.train[(0, 1)][0], splits.train[(0, 2)][0]
    assert a.shape == plain.shape == (3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)
    # ... and the same image differs from one epoch to the next.
    one_image = dataclasses.replace(splits, train=splits.train.select([0]))
    epoch_0, epoch_1 = _first(one_image.train_batches(1, 0), 2)
    assert not torch.equal(epoch_0[0], epoch_1[0])


def test_training_batches_repeat_under_a_seed_whatever_the_number_of_workers(tmp_path, tiny_vit):
    from vitsearch.data import LoaderSettings

    splits = _folder_splits(tmp_path, tiny_vit)
    serial = _first(splits.train_batches(4, seed=3), 4)
    parallel = dataclasses.replace(splits, loading=LoaderSettings(workers=2))
    for (x, y), (px, py) in zip(serial, _first(parallel.train_batches(4, seed=3), 4)):
        assert torch.equal(x, px) and torch.equal(y, py)
    other = next(splits.train_batches(4, seed=4))[0]
    assert not torch.equal(other, serial[0][0])
    held_out = [x for x, _ in parallel.held_out_batches(3)]
    assert torch.equal(torch.cat(held_out), torch.cat([x for x, _ in splits.held_out_batches(3)]))


class _RecordPid:
    """A transform that notes which process ran it, then runs the real one (picklable for worker processes)."""

    def __init__(self, inner, folder):
        self.inner, self.folder = inner, folder

    def __call__(self, image):
        (self.folder / str(os.getpid())).touch()
        return self.inner(image)


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_decode_in_that_many_worker_processes(tmp_path, tiny_vit, workers):
    from vitsearch.data import LoaderSettings

    splits = _folder_splits(tmp_path, tiny_vit, loading=LoaderSettings(workers=workers))
    pids = tmp_path / "pids"
    pids.mkdir()
    splits.train.transform = _RecordPid(splits.train.transform, pids)
    _first(splits.train_batches(2, seed=0), 6)
    seen = {int(p.name) for p in pids.iterdir()}
    if workers == 0:
        assert seen == {os.getpid()}
    else:
        assert len(seen) == workers and os.getpid() not in seen


def test_negative_workers_are_refused():
    from vitsearch.data import LoaderSettings

    with pytest.raises(VitsearchError, match="workers must be 0"):
        LoaderSettings(workers=-1)


@pytest.mark.parametrize("command", [["search"], ["finalize", "some-study", "--pareto"], ["pretrain"]])
def test_workers_below_zero_are_refused_at_the_command_line(run_cli, command):
    result = run_cli(*command, "--workers", "-1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--workers: expected a whole number >= 0, got -1" in result.stderr


def test_the_search_hands_its_workers_to_the_data(tmp_path, tables, checkpoint):
    from vitsearch.search import SearchSettings
    from vitsearch.search.setup import prepare

    _write_images(tmp_path / "ten", classes=tuple("0123456789"), per_class=3, size=64)
    # a budget far above any digits config: a coarse table measured on a busy machine never refuses it
    setup = prepare(SearchSettings(model="digits", budget="1000ms", checkpoint=str(checkpoint),
                                   dataset=str(tmp_path / "ten"),
                                   workers=2, tables=str(tables), reports=str(tmp_path / "reports")), progress=False)
    assert setup.splits.loading.workers == 2
    assert (len(setup.splits.train), len(setup.splits.val), len(setup.splits.test)) == (10, 10, 10)


# --- three splits of an ImageFolder: each file in one split, links counted once (issues 25 and 27) ---------------

def _identities(splits):
    """split -> the set of (device, inode) of its files."""
    return {k: {(os.stat(p).st_dev, os.stat(p).st_ino) for p, _ in getattr(splits, k).samples}
            for k in ("train", "val", "test")}


@pytest.mark.parametrize("layout", ["flat", "train only", "train+val", "train+test", "train+val+test"])
def test_no_file_is_in_two_splits_whatever_the_layout(tmp_path, tiny_vit, layout):
    root = tmp_path / "pets"
    classes = ("cat", "dog", "owl")
    if layout == "flat":
        _write_images(root, classes, per_class=10)
    else:
        _write_images(root / "train", classes, per_class=10)
        for split in ("val", "test"):
            if split in layout:
                _write_images(root / split, classes, per_class=3)
    splits = load_dataset(root, tiny_vit)
    files = _identities(splits)
    assert all(files.values())  # three non-empty splits
    assert not files["train"] & files["val"] and not files["train"] & files["test"] and not files["val"] & files["test"]
    written = {(os.stat(p).st_dev, os.stat(p).st_ino) for p in root.rglob("*.png")}
    assert files["train"] | files["val"] | files["test"] == written  # and nothing left out
    for split in ("val", "test"):  # every class in each held-out split
        assert {c for _, c in getattr(splits, split).samples} == {0, 1, 2}
    assert [splits.provenance[f"{k}_size"] for k in ("train", "val", "test")] == [len(splits.train), len(splits.val),
                                                                                  len(splits.test)]


def test_a_symlink_loop_and_links_count_each_file_once(tmp_path, tiny_vit, caplog):
    """Issue 27: `c0/loop -> .` gave 215 samples from 15 files, 5 of them in both train and val."""
    root = tmp_path / "data"
    _write_images(root, ("c0", "c1", "c2"), per_class=5)
    (root / "c0" / "loop").symlink_to(".")  # a folder loop
    (root / "c1" / "alias.png").symlink_to(root / "c0" / "0.png")  # a second name (symlink) of a file
    os.link(root / "c0" / "1.png", root / "c2" / "hard.png")  # and a hard link
    _write_images(tmp_path / "elsewhere", ("x",), per_class=1)
    (root / "c2" / "outside.png").symlink_to(tmp_path / "elsewhere" / "x" / "0.png")  # out of the folder
    caplog.set_level("WARNING", logger="vitsearch")
    splits = load_dataset(root, tiny_vit)
    files = _identities(splits)
    assert sum(len(v) for v in files.values()) == len(splits.train) + len(splits.val) + len(splits.test) == 15
    assert not files["train"] & files["val"] and not files["train"] & files["test"] and not files["val"] & files["test"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "symlinked folders (not followed): 1" in warned and "symlinks to outside the folder: 1" in warned
    assert "second names (links) of files already listed: 2" in warned


def test_one_file_in_two_given_split_folders_is_refused(tmp_path, tiny_vit):
    root = tmp_path / "pets"
    _write_images(root / "train", per_class=4)
    _write_images(root / "val", per_class=2)
    (root / "val" / "dog" / "0.png").unlink()
    os.link(root / "train" / "dog" / "3.png", root / "val" / "dog" / "0.png")
    with pytest.raises(VitsearchError, match=r"'train/dog/3.png' and 'val/dog/0.png' .* are one file .* train/ and "
                                             r"val/.*Keep each image in one split folder"):
        load_dataset(root, tiny_vit)


def test_the_split_fingerprint_follows_the_held_out_files(tmp_path, tiny_vit):
    root = tmp_path / "pets"
    _write_images(root, per_class=10)
    digest = load_dataset(root, tiny_vit).provenance["split_sha256"]
    assert load_dataset(root, tiny_vit).provenance["split_sha256"] == digest
    assert load_dataset(root, tiny_vit, split_seed=1).provenance["split_sha256"] != digest
    assert load_dataset(root, tiny_vit, fractions=SplitFractions(0.2, 0.3)).provenance["split_sha256"] != digest


@pytest.mark.parametrize("fractions, message", [
    ((0.5, 0.5), "sum to 1, leaving nothing to train on"), ((0.7, 0.4), "sum to 1.1"),
    ((1.0, 0.1), "val fraction 1.0 is outside"), ((0.2, float("nan")), "test fraction nan is outside"),
    ((-0.1, 0.2), "val fraction -0.1 is outside")])
def test_split_fractions_are_checked(fractions, message):
    with pytest.raises(VitsearchError, match=message):
        SplitFractions(*fractions)


def test_a_class_too_small_for_three_splits_is_named_with_what_it_needs(tmp_path, tiny_vit):
    root = tmp_path / "pets"
    _write_images(root, ("cat", "dog"), per_class=6)
    _write_images(root, ("owl",), per_class=2)
    with pytest.raises(VitsearchError, match=r"'.*pets': class 'owl' has 2 images, too few to split: a 60%/20%/20% "
                                             r"train/val/test split needs at least 3 per class"):
        load_dataset(root, tiny_vit)
    # with val/ given, test alone is split off train/: two images of a class are enough there
    _write_images(tmp_path / "given" / "train", ("cat", "owl"), per_class=2)
    _write_images(tmp_path / "given" / "val", ("cat", "owl"), per_class=1)
    splits = load_dataset(tmp_path / "given", tiny_vit)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (2, 2, 2)


def test_held_out_classes_that_train_lacks_are_named(tmp_path, tiny_vit):
    _write_images(tmp_path / "d" / "train", ("cat", "dog"), per_class=3)
    _write_images(tmp_path / "d" / "test", ("cat", "dog", "emu"), per_class=1)
    with pytest.raises(VitsearchError, match=r"train/ and test/ .* different classes \(only in train: \[\], only in "
                                             r"test: \['emu'\]\): test/ needs exactly the class folders of train/"):
        load_dataset(tmp_path / "d", tiny_vit)


def test_groups_keep_every_rendering_of_a_source_in_one_split():
    """A source image rendered several ways (the embedded task's placements) is never in two splits."""
    labels = np.repeat(np.arange(3), 12)  # 3 classes x 4 sources x 3 renderings
    groups = np.repeat(np.arange(12), 3)
    train, val, test = stratified_split(labels, SplitFractions(0.25, 0.25), seed=0, groups=groups)
    by_split = [set(groups[s]) for s in (train, val, test)]
    assert not by_split[0] & by_split[1] and not by_split[0] & by_split[2] and not by_split[1] & by_split[2]
    assert [len(s) for s in by_split] == [6, 3, 3]  # 2, 1 and 1 source per class


def test_digits_held_out_splits_are_disjoint_from_train(digits):
    """No digit canvas is in two splits (each canvas is one source digit)."""
    def rows(ds):
        return {bytes(x.numpy().tobytes()) for x in ds.images}

    train, val, test = rows(digits.train), rows(digits.val), rows(digits.test)
    assert not train & val and not train & test and not val & test
