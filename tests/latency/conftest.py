"""Shared fixtures for the latency tests: a tiny ViT geometry, a coarse grid, quick measurement settings."""
from __future__ import annotations

import os
import shutil

import pytest

from vitsearch.latency import GridSpec, MeasureSettings

# 32 px images in 8 px patches: 16 patch tokens + the class token, two blocks. Small enough that a whole
# profile on the coarse grid takes seconds on two cores.
TINY_MODEL = "vit_tiny_patch16_224"
TINY_KWARGS = {"img_size": 32, "patch_size": 8, "depth": 2}
TINY_GRID = GridSpec(block_points=4, head_points=2, select_rows=3, select_cols=2, stage_points=2)
QUICK = MeasureSettings(warmup=1, min_repeats=3, max_repeats=6, max_seconds=0.5)


def require_binary(path_or_name: str, package: str) -> str:
    """The binary's path; skips with a reason when it is missing, but fails in CI, where it must be installed."""
    found = shutil.which(path_or_name) or (path_or_name if os.path.exists(path_or_name) else None)
    if found is None:
        message = f"{path_or_name} is missing: apt-get install {package}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def tiny_table(tmp_path_factory):
    """One real profile of the tiny model on the local onnxruntime CPU device, shared by the tests that read it."""
    from vitsearch.latency import profile

    tables = tmp_path_factory.mktemp("tables")
    return profile("cpu", model=TINY_MODEL, model_kwargs=TINY_KWARGS, threads=1, tables=tables,
                   grid_spec=TINY_GRID, settings=QUICK, progress=False)
