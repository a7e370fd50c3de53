"""The runner's interleaved passes: every model is timed in each pass, in turn, and its samples pooled."""
from __future__ import annotations

import pytest

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


def _identity_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


@pytest.fixture
def no_cuda_provider():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider: the check under test cannot refuse it")


def test_the_runner_refuses_a_provider_this_onnxruntime_lacks(tmp_path, no_cuda_provider):
    """Nothing is measured (no runtime event, no result) when the manifest's provider is missing."""
    import json
    import subprocess
    import sys

    _identity_onnx(tmp_path / "m.onnx")
    (tmp_path / "manifest.json").write_text(json.dumps({"provider": "cuda", "models": [{"name": "m", "path": "m.onnx"}]}))
    done = subprocess.run([sys.executable, runner.__file__, str(tmp_path / "manifest.json")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 3 and done.stdout == ""
    assert "provider 'cuda' needs onnxruntime's CUDAExecutionProvider" in done.stderr and "Traceback" not in done.stderr


def test_a_session_that_fell_back_to_the_cpu_is_refused(tmp_path, no_cuda_provider):
    """onnxruntime itself only warns and runs on the CPU when the CUDA provider cannot be used."""
    path = str(_identity_onnx(tmp_path / "m.onnx"))
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):
        with pytest.raises(runner.ProviderMissing, match=r"created the session on \['CPUExecutionProvider'\]"):
            runner.session(path, 1, "cuda")
    assert runner.session(path, 1, "cpu").get_providers() == ["CPUExecutionProvider"]
