"""Models: timm ViTs by name, safe checkpoint loading with one clear error per problem, and the geometry key."""
import argparse
import pickle

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from vitsearch.errors import VitsearchError
from vitsearch.models import (DIGITS_MODEL_ARGS, ModelGeometry, create_model, file_sha256, geometry,
                              read_checkpoint)

TINY = dict(img_size=32, patch_size=8)  # vit_tiny at 16 patch tokens: random weights, no download


def test_digits_model_and_its_timm_name_are_one_model():
    a, b = create_model("digits"), create_model("vit_digits")
    assert type(a) is type(b) is VisionTransformer
    assert a.state_dict().keys() == b.state_dict().keys()
    assert not a.training  # create_model hands back an eval-mode model


def test_digits_geometry_matches_its_settings():
    g = geometry(create_model("digits"))
    a = DIGITS_MODEL_ARGS
    assert (g.embed_dim, g.depth, g.num_heads, g.mlp_ratio) == (a["embed_dim"], a["depth"], a["num_heads"], 4.0)
    assert g.img_size == (a["img_size"],) * 2 and g.patch_size == (a["patch_size"],) * 2
    assert g.num_patches == (a["img_size"] // a["patch_size"]) ** 2 and g.num_prefix_tokens == 1
    assert (g.in_chans, g.num_classes) == (1, 10)


def test_geometry_of_a_tiny_vit_and_its_key():
    g = geometry(create_model("vit_tiny_patch16_224", num_classes=7, **TINY))
    assert g == ModelGeometry(embed_dim=192, num_heads=3, depth=12, mlp_ratio=4.0, patch_size=(8, 8),
                              img_size=(32, 32), in_chans=3, num_prefix_tokens=1, num_patches=16, num_classes=7)
    assert g.key == "d192-h3-l12-m4-p8-i32-c3"
    assert g.num_tokens == 17
    assert ModelGeometry.from_dict(g.to_dict()) == g


def test_geometry_key_is_filesystem_safe_for_non_square_inputs():
    g = geometry(create_model("vit_tiny_patch16_224", img_size=(32, 48), patch_size=8))
    assert g.img_size == (32, 48) and g.num_patches == 24
    assert g.key == "d192-h3-l12-m4-p8-i32x48-c3"


def test_distilled_deit_is_accepted_with_two_prefix_tokens():
    g = geometry(create_model("deit_tiny_distilled_patch16_224", **TINY))
    assert g.num_prefix_tokens == 2


def test_unknown_model_suggests_close_names():
    with pytest.raises(VitsearchError, match="unknown model 'deit_smal_patch16_224'.*deit_small_patch16_224"):
        create_model("deit_smal_patch16_224")


@pytest.mark.parametrize("name", ["resnet18", "swin_tiny_patch4_window7_224"])
def test_timm_models_that_are_not_plain_vits_are_refused(name):
    with pytest.raises(VitsearchError, match=f"{name}.*not a plain ViT"):
        create_model(name)


def test_checkpoint_round_trip_infers_the_number_of_classes(tmp_path):
    torch.manual_seed(0)
    trained = create_model("vit_tiny_patch16_224", num_classes=7, **TINY)
    path = tmp_path / "ft.pt"
    torch.save({"model": {"module." + k: v for k, v in trained.state_dict().items()}, "epoch": 3}, path)
    loaded = create_model("vit_tiny_patch16_224", checkpoint=path, **TINY)  # no num_classes: read from the head
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), trained(x))
    assert loaded.num_classes == 7


def test_safetensors_checkpoint(tmp_path):
    model = create_model("digits")
    path = tmp_path / "digits.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = create_model("digits", checkpoint=path)
    g = geometry(model)
    x = torch.randn(1, g.in_chans, *g.img_size)
    torch.testing.assert_close(loaded(x), model(x))


def test_checkpoint_that_does_not_fit_names_keys_shapes_and_the_fix(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save({**create_model("vit_tiny_patch16_224", **TINY).state_dict(), "extra.weight": torch.zeros(1)}, path)
    with pytest.raises(VitsearchError) as err:
        create_model("digits", checkpoint=path)
    message = str(err.value)
    assert str(path) in message and "shape mismatches" in message and "cls_token" in message
    assert "unexpected keys: extra.weight" in message and "--model" in message and "--num-classes" in message
    assert "more)" in message  # long lists are cut, not dumped


def test_checkpoint_with_pickled_objects_is_refused_for_safety(tmp_path):
    path = tmp_path / "with_args.pt"
    torch.save({"model": create_model("digits").state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(VitsearchError, match="weights_only"):
        read_checkpoint(path)


@pytest.mark.parametrize("content, message", [(None, "does not exist"), (b"not a checkpoint", "not a PyTorch"),
                                              ({"epoch": 3}, "not a state_dict")])
def test_bad_checkpoint_files(tmp_path, content, message):
    path = tmp_path / "ckpt.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(VitsearchError, match=message):
        read_checkpoint(path)


def test_corrupt_safetensors_is_one_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(VitsearchError, match="safetensors"):
        read_checkpoint(path)


def test_checkpoint_and_pretrained_together_are_refused(tmp_path):
    path = tmp_path / "d.pt"
    torch.save(create_model("digits").state_dict(), path)
    with pytest.raises(VitsearchError, match="not both"):
        create_model("digits", checkpoint=path, pretrained=True)


def test_file_sha256_is_the_content_hash(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_geometry_refuses_other_modules():
    with pytest.raises(VitsearchError, match="VisionTransformer"):
        geometry(torch.nn.Linear(2, 2))
