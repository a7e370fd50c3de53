"""The README's library examples run as written: every ```python block is executed in order, in one namespace, in a
folder that holds a real (coarse) CPU latency table under ``latency_tables/``, as after ``vitsearch profile``. A
block whose first line says ``# README test: skip (why)`` is left out; the reason is part of the README."""
from __future__ import annotations

import re
import shutil
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = "# README test: skip"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_readme_has_library_examples_and_says_why_one_is_not_run():
    blocks = python_blocks(README.read_text())
    skipped = [b for b in blocks if b.startswith(SKIP)]
    assert len(blocks) >= 3 and len(skipped) <= 1
    assert all(re.match(rf"{re.escape(SKIP)} \(.+\)", b) for b in skipped)  # a reason, in brackets


def test_the_readme_python_blocks_run_as_written(tables, tmp_path, monkeypatch, capsys):
    shutil.copytree(tables, tmp_path / "latency_tables")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    ran = 0
    for block in python_blocks(README.read_text()):
        if block.startswith(SKIP):
            continue
        exec(compile(block, f"{README}:block{ran}", "exec"), namespace)  # noqa: S102 - the README is ours
        ran += 1
    out = capsys.readouterr().out
    assert ran >= 2 and "GMACs per image" in out and "ms predicted" in out


def test_import_vitsearch_reaches_every_stage_lazily():
    import subprocess
    import sys

    code = ("import sys, vitsearch; assert 'torch' not in sys.modules; "
            "assert callable(vitsearch.pruning.apply) and callable(vitsearch.report.write_report); "
            "assert not hasattr(vitsearch, 'no_such_stage')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(README.parent), "PATH": ""})
    assert done.returncode == 0, done.stderr
