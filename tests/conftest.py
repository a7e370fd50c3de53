"""Shared fixtures: one tiny registered timm ViT (no downloads) and the trained digits base model.

No test writes outside a temporary folder: ``$VITSEARCH_CACHE`` points at a session temporary folder, so the
digits base model is trained there once per session (about a minute on two cores) and never touches the user's
cache. Tests that exercise the cache itself use their own tmp folders.

Markers (registered in pyproject.toml): ``slow`` (real searches and training, minutes) and ``server`` (starts
PostgreSQL, sshd or Chromium; skips where the binaries are missing, fails in CI).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

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


@pytest.fixture(scope="session")
def tables(tmp_path_factory) -> Path:
    """A real but coarse CPU latency table for the digits geometry, profiled once for the search and finalize
    tests (they read it; none of them profiles)."""
    from vitsearch.latency.components import GridSpec
    from vitsearch.latency.devices import MeasureSettings
    from vitsearch.latency.profile import profile

    folder = tmp_path_factory.mktemp("latency_tables")
    profile("cpu", model="digits", tables=folder, progress=False,
            grid_spec=GridSpec(block_points=6, head_points=3, select_rows=4, select_cols=2, stage_points=3),
            settings=MeasureSettings(warmup=2, min_repeats=5, max_repeats=20, max_seconds=0.5))
    return folder


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
