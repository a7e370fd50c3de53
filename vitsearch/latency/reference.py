"""The drift reference: one fixed graph timed beside every measurement, so that measurements made minutes
apart can be put on one speed scale.

A shared machine's speed drifts by tens of percent within minutes (benchmarks/RESULTS.md, issue 3): a table's
kinds are measured one after another, and a whole model is measured later still, so each saw a different
machine. Every call of a profile, a validation or a finalize measurement therefore also sends the reference (one
transformer block of the model at every token: a fixed graph of the geometry), which the runner times just
before each timed call of every other graph (``runner.REFERENCE``); each result carries the median of its
paired reference calls (``ref_ms``). The table keeps it per row; the predictor scales every row to the table's
reference speed (the median of its rows' references), and a measurement is reported both as measured and at the
table's speed: ``measured x table reference / paired reference``. A transport that cannot pair (adb's perf
tool) times the reference once in the call, and that stands for every graph of the call. A device whose speed
does not drift (a phone with pinned clocks, a quiet board) gets factors near 1.
"""
from __future__ import annotations

import copy
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch.nn as nn

import torch

from .artefacts import for_points
from .components import ComponentGraph, Point
from .devices import Artefact, Device, MeasureSettings
from .runner import REFERENCE as NAME

logger = logging.getLogger(__name__)

KIND = "reference"  # its files are named after it, so they never clash with the block kind's beside them


def point(model: nn.Module) -> Point:
    from ..models import geometry

    g = geometry(model)
    return Point(KIND, g.num_prefix_tokens + g.num_patches)


@dataclass
class Reference:
    """The reference artefact of ``model``'s geometry for one device, exported once into its own folder."""

    artefact: Artefact
    folder: Path

    @classmethod
    def build(cls, device: Device, model: nn.Module, batch: int) -> "Reference":
        folder = Path(tempfile.mkdtemp(prefix="vitsearch-reference-"))
        block = nn.Sequential(copy.deepcopy(model.blocks[0])).eval()  # one block: cheap to pair with every call
        dim = int(model.embed_dim)
        example = torch.randn(batch, point(model).n, dim, generator=torch.Generator().manual_seed(0))
        graph = ComponentGraph(KIND, block, 1, lambda p: (example,), ((),))
        (artefact,) = for_points(device.needs, graph, [point(model)], folder)
        artefact.name = NAME
        return cls(artefact, folder)

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def measure(device: Device, artefacts: Sequence[Artefact], settings: MeasureSettings,
            reference: Reference | None) -> Iterator[tuple[dict[str, Any], float | None]]:
    """``device.measure`` with the reference in the same call: yields each of the call's own events with the
    reference's median (ms) paired with it, or in the call where the transport cannot pair; None where there is
    no reference or it failed."""
    if reference is None:
        for event in device.measure(artefacts, settings):
            yield event, None
        return
    ref_ms: float | None = None
    seen, held = False, []
    for event in device.measure([reference.artefact, *artefacts], settings):
        if event.get("name") == NAME:
            seen = True
            if event["event"] == "result":
                ref_ms = float(event["median_ms"])
            else:
                logger.warning("the drift reference failed on %s: %s", device.name, event.get("message"))
            yield from ((e, ref_ms) for e in held)
            held = []
        elif event["event"] == "runtime" or seen or "ref_ms" in event:
            yield event, event.get("ref_ms", ref_ms)
        else:  # a transport that reports out of order: hold results until the reference is known
            held.append(event)
    yield from ((e, ref_ms) for e in held)


def factor(table_ref_ms: float | None, call_ref_ms: float | None) -> float | None:
    """What turns a time measured in a call into the table's speed; None where either reference is missing."""
    if not table_ref_ms or not call_ref_ms or math.isnan(table_ref_ms) or math.isnan(call_ref_ms):
        return None
    return table_ref_ms / call_ref_ms
