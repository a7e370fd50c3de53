"""`pretrain` fitting a checkpoint or timm's hub weights to a folder (issue 28 item 8): --train-batch, --lr and the
subsets reach the training, the warm-up fits short runs, and a base at chance accuracy is warned about."""
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


def test_pretrained_hub_weights_are_fitted_offline_from_the_hub_cache(tmp_path, noise):
    """--pretrained reads timm's weights through the Hugging Face cache (HF_HUB_OFFLINE=1, a cache this test
    writes: nothing is downloaded) and fits them like a checkpoint: the base starts from exactly those weights."""
    import os
    import subprocess
    import sys

    from safetensors.torch import save_file

    root, _ = noise
    name = "vit_tiny_patch16_224"
    torch.manual_seed(1)
    hub = create_model(name)
    repo = tmp_path / "hf" / f"models--{hub.pretrained_cfg['hf_hub_id'].replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in hub.state_dict().items()}, snapshot / "model.safetensors")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")}
    run = subprocess.run([sys.executable, "-m", "vitsearch", "pretrain", "--model", name, "--pretrained", "--dataset",
                          str(root), "--steps", "1", "--cache-dir", str(tmp_path / "cache")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    saved = torch.load(tmp_path / "cache" / "hub_weights" / f"{name}.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in hub.state_dict().items())  # the cache's weights, not random ones
    fitted = json.loads(run.stdout.strip().splitlines()[-1])
    assert fitted["num_classes"] == 3 and fitted["checkpoint"].startswith(str(tmp_path / "cache"))


def test_pretrained_and_a_checkpoint_together_are_refused(noise, capsys):
    root, ckpt = noise
    assert main(["pretrain", "--model", "vitsearch_test_vit", "--pretrained", "--checkpoint", str(ckpt),
                 "--dataset", str(root)]) == 2
    assert "give either --checkpoint or --pretrained, not both" in capsys.readouterr().err
