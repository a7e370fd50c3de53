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
