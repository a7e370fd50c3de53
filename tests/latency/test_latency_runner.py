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


def test_the_reference_is_timed_before_every_timed_call_of_the_others():
    """The drift reference has no turn of its own: one reference call precedes each timed call (after the
    reference's own warm-up once per pass), and each model's result carries the median of its paired ones."""
    order: list[str] = []

    def make_call(name: str):
        return lambda: order.append(name)

    ref = runner.REFERENCE
    cfg = {"passes": 2, "warmup": 1, "min_repeats": 2, "max_repeats": 8, "max_seconds": 10.0, "rel_tol": 1.0}
    events = list(runner.time_interleaved([(ref, ref), ("a", "a"), ("b", "b")], make_call, cfg))
    one_pass = [ref] + ["a"] + [ref, "a"] * 4 + ["b"] + [ref, "b"] * 4  # warm-ups unpaired, then pairs
    assert order == one_pass * 2
    assert [(e["name"], e["repeats"]) for e in events] == [(ref, 16), ("a", 8), ("b", 8)]
    assert all(e["ref_ms"] >= 0 for e in events[1:]) and "ref_ms" not in events[0]


def test_a_reference_alone_is_timed_as_a_model():
    ref = runner.REFERENCE
    cfg = {"passes": 1, "warmup": 0, "min_repeats": 3, "max_repeats": 3, "max_seconds": 1.0, "rel_tol": 1.0}
    events = list(runner.time_interleaved([(ref, ref)], lambda name: (lambda: None), cfg))
    assert [(e["name"], e["repeats"]) for e in events] == [(ref, 3)]
