"""The runner: interleaved passes (every model timed in each pass, in turn, samples pooled), the spinning policy
and the thread count it measures with."""
from __future__ import annotations

import json
import subprocess
import sys

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


def tiny_onnx(path) -> str:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((8, 8), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return str(path)


@pytest.mark.parametrize("spinning, value", [(False, "0"), (True, "1"), (None, "0")])
def test_the_spinning_policy_reaches_the_session(tmp_path, spinning, value):
    cfg = {"threads": 1} if spinning is None else {"threads": 1, "spinning": spinning}  # off unless asked
    sess = runner.session(tiny_onnx(tmp_path / "m.onnx"), cfg)
    assert sess.get_session_options().get_session_config_entry(runner.SPINNING_KEY) == value


def run_runner(tmp_path, **cfg) -> subprocess.CompletedProcess:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"warmup": 1, "min_repeats": 2, "max_repeats": 4, "max_seconds": 1.0, **cfg,
                                    "models": [{"name": "m", "path": tiny_onnx(tmp_path / "m.onnx")}]}))
    return subprocess.run([sys.executable, str(runner.__file__), str(manifest)], capture_output=True, text=True,
                          timeout=120)


def test_threads_zero_measures_with_every_core_and_says_so(tmp_path):
    done = run_runner(tmp_path, threads=0)
    runtime, result = (json.loads(line) for line in done.stdout.splitlines())
    assert done.returncode == 0 and result["event"] == "result"
    assert runtime["threads"] == runtime["cpus"] == runner.cpu_count() and runtime["spinning"] == "off"


def test_more_threads_than_cores_is_refused_with_the_count(tmp_path):
    cpus = runner.cpu_count()
    done = run_runner(tmp_path, threads=cpus + 1)
    assert done.returncode == 2 and done.stdout == ""
    assert f"--threads {cpus + 1} is not possible" in done.stderr
    assert f"has {cpus} cores: use 1 to {cpus}" in done.stderr


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
            runner.session(path, {"threads": 1, "provider": "cuda"})
    assert runner.session(path, {"threads": 1}).get_providers() == ["CPUExecutionProvider"]
