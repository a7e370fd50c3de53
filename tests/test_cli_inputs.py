"""Bad input through the real CLI: one message naming the input, a non-zero exit, no traceback."""
import pytest
import torch


def _fails_cleanly(result, *needles):
    assert result.returncode != 0
    # "error: ..." from vitsearch, or "vitsearch CMD: error: argument --x: ..." from the parser (checked at the edge)
    assert "Traceback" not in result.stderr and "error: " in result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_unknown_model_name(run_cli):
    _fails_cleanly(run_cli("info", "--model", "deit_smal_patch16_224"), "deit_smal_patch16_224")


def test_a_timm_model_that_is_not_a_vit(run_cli):
    _fails_cleanly(run_cli("info", "--model", "resnet18"), "resnet18", "VisionTransformer")


def test_a_checkpoint_whose_shapes_do_not_match(run_cli, tmp_path):
    from vitsearch.models import create_model

    path = tmp_path / "tiny.pt"
    torch.save(create_model("vit_tiny_patch16_224", img_size=32, patch_size=8).state_dict(), path)
    _fails_cleanly(run_cli("info", "--model", "digits", "--checkpoint", str(path)), str(path))


@pytest.mark.parametrize("config, needle", [("spvit:3=1.5", "outside (0, 1]"), ("spvit:3=0", "outside (0, 1]"),
                                            ("spvit:40=0.5", "does not exist")])
def test_bad_keep_ratio_or_selector_block(run_cli, tmp_path, config, needle):
    _fails_cleanly(run_cli("export", "--model", "vit_tiny_patch16_224", "--config", config,
                           "--output", str(tmp_path / "m.onnx")), needle)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_an_image_folder_that_does_not_exist_or_holds_no_images(run_cli, tmp_path, make):
    folder = tmp_path / "data"
    if make == "empty":
        (folder / "cats").mkdir(parents=True)
    result = run_cli("search", "--dataset", str(folder), "--model", "digits", "--checkpoint", str(tmp_path / "x.pt"),
                     "--reports", str(tmp_path / "r"), "--tables", str(tmp_path / "t"))
    assert result.returncode != 0 and "Traceback" not in result.stderr


def test_bad_budget(run_cli):
    _fails_cleanly(run_cli("search", "--budget", "fast"), "argument --budget: cannot read budget 'fast'")


def test_learned_steps_without_learned_or_not_positive(run_cli, tmp_path):
    _fails_cleanly(run_cli("search", "--learned-steps", "100", "--reports", str(tmp_path)), "--learned-steps",
                   "--learned")
    result = run_cli("search", "--learned", "--learned-steps", "0", "--reports", str(tmp_path))
    assert result.returncode == 2 and "--learned-steps" in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing was started
