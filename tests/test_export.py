"""ONNX export of pruned DeiT-Ti-sized ViTs: valid graphs, static scheduled shapes, onnxruntime matches PyTorch."""
import json

import onnx
import pytest
import timm
import torch
import torch.nn as nn

from vitsearch import export, pruning
from vitsearch.errors import VitsearchError
from vitsearch.export import export_model, export_onnx, onnx_block_tokens, read_metadata, run_onnxruntime


def deit_tiny_sized(config: str, **kw) -> nn.Module:
    """DeiT-Ti geometry (embed 192, 3 heads, 12 blocks) at 64 px in patches of 8: 64 patch tokens."""
    torch.manual_seed(0)  # untrained selectors score tokens close together; a fixed init keeps the test exact
    kw = {"img_size": 64, "patch_size": 8, "num_classes": 10, **kw}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw)
    return pruning.apply(model.eval(), config)


def static_shape(value: onnx.ValueInfoProto) -> list[int]:
    dims = value.type.tensor_type.shape.dim
    assert all(d.HasField("dim_value") for d in dims), f"{value.name} has a dynamic dimension"
    return [d.dim_value for d in dims]


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("config", ["spvit:3=0.7,6=0.7,9=0.7", "evovit:4=0.5,8=0.5"])
def test_pruned_model_exports_and_onnxruntime_matches(config, batch, tmp_path):
    model = deit_tiny_sized(config)
    result = export_model(model, tmp_path / "model.onnx", batch=batch)

    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    assert static_shape(proto.graph.input[0]) == [batch, 3, 64, 64]
    assert static_shape(proto.graph.output[0]) == [batch, 10]
    # The graph really runs at the scheduled token counts (seen by onnxruntime, not just declared).
    schedule = model.token_schedule.block_tokens
    assert min(schedule) < 65
    assert onnx_block_tokens(result.path) == list(schedule)

    assert result.max_abs_diff <= result.tolerance < 1e-3
    x = export.example_input(model, batch)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.from_numpy(run_onnxruntime(result.path, [x])[0]), expected, atol=1e-4, rtol=1e-4)

    meta = read_metadata(result.path)
    assert meta == result.provenance
    assert meta["config"] == config and json.loads(meta["block_tokens"]) == list(schedule)
    assert json.loads(meta["geometry"])["embed_dim"] == 192 and json.loads(meta["input_shapes"]) == [[batch, 3, 64, 64]]
    assert meta["exporter"] == "torchscript" and meta["opset"] == str(export.DEFAULT_OPSET)


def test_dynamo_exporter_gives_the_same_graph_behaviour(tmp_path):
    model = deit_tiny_sized("spvit:2=0.7", embed_dim=64, num_heads=4, depth=4)  # smaller: dynamo is slow
    result = export_model(model, tmp_path / "dynamo.onnx", dynamo=True)
    assert result.max_abs_diff <= result.tolerance
    assert onnx_block_tokens(result.path) == list(model.token_schedule.block_tokens)
    assert result.provenance["exporter"].startswith("torch.export")


def test_component_graph_of_one_block(tmp_path):
    """What the latency profiler exports: one stock timm block at n tokens (defaulted forward arguments)."""
    torch.manual_seed(0)
    block = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8).blocks[0].train()
    x = torch.randn(2, 37, 192)
    path = export_onnx(block, (x,), tmp_path / "block.onnx", metadata={"component": "block", "tokens": 37})
    assert block.training  # mode restored
    proto = onnx.load(str(path))
    assert static_shape(proto.graph.input[0]) == [2, 37, 192]
    with torch.no_grad():
        expected = block.eval()(x)
    torch.testing.assert_close(torch.from_numpy(run_onnxruntime(path, [x])[0]), expected, atol=1e-5, rtol=1e-5)
    meta = read_metadata(path)
    assert meta["component"] == "block" and meta["tokens"] == "37" and "config" not in meta


def test_failed_export_leaves_the_previous_file_untouched(tmp_path):
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="boom"):
        export_onnx(Broken(), (torch.zeros(1),), target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left behind


def test_mismatch_with_onnxruntime_is_an_error(tmp_path, monkeypatch):
    model = deit_tiny_sized("none")
    real = export.run_onnxruntime
    monkeypatch.setattr(export, "run_onnxruntime", lambda path, inputs: [real(path, inputs)[0] + 1e-2])
    with pytest.raises(VitsearchError, match="differs from PyTorch"):
        export_model(model, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_cli_export_prints_a_summary_and_a_json_line(tmp_path, capsys):
    from vitsearch.cli import main
    from vitsearch.models import create_model

    torch.manual_seed(0)
    checkpoint = tmp_path / "digits.pt"
    torch.save(create_model("digits").state_dict(), checkpoint)
    out = tmp_path / "out" / "digits.onnx"
    code = main(["export", "--model", "digits", "--checkpoint", str(checkpoint), "--config", "evovit:3=0.5",
                 "--output", str(out), "--batch", "2"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    record = json.loads(lines[-1])
    assert record["path"] == str(out) and out.is_file()
    assert record["config"] == "evovit:3=0.5" and record["batch"] == 2 and record["output_shape"] == [2, 10]
    assert record["max_abs_diff"] <= record["tolerance"]
    assert record["block_tokens"] == [65] * 3 + [34] * 9 == onnx_block_tokens(out)  # 12 blocks, Evo-ViT from 3
    meta = read_metadata(out)
    assert meta["model"] == "digits" and len(json.loads(meta["checkpoint"])["sha256"]) == 64
    assert any("GMACs" in line for line in lines[:-1])


def test_cli_export_rejects_a_bad_config(tmp_path, capsys):
    from vitsearch.cli import main

    assert main(["export", "--model", "digits", "--config", "spvit:3=1.5", "--output", str(tmp_path / "m.onnx")]) == 2
    assert "keep ratio 1.5" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


# Rebuilding a model from its own checkpoint (issue 28 item 1) --------------------------------------------------

def _trained_spvit_checkpoint(folder, config: str = "spvit:3=0.5,6=0.5"):
    """A digits SPViT model saved as the search and finalize save theirs (StudyFolder.save_checkpoint), its
    selectors moved off their initial weights, as training moves them."""
    from vitsearch.models import create_model
    from vitsearch.studyfolder import StudyFolder

    torch.manual_seed(0)
    model = pruning.apply(create_model("digits"), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("token_selectors."):
                p.add_(torch.randn_like(p))
    path = folder / "finalized" / "model.pt"
    path.parent.mkdir(parents=True)
    StudyFolder(folder).save_checkpoint(model.eval(), pruning.PruneConfig.parse(config), path,
                                        extra={"model": "digits", "study": "s", "trial": 7})
    return model, path


def test_cli_export_rebuilds_a_checkpoint_from_what_it_carries(tmp_path, capsys):
    """A vitsearch checkpoint names its model and config: no --model or --config is needed, the same --config is
    accepted, and the ONNX file runs the saved selectors (not freshly initialised ones)."""
    from vitsearch.cli import main

    model, path = _trained_spvit_checkpoint(tmp_path)
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(path), "-o", str(out)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["config"] == "spvit:3=0.5,6=0.5" and record["model"] == "digits"
    x = export.example_input(model)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.from_numpy(run_onnxruntime(out, [x])[0]), expected, atol=1e-4, rtol=1e-4)
    assert read_metadata(out)["config"] == "spvit:3=0.5,6=0.5"
    assert main(["export", "--checkpoint", str(path), "--config", "spvit:6=0.5,3=0.5", "--model", "vit_digits",
                 "-o", str(tmp_path / "same.onnx")]) == 0


@pytest.mark.parametrize("option, value, needle", [
    ("--config", "spvit:3=0.7", "--config spvit:3=0.7 conflicts with checkpoint"),
    ("--model", "clutter", "--model clutter conflicts with checkpoint"),
])
def test_cli_export_refuses_a_config_or_model_the_checkpoint_was_not_trained_as(tmp_path, capsys, option, value,
                                                                                 needle):
    from vitsearch.cli import main

    _, path = _trained_spvit_checkpoint(tmp_path)
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(path), option, value, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_export_refuses_selectors_the_weights_do_not_hold(tmp_path, capsys):
    """A base checkpoint with an SPViT config would export randomly initialised selectors: refused by default,
    let through with --untrained-selectors and a warning. Evo-ViT reads no trained module at inference."""
    from vitsearch.cli import main
    from vitsearch.models import create_model

    torch.manual_seed(0)
    base = tmp_path / "base.pt"
    torch.save(create_model("digits").state_dict(), base)
    out = tmp_path / "m.onnx"
    for source in (["--checkpoint", str(base)], ["--model", "digits"]):  # a file, or the cached digits base
        assert main(["export", *source, "--config", "spvit:3=0.5", "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert "holds no trained token_selectors for spvit:3=0.5" in err and "--untrained-selectors" in err
        assert not out.exists()
    assert main(["export", "--checkpoint", str(base), "--config", "spvit:3=0.5", "--untrained-selectors",
                 "-o", str(out)]) == 0
    assert "untrained" in capsys.readouterr().err and out.is_file()


def test_the_base_and_every_export_of_it_carry_classes_and_preprocessing(digits_base, tmp_path, capsys):
    """The cached base records what running it needs; an export of it (by name, or of its model.pt) carries the
    class names and preprocessing in the ONNX metadata (issue 28 item 7)."""
    from vitsearch.cli import main
    from vitsearch.data import inference_inputs

    _, meta = digits_base
    assert meta["classes"] == list("0123456789")
    assert meta["preprocessing"] == inference_inputs(digits_base[0])["preprocessing"]
    assert meta["preprocessing"]["input_size"] == [1, 64, 64] and len(meta["preprocessing"]["mean"]) == 1
    for i, source in enumerate((["--model", "digits"], ["--checkpoint", f"{meta['path']}/model.pt"])):
        out = tmp_path / f"{i}.onnx"
        assert main(["export", *source, "--config", "evovit:3=0.5", "-o", str(out)]) == 0
        onnx_meta = read_metadata(out)
        assert json.loads(onnx_meta["classes"]) == meta["classes"]
        assert json.loads(onnx_meta["preprocessing"]) == meta["preprocessing"]
