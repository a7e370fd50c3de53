"""The latency budget: "30ms", "30 ms", "0.03s", "33.3ms" or "60%" (of the unpruned model on the device)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import VitsearchError

_UNITS_MS = {"ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3}


@dataclass(frozen=True)
class Budget:
    ms: float | None = None  # an absolute budget
    fraction: float | None = None  # or a fraction of the unpruned model's latency on the device

    def resolve(self, unpruned_ms: float) -> float:
        """The budget in milliseconds on a device where the unpruned model takes ``unpruned_ms``."""
        return self.ms if self.ms is not None else self.fraction * unpruned_ms

    def __str__(self) -> str:
        return f"{self.ms:g}ms" if self.ms is not None else f"{100 * self.fraction:g}%"


def parse_budget(text: "str | Budget") -> Budget:
    """The one parser for budgets; anything it cannot read is an error that shows the accepted forms."""
    if isinstance(text, Budget):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|us|µs|%)\s*", str(text).lower())
    if not m:
        raise VitsearchError(
            f"cannot read budget {text!r}: write a latency like '30ms', '0.03s', or a share of the unpruned "
            "model's latency on the device like '60%'")
    value, unit = float(m.group(1)), m.group(2)
    if value <= 0:
        raise VitsearchError(f"budget {text!r} must be positive")
    if unit == "%":
        if value > 100:
            raise VitsearchError(f"budget {text!r} is more than the unpruned model's latency: use at most 100%")
        return Budget(fraction=value / 100)
    return Budget(ms=value * _UNITS_MS[unit])
