"""The runner's interleaved passes: every model is timed in each pass, in turn, and its samples pooled."""
from __future__ import annotations

from vitsearch.latency import runner


def test_passes_interleave_models_and_pool_their_samples():
    order: list[str] = []
    built: list[str] = []

    def make_call(name: str):
        built.append(name)
        return lambda: order.append(name)

    cfg = {"passes": 3, "warmup": 1, "min_repeats": 2, "max_repeats": 12, "max_seconds": 10.0, "rel_tol": 1.0}
    events = list(runner.time_interleaved([("a", "a"), ("b", "b")], make_call, cfg))
    assert built == ["a", "b"] * 3  # a fresh call (session) per pass
    # each pass: 1 warm-up + 2 rounds of 2 (the second round is stable with rel_tol 1.0)
    assert order == (["a"] * 5 + ["b"] * 5) * 3
    assert [(e["event"], e["name"], e["repeats"]) for e in events] == [("result", "a", 12), ("result", "b", 12)]


def test_a_failing_model_is_reported_once_and_the_others_still_measured():
    def make_call(name: str):
        if name == "bad":
            raise RuntimeError("cannot load")
        return lambda: None

    cfg = {"passes": 2, "warmup": 0, "min_repeats": 2, "max_repeats": 4, "max_seconds": 1.0, "rel_tol": 1.0}
    events = list(runner.time_interleaved([("bad", "bad"), ("ok", "ok")], make_call, cfg))
    assert [(e["event"], e["name"]) for e in events] == [("error", "bad"), ("result", "ok")]
    assert "cannot load" in events[0]["message"]
