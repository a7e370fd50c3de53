"""--train-device: one normaliser, a missing GPU is one clear message, the CPU path keeps float32 numerics."""
import json
import subprocess
import sys

import pytest
import torch

from vitsearch.errors import VitsearchError
from vitsearch.training import CPU, Precision, resolve_train_device

NO_CUDA = not torch.cuda.is_available()


def test_auto_and_cpu_resolve_here():
    assert resolve_train_device("cpu") == torch.device("cpu")
    assert resolve_train_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    assert Precision.resolve("cpu") == CPU and CPU.name == "fp32"
    assert Precision.resolve("cpu").to_dict() == {"device": "cpu", "precision": "fp32"}


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is here")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1", "CUDA:0"])
def test_cuda_without_a_gpu_is_an_error_never_a_cpu_run(spec):
    with pytest.raises(VitsearchError, match="no CUDA GPU here.*--train-device cpu"):
        resolve_train_device(spec)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", ""])
def test_unknown_device_names_the_choices(spec):
    with pytest.raises(VitsearchError, match="choose auto, cpu, cuda, cuda:N or mps"):
        resolve_train_device(spec)


def test_cpu_has_no_autocast_and_plain_steps():
    with CPU.autocast():
        assert not torch.is_autocast_enabled("cpu")
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    assert CPU.scaler().scaler is None


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is here")
@pytest.mark.parametrize("command", [["search", "--trials", "1"], ["finalize", "x", "--trial", "0"], ["pretrain"]])
def test_cli_cuda_without_a_gpu(tmp_path, command):
    """Each training command refuses --train-device cuda here with exit code 2 and no traceback."""
    r = subprocess.run([sys.executable, "-m", "vitsearch", *command, "--train-device", "cuda",
                        *(["--reports", str(tmp_path)] if command[0] != "pretrain" else ["--cache-dir", str(tmp_path)])],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "no CUDA GPU here" in r.stderr and "Traceback" not in r.stderr
