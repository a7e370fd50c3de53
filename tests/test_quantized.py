"""Shipping in int8: the trained digits model quantized from its exported ONNX, calibrated on training images, and
evaluated on test by onnxruntime beside the fp32 graph."""
from __future__ import annotations

import json

import onnx
import pytest

from vitsearch.data import load_dataset
from vitsearch.errors import VitsearchError
from vitsearch.export import export_model
from vitsearch.latency.precision import MIN_CALIBRATION_IMAGES
from vitsearch.pruning import PruneConfig, apply
from vitsearch.quantized import INT8_RTOL, check_calibration, quantize_exported
from vitsearch.training import accuracy


@pytest.fixture(scope="module")
def pruned(digits_base, tmp_path_factory):
    """The trained digits base pruned by Evo-ViT, exported to fp32 ONNX: its tokens are ranked by the trained class
    attention, so the selection runs as shipped (an untrained SPViT selector ranks at random, and int8 noise then
    reorders the tokens: the tolerance fails as it should, and which tokens depended on the test order's RNG)."""
    import copy

    model = apply(copy.deepcopy(digits_base[0]), PruneConfig.parse("evovit:4=0.5")).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_model(model, path)
    return model, path


def test_int8_accuracy_is_measured_on_the_quantized_file_beside_fp32(pruned, tmp_path):
    model, fp32_path = pruned
    splits = load_dataset("digits", model, max_train=128, max_test=200)
    q = quantize_exported(fp32_path, tmp_path / "model-int8.onnx", splits)
    ops = [n.op_type for n in onnx.load(str(q.path)).graph.node]
    assert ops.count("QuantizeLinear") > 10 and "TopK" in ops  # quantized; selection kept (in float)
    # the fp32 ONNX graph's accuracy is the PyTorch model's on the same test images
    assert q.accuracy_fp32_onnx == pytest.approx(accuracy(model, splits, split="test"), abs=1 / 200)
    assert 0 < q.p99_rel_diff <= INT8_RTOL and q.p99_rel_diff <= q.max_rel_diff  # quantized, within tolerance
    assert q.top1_agreement >= 0.9 and abs(q.accuracy - q.accuracy_fp32_onnx) <= 0.05
    assert q.calibration_images == 64


def test_too_few_training_images_to_calibrate_names_how_many_it_needs(pruned, tmp_path):
    model, fp32_path = pruned
    splits = load_dataset("digits", model, max_train=MIN_CALIBRATION_IMAGES - 1)
    with pytest.raises(VitsearchError, match=f"needs at least {MIN_CALIBRATION_IMAGES} training images, and the "
                                             f"train split of 'digits' has {MIN_CALIBRATION_IMAGES - 1}"):
        check_calibration(splits)
    with pytest.raises(VitsearchError, match="needs at least"):
        quantize_exported(fp32_path, tmp_path / "int8.onnx", splits)
    assert not (tmp_path / "int8.onnx").exists()


def test_cli_export_int8_reports_both_accuracies_and_latencies(digits_base, tmp_path, capsys):
    from vitsearch.cli import main

    out = tmp_path / "digits.onnx"
    # the base model itself: an SPViT config's selectors would be untrained (as initialised), ranking tokens at
    # random, so that a tiny change of their inputs reorders them (the int8 tolerance then fails, as it should)
    assert main(["export", "--output", str(out), "--precision", "int8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    q = json.loads(lines[-1])["int8"]
    assert (tmp_path / "digits-int8.onnx").is_file() and q["onnx"] == str(tmp_path / "digits-int8.onnx")
    assert q["measured_ms"] > 0 and q["fp32_measured_ms"] > 0 and q["p99_rel_diff"] <= q["tolerance"]
    assert any(f"test accuracy {100 * q['accuracy']:.2f}% vs fp32" in line for line in lines)


def test_cli_export_int8_of_a_model_without_data_says_to_name_it(tmp_path, capsys):
    from vitsearch.cli import main

    assert main(["export", "--model", "vitsearch_test_vit", "--output", str(tmp_path / "m.onnx"),
                 "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert "name them with --dataset" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()  # refused before anything was exported


# A quantized model where a float checkpoint is expected (issue 29, bad input) ---------------------------------

@pytest.fixture(scope="module")
def shipped(checkpoint, tmp_path_factory):
    """A finalized trial's folder as finalize writes it (digits architecture, random weights): the float
    checkpoint model.pt, its fp32 model.onnx and the int8 model-int8.onnx quantized from it."""
    import numpy as np
    import torch

    from vitsearch.latency.precision import quantize
    from vitsearch.models import create_model

    folder = tmp_path_factory.mktemp("finalized") / "trial_0003"
    folder.mkdir()
    model = create_model("digits", checkpoint=checkpoint).eval()
    torch.save({"state_dict": model.state_dict(), "model": "digits"}, folder / "model.pt")
    export_model(model, folder / "model.onnx")
    (inp,) = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.input
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    quantize(folder / "model.onnx", folder / "model-int8.onnx",
             [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)])
    return folder


def test_an_int8_onnx_passed_as_a_checkpoint_is_named_with_the_float_one_beside_it(shipped, tmp_path):
    from vitsearch.models import read_checkpoint_record

    int8 = shipped / "model-int8.onnx"
    with pytest.raises(VitsearchError) as e:
        read_checkpoint_record(int8)
    assert str(e.value).startswith(f"checkpoint {str(int8)!r} is a quantized (int8) model (an ONNX graph with int8 "
                                   "ops), not a float one")
    assert str(e.value).endswith(f"Pass the float checkpoint it was quantized from: {shipped / 'model.pt'}")
    # Under another name, alone (torch.load fails on it first): still said to be an int8 model.
    renamed = tmp_path / "weights.pt"
    renamed.write_bytes(int8.read_bytes())
    with pytest.raises(VitsearchError) as e:
        read_checkpoint_record(renamed)
    assert str(e.value).startswith(f"checkpoint {str(renamed)!r} is a quantized (int8) model (an ONNX graph")
    # The fp32 ONNX file is no checkpoint either, and is not called quantized.
    with pytest.raises(VitsearchError, match=r"is an exported ONNX model \(fp32\), not a PyTorch checkpoint: pass "
                                             r"the checkpoint it was exported from: .*model\.pt$"):
        read_checkpoint_record(shipped / "model.onnx")


def test_a_quantized_pytorch_state_dict_is_refused_naming_its_quantized_entries(checkpoint, tmp_path):
    import warnings

    import torch

    from vitsearch.models import create_model, read_checkpoint_record

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated, and still what users have
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(create_model("digits", checkpoint=checkpoint),
                                                           {torch.nn.Linear}, dtype=torch.qint8)
        path = tmp_path / "digits-int8.pt"
        torch.save(quantized.state_dict(), path)
        with pytest.raises(VitsearchError, match=r"is a quantized \(int8\) model \(blocks\.0\.attn\.qkv\._packed_params"
                                                 r"\.dtype, .* more\), not a float one"):
            read_checkpoint_record(path)


@pytest.mark.parametrize("command", [["export", "-o", "OUT"], ["info"],
                                     ["pretrain", "--model", "vitsearch_test_vit", "--dataset", "FOLDER",
                                      "--cache-dir", "CACHE"]])
def test_the_cli_refuses_an_int8_model_as_checkpoint_in_one_line(shipped, tmp_path, capsys, command):
    """export, info and pretrain (fitting the checkpoint to a folder of images) read --checkpoint alike."""
    import numpy as np
    from PIL import Image

    from vitsearch.cli import main

    out, folder = tmp_path / "again.onnx", tmp_path / "images"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((32, 32, 3), 60 * i, dtype=np.uint8)).save(folder / c / f"{i}.png")
    paths = {"OUT": str(out), "FOLDER": str(folder), "CACHE": str(tmp_path / "cache")}
    argv = [paths.get(a, a) for a in command] + ["--checkpoint", str(shipped / "model-int8.onnx")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "quantized (int8) model" in err and str(shipped / "model.pt") in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
