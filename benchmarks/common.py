"""What every benchmark shares: its own section of benchmarks/RESULTS.md, and waiting for a quiet machine."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
logger = logging.getLogger("benchmark")


def write_section(name: str, text: str) -> None:
    """Replace (or append) the section ``name`` of RESULTS.md, leaving the other benchmarks' sections alone."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = f"{start}\n{text.rstrip()}\n{end}\n"
    if start in old and end in old:
        new = old[:old.index(start)] + section + old[old.index(end) + len(end):].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(new)


def wait_for_quiet(threshold: float, limit: float) -> float:
    """Wait until the 1-minute load average is below ``threshold`` (at most ``limit`` s); return the load."""
    start = time.monotonic()
    load = os.getloadavg()[0]
    while load >= threshold and time.monotonic() - start < limit:
        time.sleep(10)
        load = os.getloadavg()[0]
    if load >= threshold:
        logger.warning("load average still %.2f after %.0f s: measuring anyway (results will be noisier)", load, limit)
    return load
