"""Where training runs (``--train-device``) and in which precision.

``--device`` names the latency target (a phone, a remote box); this is the machine's own accelerator, where brief
training, the supernet, finalize, held-out evaluation and the teacher's logits run. On a CUDA GPU forward passes
run under autocast (bf16 where the GPU supports it, else fp16 with a gradient scaler); elsewhere everything stays
float32, so CPU results are those of earlier versions. MPS trains in float32 (autocast there is not tested).
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, ContextManager

import torch

from ..errors import VitsearchError

TRAIN_DEVICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_train_device(spec: str) -> torch.device:
    """``auto`` (the first CUDA GPU, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; a GPU that is not
    here is an error, never a silent CPU run."""
    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not torch.backends.mps.is_available():
            raise VitsearchError("--train-device mps: PyTorch sees no Apple GPU (MPS) here; use --train-device cpu")
        return torch.device("mps")
    cuda = re.fullmatch(r"cuda(?::(\d+))?", text)
    if cuda is None:
        raise VitsearchError(f"unknown --train-device {spec!r}: choose {TRAIN_DEVICES}")
    if not torch.cuda.is_available():
        raise VitsearchError(
            f"--train-device {spec}: PyTorch sees no CUDA GPU here (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}); use --train-device cpu, or install a CUDA build of torch")
    index = int(cuda.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise VitsearchError(f"--train-device {spec}: there are {torch.cuda.device_count()} CUDA GPU(s) here "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Precision:
    """The training device and the dtype of its autocast regions (None: float32 throughout)."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype | None = None

    @classmethod
    def resolve(cls, spec: str = "auto", *, amp: bool = True) -> "Precision":
        device = resolve_train_device(spec)
        if not amp or device.type != "cuda":
            return cls(device)
        return cls(device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def to_dict(self) -> dict[str, str]:
        return {"device": str(self.device), "precision": self.name}

    def autocast(self) -> ContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def move(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.device == self.device else t.to(self.device, non_blocking=True)

    def scaler(self) -> "LossScaler":
        return LossScaler(torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None)


CPU = Precision()


class LossScaler:
    """``backward`` and the optimiser ``step`` of one training run, through a GradScaler under fp16 autocast (its
    small gradients would underflow otherwise), plain otherwise."""

    def __init__(self, scaler: Any = None) -> None:
        self.scaler = scaler

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()
