"""The drift reference: one fixed graph timed in every runner call, so that calls made minutes apart can be put
on one speed scale.

A shared machine's speed drifts by tens of percent within minutes (benchmarks/RESULTS.md#claim-drift): a table's
kinds are measured one call after another, and a whole model is measured later still, so each saw a different
machine. Every call of a profile, a validation or a finalize measurement therefore also times the model's dense
backbone (the ``block`` chain at every token: a fixed graph of the geometry, and the bulk of any model's time)
interleaved with its own graphs. The table keeps each row's call reference (column ``ref_ms``); the predictor
scales every row to the table's reference speed (the median of its rows' references), and a measurement is
reported both as measured and at the table's speed: ``measured x table reference / call reference``.
A device whose speed does not drift (a phone with pinned clocks, a quiet board) gets a factor near 1.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch.nn as nn

from ..models import geometry
from .artefacts import for_points
from .components import Point, component_graphs
from .devices import Artefact, Device, MeasureSettings
from .precision import DEFAULT

logger = logging.getLogger(__name__)

NAME = "__reference__"
KIND = "reference"  # its files are named after it, so they never clash with the block kind's beside them


def point(model: nn.Module) -> Point:
    g = geometry(model)
    return Point(KIND, g.num_prefix_tokens + g.num_patches)


@dataclass
class Reference:
    """The reference artefact of ``model``'s geometry for one device, exported once into its own folder."""

    artefact: Artefact
    folder: Path

    @classmethod
    def build(cls, device: Device, model: nn.Module, batch: int, precision: str = DEFAULT) -> "Reference":
        """The reference in ``precision``, the precision of the graphs it is timed beside."""
        folder = Path(tempfile.mkdtemp(prefix="vitsearch-reference-"))
        net = copy.deepcopy(model)  # component_graphs patches and re-modes its model; the caller's stays as it is
        graph = dataclasses.replace(component_graphs(net, batch)["block"], kind=KIND)
        (artefact,) = for_points(device.needs, graph, [point(net)], folder, precision)
        artefact.name = NAME
        return cls(artefact, folder)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def measure(device: Device, artefacts: Sequence[Artefact], settings: MeasureSettings,
            reference: Reference | None) -> Iterator[tuple[dict[str, Any], float | None]]:
    """``device.measure`` with the reference first in the same call: yields each of the call's own events with
    the reference's median (ms) in that call, None where there is no reference or it failed. Every transport
    reports results in artefact order, so the reference's comes before any other result."""
    ref_ms: float | None = None
    for event in device.measure([reference.artefact, *artefacts] if reference else artefacts, settings):
        if event.get("name") != NAME:
            yield event, ref_ms
        elif event["event"] == "result":
            ref_ms = float(event["median_ms"])
        else:
            logger.warning("the drift reference failed on %s: %s", device.name, event.get("message"))


def factor(table_ref_ms: float | None, call_ref_ms: float | None) -> float | None:
    """What turns a time measured in a call into the table's speed; None where either reference is missing."""
    return table_ref_ms / call_ref_ms if table_ref_ms and call_ref_ms else None
