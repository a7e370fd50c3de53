"""The study folder's files: records in JSON and CSV, and its shared files under concurrent writers (real processes)."""
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


def test_records_keep_lists_as_lists_in_json_and_as_json_arrays_in_csv(tmp_path):
    """issue 28 item 9: trials.json holds lists; trials.csv, text only, holds each list as a JSON array that
    json.loads reads back (Python's repr, "('a', None)", would not), every other cell as it is."""
    import csv
    import json

    folder = StudyFolder(tmp_path / "study")
    folder.make()
    records = [{"trial": 0, "blocks": [3, 6], "keep": (0.7, 0.5), "notes": ["a, b", None], "status": "trained",
                "accuracy": 0.5},
               {"trial": 1, "blocks": [], "keep": [], "notes": [], "status": "rejected, over budget", "accuracy": None}]
    folder.write_records("trials", records)
    assert folder.read_records("trials")[0]["keep"] == [0.7, 0.5]
    with (folder.path / "trials.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row, record in zip(rows, records, strict=True):
        for column in ("blocks", "keep", "notes"):
            assert json.loads(row[column]) == list(record[column]), row
    assert rows[1]["status"] == "rejected, over budget" and rows[1]["accuracy"] == "" and rows[0]["trial"] == "0"
