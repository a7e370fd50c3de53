"""Shared fixtures: tiny timm ViTs (no downloads) and the trained digits base model.

The base model comes from the real cache (``$VITSEARCH_CACHE`` or ``~/.cache/vitsearch``): a fresh clone trains it
once (about a minute), later runs load it. Tests that exercise the cache itself use their own tmp folders.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from vitsearch.models import create_model


@pytest.fixture(scope="session")
def digits_base() -> tuple[torch.nn.Module, dict]:
    """(model, meta) of the trained digits base model, trained into the cache if missing."""
    from vitsearch.pretrain import base_model

    return base_model()


@pytest.fixture
def tiny_vit() -> torch.nn.Module:
    """vit_tiny at 32x32 input in 8x8 patches: 16 patch tokens, random weights, built in well under a second."""
    torch.manual_seed(0)
    return create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=5)


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
