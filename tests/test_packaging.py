"""The wheel carries what an installed vitsearch reads (search spaces, device registry) and nothing of the repo's.

``.ci/run`` goes further: it installs the wheel into a fresh venv and runs a search from a folder outside the
repository. Here the wheel is only built (no dependencies, no isolation: seconds) from a copy of the sources, so
the test writes nothing into the checkout.
"""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from vitsearch.search.space import default_space_file, load_space

REPO = Path(__file__).resolve().parents[1]


def _wheel(tmp_path: Path) -> zipfile.ZipFile:
    src = tmp_path / "src"
    shutil.copytree(REPO / "vitsearch", src / "vitsearch", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "tests", src / "tests", ignore=shutil.ignore_patterns("__pycache__"))  # must stay out
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("vitsearch-*.whl")
    return zipfile.ZipFile(wheel)


def test_the_wheel_holds_the_packaged_data_and_no_tests(tmp_path):
    wheel = _wheel(tmp_path)
    files = wheel.namelist()
    spaces = sorted(p.name for p in (REPO / "vitsearch" / "spaces").glob("*.toml"))
    assert spaces == ["clutter.toml", "digits.toml", "vit.toml"]
    for name in spaces:
        assert f"vitsearch/spaces/{name}" in files
    assert "vitsearch/devices.toml" in files and "vitsearch/latency/runner.py" in files
    assert not [f for f in files if f.startswith(("tests/", "benchmarks/", "search/"))]
    entry_points = next(f for f in files if f.endswith(".dist-info/entry_points.txt"))
    assert "vitsearch = vitsearch.cli:main" in wheel.read(entry_points).decode()


def test_the_default_space_is_the_packaged_file():
    import vitsearch

    package = Path(vitsearch.__file__).parent
    for model, name in (("digits", "digits.toml"), ("deit_small_patch16_224", "vit.toml")):
        path = default_space_file(model)
        assert path == package / "spaces" / name and path.is_file()
        assert load_space(path, depth=12).source == str(path)
