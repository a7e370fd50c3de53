"""Profiling on the local onnxruntime device: a complete table with provenance, and resume after a kill."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from vitsearch.errors import VitsearchError
from vitsearch.latency import Predictor, grid, profile
from vitsearch.latency.components import Point
from vitsearch.latency import table as T
from vitsearch.models import create_model, geometry

from .conftest import QUICK, TINY_GRID, TINY_KWARGS, TINY_MODEL

REPO = Path(__file__).resolve().parents[2]


def test_profile_writes_a_complete_table_with_provenance(tiny_table):
    assert set(tiny_table.rows) == set(grid(tiny_table.geometry, TINY_GRID))
    meta = tiny_table.meta
    assert meta["complete"] is True and meta["threads"] == 1 and meta["batch"] == 1 and meta["precision"] == "fp32"
    assert meta["spinning"] == "off" and meta["runtime"]["threads"] == 1 and not meta["settings"]["spinning"]
    assert meta["runtime"]["runtime"] == "onnxruntime" and meta["runtime"]["version"]
    assert meta["device"]["name"] == "cpu" and meta["geometry"]["key"] == tiny_table.geometry.key
    for key in ("date", "vitsearch_version", "settings", "grid", "model"):
        assert key in meta
    assert all(r.median_ms >= 0 and r.repeats > 0 for r in tiny_table.rows.values())
    blocks = {p.n: r for p, r in tiny_table.rows.items() if p.kind == "block"}
    assert all(r.steps == tiny_table.geometry.depth for r in blocks.values())
    overhead = next(r for p, r in tiny_table.rows.items() if p.kind == "overhead")
    # every other row has the overhead taken out of each call before dividing by the steps
    for r in blocks.values():
        assert r.median_ms == pytest.approx(max(0.0, (r.raw_median_ms - overhead.raw_median_ms) / r.steps), rel=1e-4)


def test_every_call_times_the_drift_reference(tiny_table):
    """Each kind's call also timed the dense block chain; rows of one call share its reference, and the
    reference is the same graph as the block row at every token (so it costs about as much)."""
    refs = {p.kind: {r.ref_ms for q, r in tiny_table.rows.items() if q.kind == p.kind} for p in tiny_table.rows}
    assert all(len(v) == 1 and next(iter(v)) > 0 for v in refs.values())  # one call per kind, one reference each
    g = tiny_table.geometry
    full = tiny_table.rows[Point("block", g.num_prefix_tokens + g.num_patches)]
    assert full.raw_median_ms / 3 < full.ref_ms < 3 * full.raw_median_ms


def test_interrupted_profile_resumes_and_keeps_its_rows(tmp_path):
    """Kill a profile (SIGKILL, mid-write possibly) once it has measured a few rows; running it again measures
    only what is missing, and the rows measured before are kept as they were."""
    args = dict(model=TINY_MODEL, model_kwargs=TINY_KWARGS, threads=1, tables=str(tmp_path), grid_spec=TINY_GRID,
                settings=QUICK, progress=False)
    code = ("from vitsearch.latency import profile, GridSpec, MeasureSettings\n"
            f"profile('cpu', model={TINY_MODEL!r}, model_kwargs={TINY_KWARGS!r}, threads=1, tables={str(tmp_path)!r}, "
            f"grid_spec=GridSpec(**{TINY_GRID.__dict__!r}), settings=MeasureSettings(**{QUICK.__dict__!r}), "
            "progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    csv_files: list[Path] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        csv_files = list(tmp_path.glob("cpu/*.csv"))
        if csv_files and len(csv_files[0].read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert csv_files, "the profile wrote no rows before the deadline"
    with T.RowWriter(csv_files[0]) as w:  # recovers from a line cut short
        before = dict(w.rows)
    total = len(grid(geometry(create_model(TINY_MODEL, **TINY_KWARGS)), TINY_GRID))
    assert 5 <= len(before) < total, "killed mid-profile"

    table = profile("cpu", **args)
    assert len(table.rows) == total and table.meta["complete"] is True
    for point, row in before.items():
        assert table.rows[point] == row

    with pytest.raises(VitsearchError, match="profiled with threads 1, not 2.*--restart"):
        profile("cpu", **{**args, "threads": 2})


def test_a_table_profiled_before_a_method_existed_gets_only_the_missing_kinds(tmp_path, tiny_table):
    """A complete table of an older vitsearch (no ToMe or EViT rows): the search and prediction see which kinds
    it lacks, and profiling it again measures only those; every row it had is kept as it was."""
    new_kinds = ("tome_attn", "tome_merge", "tome_mlp", "evit_attn", "evit_fuse", "evit_mlp")
    old_rows = {p: r for p, r in tiny_table.rows.items() if p.kind not in new_kinds}
    older = T.save(T.table_path(tmp_path, "cpu", tiny_table.geometry, 1, "fp32"), tiny_table.meta,
                   old_rows.values())
    assert older.meta["complete"] is True and older.missing_kinds == new_kinds
    with pytest.raises(VitsearchError, match="no evit_attn rows .*measures only the missing kinds"):
        Predictor(older).predict("evit:1=0.5")
    table = profile("cpu", model=TINY_MODEL, model_kwargs=TINY_KWARGS, threads=1, tables=str(tmp_path),
                    grid_spec=TINY_GRID, settings=QUICK, progress=False)
    assert set(table.rows) == set(grid(table.geometry, TINY_GRID)) and table.missing_kinds == ()
    assert table.meta["complete"] is True
    for point, row in old_rows.items():
        assert table.rows[point] == row  # kept, not measured again
    assert {p.kind for p, _ in Predictor(table).predict("evit:1=0.5").parts} >= set(new_kinds[3:])
    assert {p.kind for p, _ in Predictor(table).predict("tome:r=4").parts} >= set(new_kinds[:3])


def test_bad_arguments(tmp_path):
    with pytest.raises(VitsearchError, match="batch must be a positive integer"):
        profile("cpu", batch=0, tables=tmp_path)
    with pytest.raises(VitsearchError, match="unknown device 'gpu9'"):
        profile("gpu9", tables=tmp_path)
    with pytest.raises(VitsearchError, match=r"--threads 99 is not possible on .* which has \d+ cores: use 1 to"):
        profile("cpu", model=TINY_MODEL, model_kwargs=TINY_KWARGS, threads=99, tables=tmp_path, progress=False)


def test_threads_zero_profiles_with_every_core_and_records_the_count(tmp_path):
    from vitsearch.latency.runner import cpu_count

    table = profile("cpu", model=TINY_MODEL, model_kwargs=TINY_KWARGS, threads=0, tables=tmp_path,
                    grid_spec=TINY_GRID, settings=QUICK, progress=False)
    assert table.meta["threads"] == table.meta["runtime"]["threads"] == cpu_count()


def test_two_profiles_of_one_table_at_once_measure_it_once(tmp_path):
    """Two workers started together on a fresh machine (issue 27): they used to measure at once, on the same
    cores, into one file, and both failed on the duplicated rows. Now one profiles while the other waits for the
    table's lock, then reads the finished table: both succeed, and each grid point is in the table once."""
    code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
            "from vitsearch.latency import profile, GridSpec, MeasureSettings\n"
            f"t = profile('cpu', model={TINY_MODEL!r}, model_kwargs={TINY_KWARGS!r}, threads=1, "
            f"tables={str(tmp_path)!r}, grid_spec=GridSpec(**{TINY_GRID.__dict__!r}), "
            f"settings=MeasureSettings(**{QUICK.__dict__!r}), progress=False)\n"
            "print(len(t.rows))\n")
    workers = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [w.communicate(timeout=600) for w in workers]
    total = len(grid(geometry(create_model(TINY_MODEL, **TINY_KWARGS)), TINY_GRID))
    for w, (out, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]
        assert out.split() == [str(total)]
    (path,) = tmp_path.glob("cpu/*.csv")
    assert len(path.read_text().splitlines()) == 1 + total  # the header and each point once: nothing appended twice
    table = T.load(path)
    assert len(table.rows) == total and table.meta["complete"] is True
    assert sum("being profiled by another process" in err for _, err in outs) == 1  # the second one waited


def test_sigterm_ends_a_profile_like_ctrl_c(tmp_path):
    """SIGTERM (a scheduler, docker stop, timeout) mid-profile: the rows measured are kept and resumable, the
    temporary ONNX folders are removed, one line, exit 143 (it used to die at once with -15, leaving them)."""
    import os
    import signal

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    log = tmp_path / "profile.log"
    proc = subprocess.Popen([sys.executable, "-m", "vitsearch", "profile", "--device", "cpu", "--model", "digits",
                             "--threads", "1", "--tables", str(tmp_path / "tables")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), env={**os.environ, "TMPDIR": str(tmp)})
    deadline = time.monotonic() + 300
    csv_files: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        csv_files = list((tmp_path / "tables").glob("cpu/*.csv"))
        if csv_files and len(csv_files[0].read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert csv_files and proc.poll() is None, log.read_text()[-3000:]
    assert list(tmp.glob("vitsearch-profile-*"))  # the folder the test expects removed is there
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
    stderr = log.read_text()
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("interrupted: the "), stderr
    assert not list(tmp.glob("vitsearch-*")), list(tmp.iterdir())
    with T.RowWriter(csv_files[0]) as w:  # what was measured reads back, for the same command to resume
        assert len(w.rows) >= 2
