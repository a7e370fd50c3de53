"""Every image of an ImageFolder is checked once before training: each kind of bad file gets one message."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vitsearch import image_check
from vitsearch.data import load_dataset
from vitsearch.errors import VitsearchError
from vitsearch.models import create_model


@pytest.fixture(autouse=True)
def check_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _folder(root, per_class=3):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (24, 28, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _encoded(fmt: str, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height grey pixels: what a decompression bomb looks like to PIL."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1)))
            + chunk(b"IEND", b""))


BAD = {
    "zero-byte": (".jpg", lambda: b"", "zero-byte"),
    "corrupt": (".jpg", lambda: bytes(np.random.default_rng(2).integers(0, 255, 3000, dtype=np.uint8)),
                "not an image PIL can read"),
    "truncated jpeg": (".jpg", lambda: _encoded("JPEG")[:1500], "cannot be decoded"),
    "truncated png": (".png", lambda: _encoded("PNG")[:4000], "cannot be decoded"),
    "decompression bomb": (".png", lambda: _png_declaring(20000, 20000), "decompression bomb"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_each_kind_of_bad_image_is_named_with_what_to_do(tmp_path, kind):
    suffix, content, why = BAD[kind]
    root = _folder(tmp_path / "pets")
    (root / "dog" / f"bad{suffix}").write_bytes(content())
    with pytest.raises(VitsearchError) as e:
        load_dataset(root, create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=2))
    message = str(e.value)
    assert f"dog/bad{suffix}: " in message and why in message, message
    assert message.startswith("1 of 7 images") and "Delete or replace these files" in message


def test_an_image_over_the_pixel_limit_is_refused_though_pil_only_warns(tmp_path, monkeypatch):
    """Between PIL.Image.MAX_IMAGE_PIXELS and twice it, PIL opens a file with a warning; the check refuses it."""
    root = _folder(tmp_path / "pets")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 24 * 28 - 1)  # each image is one pixel over
    with pytest.raises(VitsearchError, match=r"6 of 6 images.*28x24 pixels, over the decompression-bomb limit of 671"):
        image_check.check_images(root, sorted(str(p) for p in root.rglob("*.png")))


def test_a_passed_check_is_remembered_until_a_file_changes(tmp_path, monkeypatch, check_cache):
    root = _folder(tmp_path / "pets")
    paths = sorted(str(p) for p in root.rglob("*.png"))
    checked = []
    real = image_check.image_problem
    monkeypatch.setattr(image_check, "image_problem", lambda p: checked.append(p) or real(p))
    image_check.check_images(root, paths)
    assert len(checked) == 6 and list((check_cache / "image_checks").glob("*.json"))
    image_check.check_images(root, paths)  # a resume: nothing decoded again
    assert len(checked) == 6
    (root / "cat" / "1.png").write_bytes((root / "cat" / "1.png").read_bytes()[:200])  # changed after the check
    with pytest.raises(VitsearchError, match="cat/1.png: cannot be decoded"):
        image_check.check_images(root, paths)
    assert checked[6:] == [str(root / "cat" / "1.png")]


def test_many_bad_images_are_listed_in_a_file_and_worker_processes_find_the_same(tmp_path):
    root = _folder(tmp_path / "pets")
    for i in range(12):
        (root / "cat" / f"empty{i:02d}.jpg").write_bytes(b"")
    paths = sorted(str(p) for p in root.rglob("*.*"))
    messages = []
    for workers in (0, 2):
        with pytest.raises(VitsearchError) as e:
            image_check.check_images(root, paths, workers=workers)
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    assert "12 of 18 images" in messages[0] and "and 2 more, all listed in " in messages[0]
    listing = messages[0].split("all listed in ")[1].split(". Delete")[0]
    assert open(listing).read().count("zero-byte") == 12


def test_a_bad_image_stops_the_search_before_any_work_with_one_message(run_cli, tmp_path, checkpoint, monkeypatch):
    monkeypatch.setenv("VITSEARCH_CACHE", str(tmp_path / "cache"))  # the CLI runs in a child process
    root = _folder(tmp_path / "digits-like")
    (root / "cat" / "broken.jpg").write_bytes(_encoded("JPEG")[:1000])
    result = run_cli("search", "--model", "digits", "--checkpoint", str(checkpoint), "--dataset", str(root),
                     "--reports", str(tmp_path / "reports"), "--tables", str(tmp_path / "tables"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 7 images") and "cat/broken.jpg: cannot be decoded" in last
    assert not (tmp_path / "tables").exists()  # refused before profiling or training
