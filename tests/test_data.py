"""Data sets: the digits default and real ImageFolder trees with timm's eval transforms."""
import numpy as np
import pytest
import torch
from PIL import Image

from vitsearch.data import digits_canvases, load_dataset
from vitsearch.errors import VitsearchError
from vitsearch.models import create_model


def _write_images(folder, classes=("cat", "dog"), per_class=5, size=40):
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")


def test_image_folder_loads_with_the_models_eval_transform(tmp_path):
    _write_images(tmp_path / "train")
    _write_images(tmp_path / "val", per_class=2)
    model = create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=2)
    splits = load_dataset(tmp_path, model)
    assert splits.classes == ("cat", "dog") and splits.num_classes == 2
    assert (len(splits.train), len(splits.val)) == (10, 4)
    x, y = next(iter(splits.loader("val", 4)))
    assert x.shape == (4, 3, 32, 32) and set(y.tolist()) == {0, 1}
    assert model(x).shape == (4, 2)


def test_a_flat_image_folder_is_split_by_class(tmp_path):
    _write_images(tmp_path, per_class=10)
    splits = load_dataset(tmp_path, create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=2))
    assert len(splits.train) + len(splits.val) == 20 and len(splits.val) == 4


@pytest.mark.parametrize("layout", ["missing", "no images", "val only"])
def test_bad_image_folders_are_named(tmp_path, layout):
    root = tmp_path / "data"
    if layout == "no images":
        (root / "cat").mkdir(parents=True)
    if layout == "val only":
        _write_images(root / "val")
    with pytest.raises(VitsearchError) as e:
        load_dataset(root, create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=2))
    assert str(root) in str(e.value)


def test_digits_sit_on_the_patch_grid_of_a_larger_canvas():
    images, labels = digits_canvases()
    assert images.shape == (1797, 1, 64, 64) and labels.max() == 9
    background = (images[:, 0] == 0).float().mean()
    assert background > 0.9  # most of every canvas is background: what token pruning removes
    rows = (images[:, 0] > 0).any(dim=2).float().argmax(dim=1)  # first ink row of each digit
    assert torch.unique(rows % 8).numel() < 8  # placements are multiples of the patch, not every offset
