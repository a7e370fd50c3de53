"""Does the table predict whole models? Random pruned configs measured end to end against their prediction.

Each config is applied to the table's model, exported whole (static shapes, as deployed; in the table's precision,
int8 quantized as its rows' graphs were) and measured on the table's device with the table's threads through the same runner. Saved beside the table:
``<table>.validation.csv`` (one row per config), ``.validation.json`` (summary and provenance) and
``.validation.png`` (predicted vs measured scatter).

Every runner call also times the drift reference (:mod:`.reference`), so each model is reported as measured and
at the table's reference speed; the summary compares the prediction with both (``drift_corrected``: the latter).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .. import __version__
from ..errors import RunFailure, VitsearchError, naming
from ..models import ModelGeometry, create_model
from ..pruning import PruneConfig, apply, method_of, pruning_methods, token_schedule
from ..stats import plot_scatter, scatter_info, summarise
from .devices import Artefact, MeasureSettings, open_device
from .predict import Predictor
from .reference import Reference, factor as drift_factor
from .reference import measure as measure_with_reference
from .table import LatencyTable

logger = logging.getLogger(__name__)


def random_configs(count: int, g: ModelGeometry, *, seed: int = 0, methods: Sequence[str] | None = None,
                   ratios: tuple[float, float] = (0.3, 0.95), max_selectors: int = 3) -> list[PruneConfig]:
    """``count`` distinct configs alternating between ``methods``: 1..max_selectors selectors at distinct blocks
    in [1, depth - 1], keep ratios uniform in ``ratios`` (a method whose setting is a token count: a count up to
    that share of half the patches), each pruning at least one token; a draw the method refuses is drawn again."""
    methods = methods or pruning_methods()
    rng = random.Random(seed)
    out: list[PruneConfig] = []
    seen: set[str] = set()
    for attempt in range(count * 100):
        if len(out) == count:
            break
        method = methods[len(out) % len(methods)]
        blocks = sorted(rng.sample(range(1, g.depth), rng.randint(1, min(max_selectors, g.depth - 1))))
        if method_of(method).setting == "count":
            config = PruneConfig(method, {b: max(1, round((1 - rng.uniform(*ratios)) * g.num_patches / 2))
                                          for b in blocks})
        else:
            config = PruneConfig(method, {b: round(rng.uniform(*ratios), 2) for b in blocks})
        try:
            sched = token_schedule(config, depth=g.depth, num_patches=g.num_patches, num_prefix=g.num_prefix_tokens)
        except VitsearchError:  # e.g. more tokens merged than a block holds
            continue
        if str(config) in seen or not sched.selectors:
            continue
        seen.add(str(config))
        out.append(config)
    if len(out) < count:
        raise VitsearchError(f"could only draw {len(out)} distinct pruning configs for geometry {g.key}")
    return out


@dataclass
class Validation:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    paths: dict[str, Path]


def in_precision(path: Path, precision: str, x: torch.Tensor) -> Path:
    """The exported whole model ``path`` in the table's ``precision`` (int8 calibrated on random images like ``x``:
    latency does not depend on the scales, :mod:`.precision`), so it is timed as the table's rows were."""
    import onnx

    from . import precision as precision_mod

    if precision == precision_mod.DEFAULT:
        return path
    name = onnx.load(str(path), load_external_data=False).graph.input[0].name
    gen = torch.Generator().manual_seed(1)
    feeds = [{name: torch.randn(x.shape, generator=gen).numpy()} for _ in range(2)]
    return precision_mod.convert(path, path.with_name(f"{path.stem}-{precision}.onnx"), precision, feeds)


def validate(table: LatencyTable, count: int = 30, *, seed: int = 0, settings: MeasureSettings | None = None,
             tables: str = "latency_tables", model_kwargs: Mapping[str, Any] | None = None, chunk: int = 6,
             progress: bool = True) -> Validation:
    """Measure ``count`` random configs end to end on the table's device and compare with the table."""
    from tqdm.auto import tqdm

    from ..export import export_onnx

    meta = table.meta
    dev = open_device(meta["device"]["name"], tables)
    if settings is None:  # the table's own; a table older than the spinning option was measured spinning
        settings = MeasureSettings(**{"spinning": True, **meta.get("settings", {})})
    settings = replace(settings, threads=int(meta["threads"]))
    predictor = Predictor(table)
    torch.manual_seed(0)
    net = create_model(meta["model"], **dict(model_kwargs or {}))
    reference = (Reference.build(dev, net, table.batch, table.precision) if predictor.reference_ms is not None
                 else None)
    if count < 2:
        raise VitsearchError(f"validation needs at least 2 configs to rank (Kendall tau), got {count}")
    configs = random_configs(count, table.geometry, seed=seed)
    batch = table.batch
    g = table.geometry
    x = torch.randn(batch, g.in_chans, *g.img_size)
    rows: list[dict[str, Any]] = []
    runtime: dict[str, Any] = {}
    folder = Path(tempfile.mkdtemp(prefix="vitsearch-validate-"))
    bar = tqdm(total=len(configs), desc=f"validating on {dev.name}", unit="model", disable=not progress)
    try:
        for start in range(0, len(configs), chunk):
            arts, by_name = [], {}
            for config in configs[start:start + chunk]:
                name = f"model-{len(by_name) + start:03d}"
                apply(net, config)
                if dev.needs == "torch":
                    import copy

                    arts.append(Artefact(name, module=copy.deepcopy(net), inputs=(x,)))
                else:
                    path = export_onnx(net, (x,), folder / f"{name}.onnx", check=False)
                    arts.append(Artefact(name, onnx=in_precision(path, table.precision, x)))
                by_name[name] = config
            for event, ref_ms in measure_with_reference(dev, arts, settings, reference):
                if event["event"] == "runtime":
                    runtime = {k: v for k, v in event.items() if k != "event"}
                elif event["event"] == "error":
                    raise RunFailure(f"measuring {by_name[event['name']]} on {dev.name} failed: {event['message']}")
                else:
                    config = by_name[event["name"]]
                    pred = predictor.predict(config)
                    low = event.get("p10_ms")
                    scale = drift_factor(predictor.reference_ms, ref_ms)
                    rows.append({"config": str(config), "method": config.method, "predicted_ms": pred.total_ms,
                                 "measured_ms": event["median_ms"], "measured_p90_ms": event.get("p90_ms"),
                                 "error_pct": 100.0 * (pred.total_ms - event["median_ms"]) / event["median_ms"],
                                 "reference_ms": ref_ms,
                                 "measured_at_table_speed_ms": None if scale is None else event["median_ms"] * scale,
                                 "measured_p10_ms": event["min_ms"] if low is None else low,
                                 "selection_ms": pred.selection_ms,
                                 "selection_share": pred.selection_ms / pred.total_ms})
                    bar.update(1)
            for f in folder.iterdir():
                f.unlink()
    finally:
        bar.close()
        shutil.rmtree(folder, ignore_errors=True)
        if reference is not None:
            reference.close()
    at_speed = [r["measured_at_table_speed_ms"] for r in rows]
    summary = {**summarise([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]),
               "drift_corrected": summarise([r["predicted_ms"] for r in rows], at_speed)
               if rows and None not in at_speed else None,
               "reference_ms": predictor.reference_ms,
               "selection_share_median": {m: float(np.median([r["selection_share"] for r in rows if r["method"] == m]))
                                          for m in sorted({r["method"] for r in rows})},
               "table": str(table.path), "device": meta["device"], "runtime": runtime, "threads": meta["threads"],
               "batch": batch, "geometry": meta["geometry"], "seed": seed, "settings": asdict(settings),
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "vitsearch_version": __version__}
    return Validation(rows, summary, save(table.path, rows, summary))


def validation_paths(table_path: Path) -> dict[str, Path]:
    """Where a table's validation lives: ``<table>.validation.{csv,json,png}`` beside it."""
    stem = Path(table_path).with_suffix("")
    return {ext: stem.with_name(f"{stem.name}.validation.{ext}") for ext in ("csv", "json", "png")}


def save(table_path: Path, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> dict[str, Path]:
    import csv

    paths = validation_paths(table_path)
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with naming(paths["json"]):
        paths["json"].write_text(json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n")
    ax = plot_scatter(scatter_info(rows), summary)
    ax.figure.tight_layout()
    ax.figure.savefig(paths["png"], dpi=120)
    return paths


# A search stays this far under its budget when the table under-predicts whole models: the 90th percentile of
# measured / predicted over the table's validation, so that about nine in ten picks measure within the budget.
HEADROOM_QUANTILE = 0.9


@dataclass(frozen=True)
class Headroom:
    """How much a search allows for the table's own error: a config fits when prediction x (1 + fraction) is
    within the budget. ``source`` says where the fraction came from, for the study's record and its log line."""

    fraction: float
    source: str

    def limit_ms(self, budget_ms: float) -> float:
        """The predicted latency a config may have under ``budget_ms``."""
        return budget_ms / (1.0 + self.fraction)

    def to_dict(self) -> dict[str, Any]:
        return {"fraction": round(self.fraction, 6), "source": self.source}


def measured_headroom(table_path: Path, quantile: float = HEADROOM_QUANTILE) -> Headroom | None:
    """The headroom a table's validation calls for (0 where it over-predicts), or None where the table has no
    validation newer than itself. Measurements at the table's speed where the drift reference gave them."""
    import csv

    path = validation_paths(table_path)["csv"]
    if not path.is_file() or path.stat().st_mtime < Path(table_path).stat().st_mtime:
        return None  # never validated, or validated before it was profiled again
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    ratios = [float(r.get("measured_at_table_speed_ms") or r["measured_ms"]) / float(r["predicted_ms"]) for r in rows]
    if not ratios:
        return None
    q = float(np.quantile(ratios, quantile))
    return Headroom(max(0.0, q - 1.0), f"{path.name}: {len(ratios)} models measured, {100 * quantile:.0f}th "
                                       f"percentile of measured/predicted {q:.3f}")
