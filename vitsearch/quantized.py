"""Shipping a model in int8: calibrate on training images, quantize its exported ONNX, evaluate both with onnxruntime.

The exported fp32 graph is quantized with the same tooling and choices as the int8 latency tables
(:mod:`vitsearch.latency.precision`: QDQ, the transformer's MatMul/Gemm with per-channel symmetric int8 weights and
uint8 activations; token selection stays float), calibrated on :data:`CALIBRATION_IMAGES` training images (never
val or test). Both graphs are then run by onnxruntime on the test split, so the accuracy stated is the quantized
file's own, not a PyTorch simulation of it.

Tolerance: the int8 graph's logits are compared with the fp32 graph's on the test images. Per image, the largest
|int8 - fp32| logit difference, as a share of the largest |fp32 logit| over the test images; the 99th percentile of
that over the images must stay within :data:`INT8_RTOL` (10%). Measured on the trained digits model with an SPViT
selector (200 test images, 64 calibration images): median 1.0%, p99 6.6%, worst image 16%, the same top-1 on 99.5%
of images. The worst image is reported (``max_rel_diff``) but not bounded: static MinMax calibration clips the rare
activation beyond the calibrated range, which a single image can hit. Past the tolerance the int8 file is removed
and the error says so.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import VitsearchError
from .latency.precision import MIN_CALIBRATION_IMAGES, quantize

CALIBRATION_IMAGES = 64  # training images a model is calibrated on (at least MIN_CALIBRATION_IMAGES)
INT8_RTOL = 0.1  # p99 over images of max |int8 - fp32 logits|, as a share of max |fp32 logits| (module docstring)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quantized:
    """An int8 ONNX model and what it was checked against."""

    path: Path
    calibration_images: int
    accuracy: float  # the int8 graph's top-1 on test, run by onnxruntime
    accuracy_fp32_onnx: float  # the fp32 graph's top-1 on the same images, run by onnxruntime
    top1_agreement: float  # share of test images where both graphs predict the same class
    p99_rel_diff: float  # 99th percentile over images of max |int8 - fp32 logits| / max |fp32 logits|
    max_rel_diff: float  # the same, worst image
    tolerance: float  # what p99_rel_diff was checked against (INT8_RTOL)

    def to_dict(self) -> dict[str, Any]:
        return {"onnx": str(self.path), "calibration_images": self.calibration_images, "accuracy": self.accuracy,
                "accuracy_fp32_onnx": self.accuracy_fp32_onnx, "top1_agreement": self.top1_agreement,
                "p99_rel_diff": self.p99_rel_diff, "max_rel_diff": self.max_rel_diff, "tolerance": self.tolerance}


def _static_batch(path: Path) -> tuple[str, int]:
    import onnx

    (inp,) = [i for i in onnx.load(str(path), load_external_data=False).graph.input]
    return inp.name, int(inp.type.tensor_type.shape.dim[0].dim_value)


def check_calibration(splits: Any) -> None:
    """Refuse a train split too small to calibrate on, naming how many images it needs (before any work)."""
    have = len(splits.train)
    if have < MIN_CALIBRATION_IMAGES:
        raise VitsearchError(f"int8 calibration needs at least {MIN_CALIBRATION_IMAGES} training images, and the "
                             f"train split of {splits.name!r} has {have}: use a data set (or --max-train) with "
                             f"{MIN_CALIBRATION_IMAGES} or more training images, or ship in fp32")


def calibration_feeds(splits: Any, path: Path, images: int = CALIBRATION_IMAGES) -> list[dict[str, np.ndarray]]:
    """``images`` training images (seeded, shuffled; ImageFolder images through the training transform) as feeds
    of the exported graph at ``path`` (its static batch); :func:`check_calibration` first."""
    check_calibration(splits)
    have = len(splits.train)
    name, batch = _static_batch(path)
    images = min(max(images, MIN_CALIBRATION_IMAGES), have)
    feeds: list[dict[str, np.ndarray]] = []
    pending: list[np.ndarray] = []
    taken = 0
    for x, _ in splits.train_batches(batch, seed=0):
        pending.extend(x.float().numpy())
        while len(pending) >= batch and taken < images:
            feeds.append({name: np.stack(pending[:batch])})
            del pending[:batch]
            taken += batch
        if taken >= images:
            break
    return feeds


def _test_logits(path: Path, splits: Any, threads: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(logits, labels) of the test split through the graph at ``path``, at its static batch (a last, short
    batch is padded with copies of its first image and the padding's logits dropped)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name, batch = _static_batch(path)
    for x, y in splits.held_out_batches(batch, "test"):
        images = x.float().numpy()
        n = len(images)
        if n < batch:
            images = np.concatenate([images, np.repeat(images[:1], batch - n, axis=0)])
        yield session.run(None, {name: images})[0][:n], y.numpy()


def quantize_exported(fp32_path: Path, int8_path: Path, splits: Any, *, images: int = CALIBRATION_IMAGES) -> Quantized:
    """Quantize the exported graph ``fp32_path`` to ``int8_path`` (calibrated on training images), run both on the
    test split with onnxruntime and check the int8 logits against the fp32 ones (module docstring)."""
    feeds = calibration_feeds(splits, fp32_path, images)
    quantize(fp32_path, int8_path, feeds)
    correct_fp32 = correct_int8 = agree = total = 0
    worst: list[np.ndarray] = []  # per image: max |int8 - fp32| logit difference
    scale = 0.0
    for (want, labels), (got, _) in zip(_test_logits(fp32_path, splits), _test_logits(int8_path, splits)):
        correct_fp32 += int((want.argmax(-1) == labels).sum())
        correct_int8 += int((got.argmax(-1) == labels).sum())
        agree += int((want.argmax(-1) == got.argmax(-1)).sum())
        total += len(labels)
        worst.append(np.abs(got - want).max(axis=-1))
        scale = max(scale, float(np.abs(want).max()))
    per_image = np.concatenate(worst) / scale if scale > 0 else np.full(1, np.inf)
    p99, rel = float(np.percentile(per_image, 99)), float(per_image.max())
    if not p99 <= INT8_RTOL:
        int8_path.unlink(missing_ok=True)
        raise VitsearchError(f"the int8 graph's logits differ from the fp32 graph's by {p99:.3f} of their range on "
                             f"the test images (99th percentile; tolerance {INT8_RTOL}): this model does not quantize "
                             "well with static per-channel int8; ship it in fp32")
    total = max(total, 1)
    result = Quantized(int8_path, sum(len(next(iter(f.values()))) for f in feeds), correct_int8 / total,
                       correct_fp32 / total, agree / total, p99, rel, INT8_RTOL)
    logger.info("int8 %s: test accuracy %.4f (fp32 ONNX %.4f), top-1 agreement %.4f, max logit diff %.3f of range",
                int8_path, result.accuracy, result.accuracy_fp32_onnx, result.top1_agreement, rel)
    return result


def int8_path_for(fp32_path: Path) -> Path:
    """Where the int8 model of an exported ``model.onnx`` goes: ``model-int8.onnx`` beside it."""
    return fp32_path.with_name(f"{fp32_path.stem}-int8{fp32_path.suffix}")


def measure_both(fp32_path: Path, int8_path: Path, *, device: str = "cpu", threads: int = 0,
                 tables: str = "latency_tables") -> dict[str, float]:
    """Median latency (ms) of both graphs on ``device``, timed in one runner call (interleaved passes), so they
    see the same machine: ``{"fp32_ms": ..., "int8_ms": ...}``. Raises :class:`VitsearchError` where the device
    cannot run int8 or fails."""
    from .errors import RunFailure
    from .latency.devices import Artefact, MeasureSettings, open_device
    from .latency.precision import check_runs
    from .latency.registry import resolve

    spec = resolve(device, tables)
    check_runs("int8", spec)
    dev = open_device(spec, tables)
    out: dict[str, float] = {}
    for event in dev.measure([Artefact("fp32", onnx=fp32_path), Artefact("int8", onnx=int8_path)],
                             MeasureSettings(threads=threads)):
        if event["event"] == "error":
            raise RunFailure(f"measuring {event['name']} on {device} failed: {event.get('message')}")
        if event["event"] == "result":
            out[f"{event['name']}_ms"] = float(event["median_ms"])
    return out
