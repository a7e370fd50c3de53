"""onnxruntime's ``onnxruntime_perf_test`` (the phone's timing tool): its command line and its output."""
from __future__ import annotations

import re
import shlex
from typing import Any

from ..errors import VitsearchError

_PERF_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_PERF_LATENCY = re.compile(r"^(Min|Max|P50|P90|P95|P99|P999) Latency(?: is|:)\s*" + _PERF_NUMBER + r"\s*s", re.M)
_PERF_COUNT = re.compile(r"^(?:Total inference requests|Total iterations|Runs)\s*:\s*(\d+)", re.M)
_PERF_AVERAGE = re.compile(r"^Average (?:inference )?time cost\s*:\s*" + _PERF_NUMBER + r"\s*ms", re.M)


def parse_perf_test(text: str) -> dict[str, Any]:
    """Statistics from ``onnxruntime_perf_test -s`` output (percentiles in seconds) in milliseconds.

    Reads both the current format (``P50 Latency: 0.0281 s``, ``Total inference requests: 100``, ``Average
    inference time cost: 28.1 ms``) and the older one (``P50 Latency is 0.0281sec``, ``Total iterations:100``).
    """
    lat = {k: float(v) * 1e3 for k, v in _PERF_LATENCY.findall(text)}
    count, average = _PERF_COUNT.search(text), _PERF_AVERAGE.search(text)
    if "P50" not in lat or count is None:
        tail = " | ".join(text.strip().splitlines()[-3:]) or "no output"
        raise VitsearchError(f"could not read onnxruntime_perf_test's statistics (no P50 / request count): {tail}")
    return {"median_ms": lat["P50"], "p10_ms": None, "p90_ms": lat.get("P90"), "min_ms": lat.get("Min"),
            "max_ms": lat.get("Max"), "mean_ms": float(average.group(1)) if average else None, "std_ms": None,
            "repeats": int(count.group(1)), "warmup": 1, "stable": None}


SPINNING_UNSET = "not set: the perf tool has no -C option (its build's default, usually spinning)"


def sets_session_config(usage: str) -> bool:
    """Whether ``onnxruntime_perf_test -h`` lists ``-C`` (session config entries), the option that sets the
    spinning policy; older builds lack it."""
    return re.search(r"-C\b.{0,40}session config", usage, re.S | re.I) is not None


def perf_test_command(perf: str, model: str, threads: int, repeats: int, spinning: bool | None) -> str:
    """The perf tool's command line for one model: ``-x`` intra-op threads, ``-C`` the spinning policy (the
    runner's key; None: leave it to the tool), fixed-count mode with statistics, inputs generated (``-I``)."""
    from .runner import SPINNING_KEY  # the runner imports onnxruntime: only where a device measures

    config = "" if spinning is None else f"-C {shlex.quote(f'{SPINNING_KEY}|{int(spinning)}')} "
    return (f"{shlex.quote(perf)} -I -s -e cpu -m times -r {repeats} -x {threads} -y 1 {config}"
            f"{shlex.quote(model)}")
