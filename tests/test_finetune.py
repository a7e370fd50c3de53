"""A base that fits the data: `pretrain --model M --checkpoint C --dataset D` fine-tunes a new head for the
folder's classes and caches it; the search takes the cached file; messages suggest only flags that exist."""
import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitsearch.data import check_num_classes, load_dataset
from vitsearch.errors import VitsearchError
from vitsearch.finetune import FinetuneSettings, finetuned_base
from vitsearch.models import create_model


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "pets"
    for c in ("cat", "dog", "owl"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_a_thousand_class_checkpoint_is_fitted_to_a_three_class_folder(tmp_path, folder):
    torch.manual_seed(0)
    ckpt = tmp_path / "imagenet.pt"
    torch.save(create_model("vitsearch_test_vit", num_classes=1000).state_dict(), ckpt)
    base = create_model("vitsearch_test_vit", checkpoint=ckpt)
    with pytest.raises(VitsearchError, match="vitsearch pretrain --model NAME --checkpoint PATH --dataset DIR"):
        check_num_classes(load_dataset(folder, base), base)

    settings = FinetuneSettings(steps=3, batch_size=4)
    meta = finetuned_base("vitsearch_test_vit", ckpt, folder, settings, root=tmp_path / "cache")
    assert not meta["cached"] and meta["num_classes"] == 3 and meta["classes_before"] == 1000
    fitted = create_model("vitsearch_test_vit", checkpoint=meta["checkpoint"])  # the head gives the classes
    assert fitted.num_classes == 3
    check_num_classes(load_dataset(folder, fitted), fitted)
    # the backbone was fine-tuned from the checkpoint's weights, not from scratch
    assert torch.allclose(fitted.patch_embed.proj.weight, base.patch_embed.proj.weight, atol=1e-2)

    again = finetuned_base("vitsearch_test_vit", ckpt, folder, settings, root=tmp_path / "cache")
    assert again["cached"] and again["checkpoint"] == meta["checkpoint"]
    other = finetuned_base("vitsearch_test_vit", ckpt, folder, FinetuneSettings(steps=2, batch_size=4),
                           root=tmp_path / "cache")
    assert other["checkpoint"] != meta["checkpoint"]  # keyed by the settings too


def suggested_commands() -> list[tuple[str, str, str]]:
    """(file, command, flag) for every `vitsearch CMD ... --flag` in a string of vitsearch's sources."""
    out = []
    for path in Path("vitsearch").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            for m in re.finditer(r"vitsearch (\w+)((?:[^:;()`]|\([^)]*\))*)", text):
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", m.group(2)):
                    out.append((str(path), m.group(1), flag))
    return out


def test_every_suggested_flag_belongs_to_its_command():
    from vitsearch.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    found = suggested_commands()
    assert any(cmd == "pretrain" and flag == "--dataset" for _, cmd, flag in found)  # the scan sees messages
    wrong = [(f, cmd, flag) for f, cmd, flag in found if cmd in commands
             and flag not in commands[cmd]._option_string_actions]
    assert not wrong, wrong


def _add_image(folder, name, seed=1):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / name)


def test_a_fitted_base_is_keyed_by_the_datas_content_and_its_split(tmp_path, folder):
    """Issue 27: `pretrain --dataset F`, 10 images added per class, the same command: "(cached)", and 4 of the 12
    images the search then held out had trained that base."""
    import os

    from vitsearch.finetune import data_identity
    from vitsearch.search import SearchSettings, load_base, load_splits

    torch.manual_seed(0)
    ckpt = tmp_path / "imagenet.pt"
    torch.save(create_model("vitsearch_test_vit", num_classes=1000).state_dict(), ckpt)
    settings = FinetuneSettings(steps=2, batch_size=4)
    first = finetuned_base("vitsearch_test_vit", ckpt, folder, settings, root=tmp_path / "cache")
    assert first["split"]["sha256"] and first["content_sha256"]
    # the search reads the fitted base's split from the meta.json beside its weights, and holds out just that
    search = SearchSettings(model="vitsearch_test_vit", checkpoint=first["checkpoint"], dataset=str(folder))
    base, info = load_base(search)
    assert info["split"] == {k: first["split"][k] for k in ("seed", "val_fraction", "test_fraction", "sha256")}
    assert load_splits(search, base, info["split"]).provenance["split_sha256"] == first["split"]["sha256"]

    identity = data_identity(folder, settings)
    for c in ("cat", "dog", "owl"):  # more images: another key, and another base
        for i in range(6, 9):
            _add_image(folder / c, f"{i}.png", seed=i)
    assert data_identity(folder, settings)["content_sha256"] != identity["content_sha256"]
    again = finetuned_base("vitsearch_test_vit", ckpt, folder, settings, root=tmp_path / "cache")
    assert not again["cached"] and again["checkpoint"] != first["checkpoint"]
    # the first base's split no longer holds on the changed folder: the search refuses it, naming the fix
    with pytest.raises(VitsearchError, match="held-out splits .* are not the base model's.*fit the base to it again"):
        load_splits(search, base, info["split"])

    now = data_identity(folder, settings)
    path = folder / "cat" / "0.png"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # an image replaced in place
    assert data_identity(folder, settings)["content_sha256"] != now["content_sha256"]
    other = data_identity(folder, FinetuneSettings(steps=2, batch_size=4, test_fraction=0.3))
    assert other["split"]["sha256"] != data_identity(folder, settings)["split"]["sha256"]  # and another split


@pytest.mark.parametrize("case, extra, message", [
    ("sum", ["--val-fraction", "0.5", "--test-fraction", "0.5"], "val fraction 0.5 and test fraction 0.5 sum to 1"),
    ("nan", ["--val-fraction", "nan"], "--val-fraction: nan is not a share in [0, 1)"),
    ("one", ["--test-fraction", "1"], "--test-fraction: 1 is not a share in [0, 1)"),
    ("small", [], "class 'owl' has 2 images, too few to split: a 60%/20%/20% train/val/test split needs at least 3"),
    ("extra class", [], "only in test: ['emu']"),
    ("digits", ["--val-fraction", "0.3"], "--val-fraction and --test-fraction split a --dataset folder"),
])
def test_bad_split_input_is_one_message_and_exit_2(tmp_path, capsys, case, extra, message):
    """In process (``main``, as the console script calls it): the same exit code and lines as a subprocess, in
    seconds."""
    from vitsearch.cli import main

    data = tmp_path / "data"
    if case == "extra class":
        for split, classes in (("train", ("cat", "dog")), ("test", ("cat", "dog", "emu"))):
            for c in classes:
                (data / split / c).mkdir(parents=True)
                for i in range(3):
                    _add_image(data / split / c, f"{i}.png", seed=i)
    else:
        for c, n in (("cat", 4), ("owl", 2 if case == "small" else 4)):
            (data / c).mkdir(parents=True)
            for i in range(n):
                _add_image(data / c, f"{i}.png", seed=i)
    ckpt = tmp_path / "base.pt"
    ckpt.write_bytes(b"weights")  # only hashed before the data is checked
    args = ["pretrain", *extra] if case == "digits" else \
        ["pretrain", "--model", "vit_tiny_patch16_224", "--checkpoint", str(ckpt), "--dataset", str(data), *extra]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    # one line says it (argparse's usage lines above it aside)
    assert message in err and sum("error" in line for line in err.splitlines()) == 1, err
