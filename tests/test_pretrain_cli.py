"""`pretrain` fitting a checkpoint to a folder (issue 28 item 8, in part): --train-batch and --lr reach the training,
the warm-up fits short runs, and a base at chance accuracy is warned about."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitsearch.cli import main
from vitsearch.models import create_model
from vitsearch.training.settings import FinetuneSettings


@pytest.fixture
def noise(tmp_path):
    """Three classes of random pixels: nothing to learn, so a fitted base stays at chance."""
    rng = np.random.default_rng(0)
    root = tmp_path / "noise"
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    torch.manual_seed(0)
    ckpt = tmp_path / "base.pt"
    torch.save(create_model("vitsearch_test_vit", num_classes=1000).state_dict(), ckpt)
    return root, ckpt


def test_fitting_options_reach_the_training_and_chance_is_warned_about(tmp_path, noise, capsys, caplog):
    root, ckpt = noise
    argv = ["pretrain", "--model", "vitsearch_test_vit", "--checkpoint", str(ckpt), "--dataset", str(root),
            "--steps", "3", "--train-batch", "4", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    first = json.loads(out.strip().splitlines()[-1])
    assert first["accuracy"] < 0.5 and "is near chance (33.3% for 3 classes)" in err
    assert "Train longer (--steps, now 3)" in err
    assert any("for 3 steps (0 of warm-up)" in r.getMessage() for r in caplog.records)
    assert main(argv + ["--lr", "1e-3"]) == 0  # another learning rate is another base (the settings key it)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["checkpoint"] != first["checkpoint"]


def test_subsets_fit_the_base_on_fewer_images_and_keep_the_held_out_split(tmp_path, noise, capsys):
    root, ckpt = noise
    argv = ["pretrain", "--model", "vitsearch_test_vit", "--checkpoint", str(ckpt), "--dataset", str(root),
            "--steps", "2", "--cache-dir", str(tmp_path / "cache")]
    metas = []
    for extra in ([], ["--max-train", "5", "--max-val", "3"]):
        assert main(argv + extra) == 0
        checkpoint = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["checkpoint"]
        metas.append(json.loads((tmp_path / checkpoint).parent.joinpath("meta.json").read_text()))
    whole, subset = metas
    assert subset["sizes"]["train"] == 5 and subset["sizes"]["val"] == 3 and whole["sizes"]["train"] > 5
    assert subset["sizes"]["test"] == whole["sizes"]["test"] and subset["split"] == whole["split"]


@pytest.mark.parametrize("option", ["--lr", "--max-train"])
def test_the_built_in_model_refuses_fitting_options(option, capsys):
    assert main(["pretrain", option, "10"]) == 2
    assert "--train-batch, --lr, --max-train and --max-val set the fitting of a --dataset" in capsys.readouterr().err


@pytest.mark.parametrize("steps, warmup", [(300, 10), (50, 5), (10, 1), (3, 0)])
def test_the_warm_up_is_at_most_a_tenth_of_the_steps(steps, warmup):
    assert FinetuneSettings().warmup(steps) == warmup
