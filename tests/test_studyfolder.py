"""The study folder's shared files under concurrent writers (real processes)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vitsearch.studyfolder import StudyFolder

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import sys
from vitsearch.studyfolder import StudyFolder
folder, first = StudyFolder(sys.argv[1]), int(sys.argv[2])
for trial in range(first, first + 200):
    folder.store_finalized({"trial": trial, "config": "spvit:4=0.6"})
"""


def test_two_finalize_runs_of_one_study_keep_every_finalized_row(tmp_path):
    """Two finalize processes of one study (one trial each, on two GPUs) store rows at once: finalized.json is
    read and rewritten under the folder's lock, so no row is lost (without it, 184 of 400 were kept)."""
    folder = StudyFolder(tmp_path / "s").make()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder.path), str(first)], cwd=ROOT,
                                stderr=subprocess.PIPE, text=True) for first in (0, 1000)]
    for w in writers:
        assert w.wait(timeout=300) == 0, w.stderr.read()
    assert sorted(r["trial"] for r in folder.finalized()) == [*range(200), *range(1000, 1200)]
