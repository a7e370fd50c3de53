#!/usr/bin/env python3
"""Standalone latency runner: times ONNX models with onnxruntime and prints one JSON line per model.

This file is copied as-is to remote boards and run there with the board's ``python3`` (it needs only the
standard library, numpy and onnxruntime; it must not import vitsearch). The local device runs the very same
file, so every transport measures the same way.

    python3 runner.py MANIFEST.json

The manifest (JSON)::

    {"threads": 2, "spinning": false, "provider": "cpu", "warmup": 5, "min_repeats": 10, "max_repeats": 300,
     "max_seconds": 3.0, "rel_tol": 0.01, "passes": 3, "models": [{"name": "block-n197", "path": "block-n197.onnx"}, ...]}

``path`` is relative to the manifest's folder, or absolute. Output, one JSON object per line on stdout:
``{"event": "runtime", ...}`` first (runtime version, host, cores, the threads and spinning policy used), then
per model either ``{"event": "result", "name": ..., "median_ms": ..., "p10_ms": ..., "p90_ms": ...,
"mean_ms": ..., "std_ms": ..., "min_ms": ..., "repeats": ..., "warmup": ..., "stable": true}`` or
``{"event": "error", "name": ..., "message": ...}``. The exit status is 1 if any model failed, 3 (with the
reason on stderr) if onnxruntime here cannot run on the manifest's provider: it never measures on another one.

Measurement: inputs are bound once (IOBinding) so no call copies tensors into or out of Python, which keeps
the per-call overhead small and equal for every graph; ``warmup`` calls are thrown away; then calls are timed
in rounds of ``min_repeats`` until the median of all samples moves by less than ``rel_tol`` between two
rounds (stable), ``max_repeats`` samples are taken, or ``max_seconds`` have passed.

With ``"passes": P`` (default 1) the models are timed in P interleaved passes (each with 1/P of the repeat and
time budget, a fresh session and its own warm-up) and every model's samples are pooled. On a shared machine
speed drifts by tens of percent within minutes; interleaving spreads each model's samples over the whole call,
so models measured in one call see the same machine instead of whatever moment their turn came.

Threads: ``"threads": 0`` uses every core of the machine and says so in the runtime event; more threads than
cores is refused (exit status 2, the reason on stderr). ``"spinning"`` (default false) sets onnxruntime's
``session.intra_op.allow_spinning``: see :data:`SPINNING_KEY` for why it is off.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np
import onnxruntime as ort

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()  # the caller reads lines as they come, to save each result at once


# Thread isolation, chosen by measurement (benchmarks/thread_isolation.py,
# benchmarks/RESULTS.md#claim-thread-isolation; 2 cores, load ~6 from other work): one live session at a time
# (time_interleaved drops each pass's session before it builds the next) repeated every pruned/dense ratio within 0.06
# at two threads, where keeping every session alive gave 0.24-0.27, spinning or not; and with spinning off two threads
# timed the dense DeiT-S at 267-282 ms against 445-527 ms spinning, since a spinning worker holds a core the other
# work then preempts. So both: one live session, and onnxruntime's intra-op spinning off unless a manifest asks for
# it.
SPINNING_KEY = "session.intra_op.allow_spinning"


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask where the OS has one, as in a container)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_for(requested: int, cpus: int, host: str) -> int:
    """The intra-op thread count to measure with: ``requested``, or every core for 0. More threads than cores
    would time the OS scheduler, not the graph: refused (ValueError, a message for people)."""
    if requested < 0 or requested > cpus:
        raise ValueError(f"--threads {requested} is not possible on {host}, which has {cpus} cores: use 1 to {cpus} "
                         f"(0: all {cpus})")
    return requested or cpus


class ProviderMissing(Exception):
    """The runtime cannot run on the provider the manifest names: fatal for the whole call, so that nothing is
    measured on another provider under this one's name."""


def check_provider(provider: str) -> None:
    """Before any session: this onnxruntime build must offer the provider's execution provider."""
    wanted, available = PROVIDERS[provider][0], ort.get_available_providers()
    if wanted not in available:
        raise ProviderMissing(
            f"provider {provider!r} needs onnxruntime's {wanted}, but onnxruntime {ort.__version__} on "
            f"{platform.node()} offers only {', '.join(available)}: install the onnxruntime build for it "
            "(onnxruntime-gpu with a matching CUDA for cuda), or measure on the cpu provider")


def session(path: str, cfg: dict) -> ort.InferenceSession:
    """An onnxruntime session with the manifest's ``threads``, ``spinning`` and ``provider``."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(cfg.get("threads", 0))
    so.inter_op_num_threads = 1
    so.add_session_config_entry(SPINNING_KEY, "1" if cfg.get("spinning") else "0")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    provider = cfg.get("provider", "cpu")
    sess = ort.InferenceSession(path, so, providers=PROVIDERS[provider])
    # onnxruntime falls back to the CPU without an error when a provider fails to load (missing CUDA libraries)
    if sess.get_providers()[0] != PROVIDERS[provider][0]:
        raise ProviderMissing(f"provider {provider!r}: onnxruntime created the session on {sess.get_providers()} "
                              f"instead of {PROVIDERS[provider][0]} (its libraries did not load): fix the "
                              "installation, or measure on the cpu provider")
    return sess


def inputs_for(sess: ort.InferenceSession, seed: int = 0) -> dict:
    """Random normal floats; integer and boolean inputs get zeros (always valid indices)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        if any(not isinstance(d, int) for d in i.shape):
            raise ValueError(f"input {i.name} has a dynamic shape {i.shape}: the runner times static graphs")
        dtype = _NUMPY.get(i.type)
        if dtype is None:
            raise ValueError(f"input {i.name} has unsupported type {i.type}")
        if np.issubdtype(dtype, np.floating):
            feeds[i.name] = rng.standard_normal(i.shape).astype(dtype)
        else:
            feeds[i.name] = np.zeros(i.shape, dtype=dtype)
    return feeds


def summarise(samples_ms: list, warmup: int, stable: bool, seconds: float) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    p10, med, p90 = np.percentile(a, [10, 50, 90])
    return {"median_ms": float(med), "p10_ms": float(p10), "p90_ms": float(p90), "mean_ms": float(a.mean()),
            "std_ms": float(a.std()), "min_ms": float(a.min()), "repeats": int(a.size), "warmup": warmup,
            "stable": bool(stable), "seconds": round(seconds, 3)}


def sample_calls(call, warmup: int, min_repeats: int, max_repeats: int, max_seconds: float,
                 rel_tol: float) -> tuple:
    """The timed samples (ms) of ``call()`` and whether their median became stable."""
    start = time.perf_counter()
    for _ in range(warmup):
        call()
    samples: list = []
    previous = None
    while True:
        for _ in range(max(1, min_repeats)):
            t0 = time.perf_counter_ns()
            call()
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        median = float(np.median(samples))
        if previous is not None and abs(median - previous) <= rel_tol * median:
            return samples, True
        previous = median
        if len(samples) >= max_repeats or time.perf_counter() - start >= max_seconds:
            return samples, False


def time_interleaved(items: list, make_call, cfg: dict):
    """Time every ``(name, source)`` of ``items`` in ``cfg["passes"]`` interleaved passes (module docstring);
    ``make_call(source)`` builds a fresh callable for each pass. Yields one result or error event per name."""
    passes = max(1, int(cfg.get("passes", 1)))
    warmup, min_repeats = int(cfg.get("warmup", 5)), int(cfg.get("min_repeats", 10))
    max_repeats = max(min_repeats, -(-int(cfg.get("max_repeats", 300)) // passes))
    max_seconds, rel_tol = float(cfg.get("max_seconds", 3.0)) / passes, float(cfg.get("rel_tol", 0.01))
    pooled = {name: [] for name, _ in items}
    stable = dict.fromkeys(pooled, True)
    seconds = dict.fromkeys(pooled, 0.0)
    for _ in range(passes):
        for name, source in items:
            if name not in pooled:
                continue
            t0 = time.perf_counter()
            try:
                samples, ok = sample_calls(make_call(source), warmup, min_repeats, max_repeats, max_seconds, rel_tol)
            except ProviderMissing:
                raise
            except Exception as e:  # report and go on: one bad graph must not lose the others' measurements
                del pooled[name]
                yield {"event": "error", "name": name, "message": f"{type(e).__name__}: {e}"}
                continue
            pooled[name] += samples
            stable[name] = stable[name] and ok
            seconds[name] += time.perf_counter() - t0
    for name, samples in pooled.items():
        yield {"event": "result", "name": name, **summarise(samples, warmup, stable[name], seconds[name])}


def session_call(path: str, cfg: dict):
    """A fresh session for ``path`` with inputs and outputs bound once; returns its run call."""
    sess = session(path, cfg)
    binding = sess.io_binding()
    for name, value in inputs_for(sess).items():
        binding.bind_cpu_input(name, value)
    for out in sess.get_outputs():
        binding.bind_output(out.name)
    return lambda: sess.run_with_iobinding(binding)


def runtime_info(cfg: dict) -> dict:
    return {"event": "runtime", "runtime": "onnxruntime", "version": ort.__version__,
            "provider": cfg.get("provider", "cpu"), "available_providers": ort.get_available_providers(),
            "threads": int(cfg["threads"]), "spinning": "on" if cfg.get("spinning") else "off",
            "host": platform.node(), "machine": platform.machine(), "processor": platform.processor(),
            "cpus": cpu_count(), "python": platform.python_version(), "numpy": np.__version__}


def main(argv: list) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: runner.py MANIFEST.json\n")
        return 2
    with open(argv[1]) as f:
        cfg = json.load(f)
    root = os.path.dirname(os.path.abspath(argv[1]))
    if cfg.get("provider", "cpu") not in PROVIDERS:
        sys.stderr.write(f"unknown provider {cfg.get('provider')!r}: expected one of {sorted(PROVIDERS)}\n")
        return 2
    try:
        cfg["threads"] = threads_for(int(cfg.get("threads", 0)), cpu_count(), platform.node())
    except ValueError as e:
        sys.stderr.write(f"{e}\n")
        return 2
    items = [(item["name"], os.path.join(root, item["path"])) for item in cfg["models"]]
    failed = 0
    try:
        check_provider(cfg.get("provider", "cpu"))
        emit(runtime_info(cfg))
        for event in time_interleaved(items, lambda path: session_call(path, cfg), cfg):
            failed += event["event"] == "error"
            emit(event)
    except ProviderMissing as e:
        sys.stderr.write(f"{e}\n")
        return 3
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
