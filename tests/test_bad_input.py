"""Bad input and faults through the real CLI (issue 15): a non-zero exit, no traceback, one message that names the
input and what to do, and nothing completed lost. Library-level checks of the same mechanisms sit beside the
module they test (tests/latency/test_latency_table.py, test_latency_runner.py, test_latency_devices.py,
tests/search/test_storage_url.py)."""
from __future__ import annotations

import argparse
import errno
import subprocess

import pytest
import torch

from vitsearch.cli import positive_int
from vitsearch.latency import table as T
from vitsearch.latency.components import GridSpec, grid
from vitsearch.models import create_model, geometry


def fails_cleanly(result: subprocess.CompletedProcess, *needles: str) -> str:
    """The failure's last stderr line, after checking the exit code, the absence of a traceback and the needles."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error: " in last, result.stderr
    for needle in needles:
        assert needle in last, last
    return last


# Latency tables -----------------------------------------------------------------------------------------------

@pytest.fixture
def digits_table(tmp_path):
    """A table for the digits geometry with a known row at every point of a coarse grid (no profiling)."""
    g = geometry(create_model("digits"))
    rows = [T.Row(p, 1, 0.1 + 0.001 * p.n, 0.12, 0.01, 10, ref_ms=1.0, stable=True)
            for p in grid(g, GridSpec(block_points=4, head_points=2, select_rows=3, select_cols=2, stage_points=2))]
    meta = {"format": T.FORMAT, "device": {"name": "cpu"}, "geometry": g.to_dict(), "batch": 1,
            "runtime": {"runtime": "onnxruntime", "version": "x"}, "threads": 1, "precision": "fp32"}
    return T.save(T.table_path(tmp_path / "tables", "cpu", g, 1), meta, rows).path


# Every kind of bad value has a library test (tests/latency/test_latency_table.py); two go through the CLI.
@pytest.mark.parametrize("column, value, message", [
    ("median_ms", b"inf", "median_ms is 'inf', not a finite number"),
    ("kind", b"overh\xe9ad", "line 2 is not UTF-8 text"),  # Latin-1, as an editor may save it
])
def test_a_bad_table_row_is_refused_naming_file_line_and_fix(run_cli, digits_table, column, value, message):
    lines = digits_table.read_bytes().split(b"\r\n")
    cells = lines[1].split(b",")
    cells[T.COLUMNS.index(column)] = value
    lines[1] = b",".join(cells)
    digits_table.write_bytes(b"\r\n".join(lines))
    result = run_cli("predict", "--config", "spvit:3=0.5", "--tables", str(digits_table.parents[1]))
    fails_cleanly(result, f"latency table {digits_table} line 2", message, "delete that line")


def test_a_duplicated_table_row_is_refused(run_cli, digits_table):
    rows = digits_table.read_bytes().split(b"\r\n")
    digits_table.write_bytes(b"\r\n".join(rows[:-1] + [rows[3].replace(b",0.1", b",43", 1), b""]))
    result = run_cli("predict", "--config", "spvit:3=0.5", "--tables", str(digits_table.parents[1]))
    fails_cleanly(result, f"latency table {digits_table} line {len(rows)}", "already measured on line 4")


# Devices -----------------------------------------------------------------------------------------------------

def test_profile_on_cuda_without_the_cuda_provider_writes_no_table(run_cli, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    result = run_cli("profile", "--device", "cuda", "--threads", "1", "--tables", str(tmp_path))
    fails_cleanly(result, "the runner on cuda failed", "needs onnxruntime's CUDAExecutionProvider",
                  "onnxruntime-gpu")
    assert not list(tmp_path.rglob("*.csv")) and not list(tmp_path.rglob("*.json"))


def test_profile_on_torch_cuda_without_a_gpu_writes_no_table(run_cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_cli("profile", "--device", "torch-cuda", "--threads", "1", "--tables", str(tmp_path))
    fails_cleanly(result, "device 'torch-cuda' needs CUDA, but torch sees no GPU here")
    assert not list(tmp_path.rglob("*.csv")) and not list(tmp_path.rglob("*.json"))


def test_an_ssh_device_that_smuggles_an_option_is_refused(run_cli, tmp_path):
    marker = tmp_path / "ran"
    result = run_cli("profile", "--device", f"ssh://-oProxyCommand=touch$IFS{marker.name}@host", "--tables",
                     str(tmp_path))
    fails_cleanly(result, "-oProxyCommand=touch$IFS", "must not start with '-'")
    assert not marker.exists()


# Configs, model options, export ---------------------------------------------------------------------------

@pytest.mark.parametrize("config, message", [
    ("spvit:3=0.5,3=0.6", "config 'spvit:3=0.5,3=0.6' gives block 3 two keep ratios"),
    ("spvit:", "config 'spvit:' names no selector after ':'"),
])
def test_a_config_that_is_ambiguous_or_empty_is_refused(run_cli, tmp_path, config, message):
    fails_cleanly(run_cli("predict", "--config", config, "--tables", str(tmp_path)), message)


def test_num_classes_must_be_positive(run_cli):
    fails_cleanly(run_cli("info", "--num-classes", "-1"), "argument --num-classes: -1 is not a positive")
    for bad in ("0", "-1", "2.5", "many"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)
    assert positive_int("10") == 10


def test_export_to_a_folder_says_to_give_a_file(run_cli, checkpoint, tmp_path):
    fails_cleanly(run_cli("export", "--checkpoint", str(checkpoint), "-o", str(tmp_path)),
                  f"{tmp_path} is a folder, not an ONNX file", f"-o {tmp_path / 'model.onnx'}")


def test_export_at_an_opset_the_exporter_cannot_write(run_cli, checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    fails_cleanly(run_cli("export", "--checkpoint", str(checkpoint), "--opset", "5", "-o", str(out)),
                  "cannot write", "at opset 5", "use --opset 18")
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("damage, message", [("empty", "is empty (0 bytes)"), ("truncated", "is truncated")])
def test_an_empty_or_truncated_checkpoint_is_named(run_cli, checkpoint, tmp_path, damage, message):
    path = tmp_path / f"{damage}.pt"
    data = checkpoint.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    fails_cleanly(run_cli("info", "--checkpoint", str(path)), f"checkpoint {str(path)!r} {message}")


# Storage -----------------------------------------------------------------------------------------------------

def test_a_mysql_storage_without_a_driver_names_the_package(run_cli, checkpoint, tables, tmp_path):
    import importlib.util

    if importlib.util.find_spec("pymysql") or importlib.util.find_spec("MySQLdb"):
        pytest.skip("a MySQL driver is installed here")
    result = run_cli("search", "--budget", "1000ms", "--storage", "mysql://me:secret@127.0.0.1/db",
                     "--checkpoint", str(checkpoint),
                     "--tables", str(tables), "--reports", str(tmp_path), "--trials", "1", "--steps", "1",
                     "--max-train", "16", "--max-val", "16")
    fails_cleanly(result, "mysql://me:***@127.0.0.1/db", "pip install 'pymysql'")
    assert "secret" not in result.stderr + result.stdout


# A full disk -------------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs) that fills up; mounting needs root."""
    folder = tmp_path / "small"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here (needs root): {done.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_export_on_a_full_disk_says_so_and_leaves_nothing(run_cli, checkpoint, small_disk):
    out = small_disk / "model.onnx"  # the digits model is 2.5 MB of ONNX
    fails_cleanly(run_cli("export", "--checkpoint", str(checkpoint), "-o", str(out)),
                  f"disk full writing {out}: free space and remove leftover *.tmp files in {small_disk}")
    assert list(small_disk.iterdir()) == [], "the temporary file is removed"


def test_a_table_on_a_full_disk_keeps_every_row_written_before(small_disk):
    path = small_disk / "t.csv"
    with pytest.raises(OSError) as e:
        with T.RowWriter(path) as writer:
            for n in range(1, 10**6):  # ~60 bytes a row: 1 MiB is full within 20k rows
                writer.append(T.Row(T.Point("block", n), 1, 0.1, 0.1, 0.0, 10))
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    with T.RowWriter(path) as resumed:  # a line cut short by the full disk is dropped, nothing before it
        assert len(writer.rows) > 1000 and set(writer.rows) <= set(resumed.rows)
        assert all(resumed.rows[p] == row for p, row in writer.rows.items())
