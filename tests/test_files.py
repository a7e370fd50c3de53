"""Atomic writes: a reader sees the old file or the new one, never a part, and no temporary file is left."""
import json
import threading

import pytest

from vitsearch.files import atomic, write_json


def test_an_interrupted_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "study.json"
    write_json(path, {"trials": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic(path) as f:
            f.write('{"trials": ')
            raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"trials": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["study.json"]


def test_concurrent_writers_each_replace_a_whole_file(tmp_path):
    path = tmp_path / "trials.json"
    records = [[{"trial": i, "config": "spvit:3=0.5"}] * 200 for i in range(8)]
    errors = []

    def write(i: int) -> None:
        try:
            for _ in range(20):
                write_json(path, records[i])
        except Exception as e:  # a shared temporary name fails here (the file was renamed away by another writer)
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert json.loads(path.read_text()) in records
    assert [p.name for p in tmp_path.iterdir()] == ["trials.json"]
