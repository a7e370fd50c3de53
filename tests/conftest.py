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
