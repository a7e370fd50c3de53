"""Shared fixtures: one tiny registered timm ViT (no downloads), the trained digits base model, and a digits latency
table written with chosen costs (no test reads values timed in its own session; profiling is tested in latency/).

No test writes outside a temporary folder: ``$VITSEARCH_CACHE`` points at a session temporary folder, so the
digits base model is trained there once per session (about a minute on two cores) and never touches the user's
cache. Tests that exercise the cache itself use their own tmp folders.

Markers (registered in pyproject.toml): ``slow`` (real searches and training, minutes) and ``server`` (starts
PostgreSQL, sshd or Chromium; skips where the binaries are missing, fails in CI).
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pytest
import timm
import torch
from timm.models import register_model

from vitsearch.models import create_model


@register_model
def vitsearch_test_vit(pretrained: bool = False, **kwargs) -> torch.nn.Module:
    """The tests' tiny ViT, like timm's ``test_vit``: a stock timm VisionTransformer (vit_tiny's config) at 32x32
    input in 4x4 patches (64 patch tokens), embed 64, 4 heads, 12 blocks, 10 classes; random weights, built in
    milliseconds. Keyword arguments override any of these."""
    args = {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 12, "num_heads": 4, "num_classes": 10}
    return timm.create_model("vit_tiny_patch16_224", pretrained=pretrained, **{**args, **kwargs})


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Iterator[Path]:
    """``$VITSEARCH_CACHE`` for the whole session (subprocesses inherit it): the digits model trains in here."""
    folder = tmp_path_factory.mktemp("vitsearch-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VITSEARCH_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def digits_base(cache_dir) -> tuple[torch.nn.Module, dict]:
    """(model, meta) of the trained digits base model, trained into the session's cache on first use."""
    from vitsearch.pretrain import base_model

    return base_model()


@pytest.fixture
def tiny_vit() -> torch.nn.Module:
    """The test ViT in 8x8 patches (16 patch tokens) with 5 classes, seeded."""
    torch.manual_seed(0)
    return create_model("vitsearch_test_vit", patch_size=8, num_classes=5)


@pytest.fixture
def run_cli():
    """Run ``python -m vitsearch ARGS`` in a subprocess, as a user would; returns the CompletedProcess."""
    import subprocess

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        return subprocess.run([sys.executable, "-m", "vitsearch", *args], capture_output=True, text=True,
                              timeout=timeout, env=env)

    return run


def chosen_ms(point) -> float:
    """The tests' latency of one component (ms per step), strictly increasing in each of its token counts and in
    proportion to a small CPU's (blocks quadratic in n, the rest linear, selection a few percent of a block), so
    every config the digits space allows has one known, reproducible prediction."""
    n, k = point.n, point.k
    block = 0.004 + 0.0008 * n + 0.000004 * n * n
    return {"overhead": lambda: 0.01 + 0.00001 * n, "embed": lambda: 0.02 + 0.0001 * n,
            "block": lambda: block, "block_cls": lambda: block + 0.002,
            "evo_block": lambda: block + 0.001 + 0.00002 * k, "evo_block_cls": lambda: block + 0.003 + 0.00002 * k,
            "evo_stage": lambda: 0.01 + 0.0001 * n + 0.0001 * k, "evo_enter": lambda: 0.006 + 0.0001 * n + 0.0001 * k,
            "spvit_select": lambda: 0.008 + 0.0002 * n + 0.00005 * k, "head": lambda: 0.002 + 0.00005 * n,
            # a block split in its attention and MLP halves (ToMe, EViT), the step between them a few percent
            "tome_attn": lambda: 0.45 * block + 0.0002, "tome_mlp": lambda: 0.55 * block,
            "tome_merge": lambda: 0.001 + 0.00002 * n + 0.00001 * k,
            "evit_attn": lambda: 0.45 * block + 0.001, "evit_mlp": lambda: 0.55 * block,
            "evit_fuse": lambda: 0.005 + 0.0001 * n + 0.00005 * k}[point.kind]()


COARSE_GRID = dict(block_points=6, head_points=3, select_rows=4, select_cols=2, stage_points=3)
QUICK_MEASURE = dict(warmup=2, min_repeats=5, max_repeats=20, max_seconds=0.5)


def write_table(tables: Path, *, model: str = "digits", costs: Callable[[Any], float] = chosen_ms,
                speeds: Mapping[str, float] | None = None, reference_ms: float = 1.0, grid_spec: Any = None,
                model_kwargs: Mapping[str, Any] | None = None, precision: str = "fp32") -> Any:
    """A complete CPU latency table for ``model`` written through vitsearch.latency.table (rows, metadata, path),
    with the latencies ``costs`` gives at every grid point instead of timings: no test reads a table whose values
    depend on how busy the machine was while the session profiled it (a flat monotone fit once zeroed a gradient).

    ``speeds`` scales a kind's rows as if they had been profiled in a slow minute: its latencies and its calls'
    drift reference (``ref_ms``) both multiplied, so the predictor, scaling every row to the table's reference
    speed (the median reference, ``reference_ms`` where most kinds are at speed 1), predicts ``costs`` again."""
    import onnxruntime

    from vitsearch import __version__
    from vitsearch.latency import table as T
    from vitsearch.latency.components import GridSpec, grid
    from vitsearch.latency.devices import MeasureSettings
    from vitsearch.latency.registry import resolve
    from vitsearch.models import geometry

    spec = GridSpec(**COARSE_GRID) if grid_spec is None else grid_spec
    g = geometry(create_model(model, **dict(model_kwargs or {})))
    rows = []
    for p in grid(g, spec):
        speed = (speeds or {}).get(p.kind, 1.0)
        ms, steps = costs(p) * speed, g.depth if "block" in p.kind else 1
        rows.append(T.Row(p, steps, ms, 1.1 * ms, 0.1 * ms, 20, p10_ms=0.95 * ms, raw_median_ms=ms * steps,
                          stable=True, ref_ms=reference_ms * speed))
    threads = 1
    meta = {"format": T.FORMAT, "device": resolve("cpu", tables).to_dict(), "model": model, "geometry": g.to_dict(),
            "batch": 1, "precision": precision, "threads": threads, "spinning": "off",
            "settings": asdict(MeasureSettings(threads=threads, **QUICK_MEASURE)), "grid": asdict(spec),
            "vitsearch_version": __version__, "complete": True, "date": "2026-01-01T00:00:00+00:00",
            "runtime": {"runtime": "onnxruntime", "version": onnxruntime.__version__, "threads": threads},
            "latency": "written by the tests (tests/conftest.py write_table): chosen costs, not measurements"}
    return T.save(T.table_path(tables, "cpu", g, 1, precision), meta, rows)


@pytest.fixture(scope="session")
def tables(tmp_path_factory) -> Path:
    """The digits CPU latency table folder the search and finalize tests read: written with chosen costs
    (:func:`write_table`), never profiled in the session, so what a search finds feasible never depends on the
    machine's load. Profiling itself is tested in tests/latency/."""
    folder = tmp_path_factory.mktemp("latency_tables")
    write_table(folder)
    return folder


@pytest.fixture(scope="session")
def table_writer() -> Callable[..., Any]:
    """:func:`write_table`, for tests that write a table of their own (costs, drift speeds, model)."""
    return write_table


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """Random base weights for the digits architecture: the search and finalize tests check mechanics; the
    pretrained model's accuracy is tested where it is made (test_pretrain)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "digits.pt"
    torch.save(create_model("digits").state_dict(), path)
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts a server (a fixture below) must say so with the ``server`` marker."""
    for item in items:
        if {"postgres", "stoppable_postgres", "sshd"} & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("server") is None:
            raise pytest.UsageError(f"{item.nodeid} starts a server: mark it @pytest.mark.server")
