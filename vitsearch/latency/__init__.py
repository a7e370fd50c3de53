"""Per-device latency lookup tables: profile a model's components on a device, predict any pruning config
from the table, and validate predictions against whole models measured end to end.

    table = vitsearch.latency.profile("cpu", model="deit_small_patch16_224", threads=2)
    Predictor(table).predict("METHOD:3=0.7,6=0.7,9=0.7").total_ms  # METHOD: a name in pruning.METHODS
    vitsearch.latency.validate(table, 30).summary["median_abs_error_pct"]
"""
from .components import GridSpec, Point, components_of, grid
from .devices import Artefact, Device, MeasureSettings, open_device
from .perftool import parse_perf_test
from .registry import DeviceSpec, registry, resolve
from .predict import Prediction, Predictor, predict
from .profile import profile
from .table import LatencyTable, load, table_path
from .validate import Validation, random_configs, validate

__all__ = ["Artefact", "Device", "DeviceSpec", "GridSpec", "LatencyTable", "MeasureSettings", "Point", "Prediction",
           "Predictor", "Validation", "components_of", "grid", "load", "open_device",
           "parse_perf_test", "predict", "profile", "random_configs", "registry", "resolve", "table_path", "validate"]
