"""Pruning methods on tiny stock timm ViTs: identity at keep 1.0, scheduled token counts, batch independence."""
import copy

import pytest
import timm
import torch

from vitsearch import pruning
from vitsearch.pruning import PruneConfig, token_schedule
from vitsearch.pruning.methods.evovit import algorithm as evovit
from vitsearch.errors import VitsearchError
from vitsearch.training import TrainSettings

PRUNED = ["spvit:3=0.7,6=0.7,9=0.7", "spvit:2=0.5", "evovit:4=0.5,8=0.5", "evovit:1=0.3"]


def tiny_vit(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vitsearch_test_vit", **kw).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", [{}, {"init_values": 0.1, "qk_norm": True}, {"global_pool": "avg", "fc_norm": True}])
@pytest.mark.parametrize("config", ["none", "spvit:3=1.0,6=1.0,9=1.0", "evovit:4=1.0,8=1.0"])
def test_keep_ratio_one_is_the_identity(config, variant, images):
    model = tiny_vit(**variant)
    expected = model(images)
    patched = pruning.apply(copy.deepcopy(model), config).eval()
    torch.testing.assert_close(patched(images), expected)


def test_identity_without_fused_attention(images, monkeypatch):
    model = tiny_vit()
    for blk in model.blocks:
        blk.attn.fused_attn = False
    expected = model(images)
    torch.testing.assert_close(pruning.apply(copy.deepcopy(model), "evovit:4=1.0").eval()(images), expected)


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("config", PRUNED)
def test_every_block_sees_the_scheduled_token_count(config, batch, images):
    model = pruning.apply(tiny_vit(), config)
    seen: list[int] = []
    hooks = [blk.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1])) for blk in model.blocks]
    with torch.inference_mode():
        out = model(images[:batch])
    for h in hooks:
        h.remove()
    schedule = token_schedule(PruneConfig.parse(config), depth=12, num_patches=64, num_prefix=1)
    assert seen == list(schedule.block_tokens)
    assert out.shape == (batch, 10)
    assert min(seen) < 65  # something was really removed


@pytest.mark.parametrize("config", PRUNED)
def test_each_image_gives_the_same_output_alone_as_in_a_batch(config, images):
    model = pruning.apply(tiny_vit(), config)
    with torch.inference_mode():
        batched = model(images)
        alone = torch.cat([model(images[i:i + 1]) for i in range(len(images))])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)


def test_pruning_changes_the_output_but_keeps_base_keys(images):
    base = tiny_vit()
    keys = set(base.state_dict())
    patched = pruning.apply(copy.deepcopy(base), "spvit:3=0.5")
    assert keys <= set(patched.state_dict())
    assert {k for k in patched.state_dict() if k not in keys} == {
        k for k in patched.state_dict() if k.startswith("token_selectors.3.")}
    assert not torch.allclose(patched(images), base(images))


def test_spvit_packages_pruned_tokens_into_one_token_weighted_by_score():
    from vitsearch.pruning.methods.spvit import algorithm as spvit

    torch.manual_seed(0)
    sel = spvit.MultiHeadTokenSelector(64, 4).eval()
    patches = torch.randn(2, 10, 64)
    kept, pkg = spvit.prune_hard(sel, patches, 6)
    margin, p_keep = sel(patches)
    order = margin.argsort(dim=1, descending=True)  # the order inference ranks by
    for b in range(2):
        top, rest = order[b, :6], order[b, 6:]
        assert set(map(tuple, kept[b].tolist())) == set(map(tuple, patches[b, top].tolist()))
        w = p_keep[b, rest]
        torch.testing.assert_close(pkg[b, 0], (w[:, None] * patches[b, rest]).sum(0) / w.sum())


def einsum_selector(sel, x: torch.Tensor, mask: torch.Tensor | None = None):
    """The per-head selector as first written (token-major, one einsum per per-head projection, [keep, drop]
    logits, log_softmax), given every head the shared weights and a drop logit of 0: the reference the shared
    2-D rows must reproduce."""
    import torch.nn.functional as F

    H = sel.num_heads

    def grouped(layer, t, drop_logit=False):  # (B, N, H, i) -> (B, N, H, o), the same weight for every head
        weight, bias = layer.weight.T, layer.bias  # (i, o), (o,)
        if drop_logit:
            weight, bias = F.pad(weight, (0, 1)), F.pad(bias, (0, 1))
        return torch.einsum("bnhi,hio->bnho", t, weight.expand(H, -1, -1)) + bias

    B, N, C = x.shape
    xh = x.reshape(B, N, H, sel.head_dim)
    w = sel.head_gate(xh.mean(dim=-1))
    w = w / w.sum(dim=-1, keepdim=True)
    h = F.gelu(grouped(sel.in_proj, sel.norm(xh)))
    local, glob = h[..., :sel.head_dim // 2], h[..., sel.head_dim // 2:]
    if mask is None:
        glob = glob.mean(dim=1, keepdim=True)
    else:
        m = mask[:, :, None, None]
        glob = (glob * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1e-6)
    h = torch.cat([local, glob.expand(-1, N, -1, -1)], dim=-1)
    for layer in sel.out[:-1]:
        h = F.gelu(grouped(layer, h))
    h = grouped(sel.out[-1], h, drop_logit=True)  # (B, N, H, 2) [keep, drop]
    log_score = (w[..., None] * h.log_softmax(dim=-1)).sum(dim=2)  # (B, N, 2) aggregated [keep, drop]
    return log_score[..., 0] - log_score[..., 1], (w * h.softmax(dim=-1)[..., 0]).sum(dim=2)


@pytest.mark.parametrize("masked", [False, True])
def test_spvit_selector_matches_the_per_head_formula(masked):
    from vitsearch.pruning.methods.spvit import algorithm as spvit

    torch.manual_seed(0)
    sel = spvit.MultiHeadTokenSelector(96, 6).eval()
    for p in sel.parameters():  # weights far from the init, so every projection and bias matters
        p.data.normal_()
    x = torch.randn(3, 11, 96)
    mask = (torch.rand(3, 11) > 0.4).float() if masked else None
    with torch.no_grad():
        for got, want in zip(sel(x, mask), einsum_selector(sel, x, mask)):
            torch.testing.assert_close(got, want)
    # One scorer shared by the heads (the official code's): 2-D weights, the last layer the keep log-odds.
    assert {k: tuple(v.shape) for k, v in sel.state_dict().items() if "head_gate" not in k and "norm" not in k} == {
        "in_proj.weight": (16, 16), "in_proj.bias": (16,), "out.0.weight": (8, 16), "out.0.bias": (8,),
        "out.1.weight": (4, 8), "out.1.bias": (4,), "out.2.weight": (1, 4), "out.2.bias": (1,)}


def test_spvit_selector_exports_as_gemms_without_token_reductions_or_concat(tmp_path):
    import onnx
    import onnx.numpy_helper
    import onnxruntime as ort

    from vitsearch.export import export_onnx

    model = pruning.apply(tiny_vit(), "spvit:3=0.7,6=0.7")
    path = export_onnx(model, (torch.randn(1, 3, 32, 32),), tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Einsum" not in ops
    assert ops.count("Gemm") >= 2 * 4  # every selector's four shared projections are 2-D Gemms, bias fused
    # What onnxruntime runs, once it has folded what depends on weights and shapes alone (weight slices, the mask):
    # a mean over the token axis, the [local, global] concatenation and a gather with an index per element each
    # cost it more than the matmuls and the row Gather that replace them (issue 18).
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    graph = onnx.load(so.optimized_model_filepath).graph
    constants = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in graph.initializer}
    selector = [n for n in graph.node if "token_selectors" in n.name]
    assert "Gemm" in {n.op_type for n in selector}
    assert not {n.op_type for n in selector} & {"Concat", "Expand", "Split", "Pad", "Tile"}
    assert all(constants[n.input[1]] == [-1] for n in selector if n.op_type == "ReduceMean")  # channels only
    ops = [n.op_type for n in graph.node]
    assert "GatherElements" not in ops and "Gather" in ops


def test_evovit_moves_whole_token_rows(tmp_path):
    import onnx

    from vitsearch.export import export_onnx

    model = pruning.apply(tiny_vit(), "evovit:3=0.5,6=0.5")
    path = export_onnx(model, (torch.randn(2, 3, 32, 32),), tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "GatherElements" not in ops and "Gather" in ops  # rows, not an index per element (issue 18)


def test_gather_rows_takes_each_images_own_rows():
    from vitsearch.pruning.tokens import gather_rows

    x = torch.randn(3, 7, 5)
    idx = torch.tensor([[6, 0], [2, 2], [5, 1]])
    torch.testing.assert_close(gather_rows(x, idx), torch.stack([x[b, idx[b]] for b in range(3)]))
    torch.testing.assert_close(gather_rows(x[..., 0], idx), torch.stack([x[b, idx[b], 0] for b in range(3)]))


@pytest.mark.parametrize("draw, tokens", [
    ("topk", [65] * 3 + [66, 47, 47, 48] + [35] * 5),  # removed after the selector's block, as inference does
    ("logodds", [65] * 3 + [66] * 3 + [67] * 6),  # masked, not removed; one package per selector
])
def test_spvit_training_draws_gumbel_decisions_with_gradients(images, draw, tokens):
    model = pruning.apply(tiny_vit(), "spvit:3=0.7,6=0.7").train()
    pruning.prune_state(model).train = TrainSettings(spvit_draw=draw)
    out = model(images)
    state = pruning.prune_state(model)
    assert len(state.method.keep_decisions) == 2 and state.method.keep_targets == pytest.approx([45 / 64, 32 / 64])
    assert set(state.method.keep_decisions[0].unique().tolist()) <= {0.0, 1.0}
    assert (state.method.keep_decisions[1] <= state.method.keep_decisions[0]).all()  # pruned tokens stay pruned
    assert state.block_tokens == tokens
    if draw == "topk":
        assert [float(d.detach().sum(dim=1).max()) for d in state.method.keep_decisions] == [45, 32]  # exactly k per image
    (out.sum() + state.method.keep_decisions[-1].mean()).backward()
    assert model.token_selectors["3"].in_proj.weight.grad.abs().sum() > 0


def test_evovit_preserves_structure_and_updates_placeholders_fast(images):
    model = pruning.apply(tiny_vit(global_pool="avg"), "evovit:4=0.25")  # a head on the mean reads every token
    captured = {}
    model.norm.register_forward_pre_hook(lambda m, args: captured.update(tokens=args[0]))
    with torch.inference_mode():
        model(images)
    assert captured["tokens"].shape == (8, 65, 64)  # every token comes back, in its place
    model.train()
    model(images)
    assert pruning.prune_state(model).method.aux_logits.shape == (8, 10)


def test_evovit_every_block_reselection_runs_and_differs(images, monkeypatch):
    model = tiny_vit()
    for blk in model.blocks:  # peaky attention, so the ranking moves between blocks as it does in a trained ViT
        blk.attn.qkv.weight.data *= 8  # (at 4 no block re-ranked: the two modes agreed to 1e-6 and this test to luck)
    model = pruning.apply(model, "evovit:4=0.5")
    chosen, enter = [], evovit.enter_stage

    def recorded(patches, score, n_keep):
        stage = enter(patches, score, n_keep)
        chosen.append(stage.order[:, :n_keep].sort(dim=1).values)  # (B, K) the slow set
        return stage

    monkeypatch.setattr(evovit, "enter_stage", recorded)
    with torch.inference_mode():
        stagewise = model(images)
        model.every_block = True
        chosen.clear()
        layerwise = model(images)
    assert len(chosen) == 8  # blocks 4-11 each re-rank
    assert any(not torch.equal(a, b) for a, b in zip(chosen, chosen[1:]))  # and the slow set moves
    assert not torch.allclose(stagewise, layerwise, atol=1e-3)


def test_reapplying_keeps_trained_selectors():
    model = pruning.apply(tiny_vit(), "spvit:3=0.7,6=0.7")
    sel = model.token_selectors["3"]
    pruning.apply(model, "spvit:3=0.5,9=0.5")
    assert model.token_selectors["3"] is sel and "9" in model.token_selectors


@pytest.mark.parametrize("config, message", [
    ("spvit:3=1.5", "outside (0, 1]"),
    ("spvit:3=0", "outside (0, 1]"),
    ("spvit:12=0.5", "does not exist"),
    ("evovit:0=0.5", "block >= 1"),
    ("magic:3=0.5", "unknown pruning method"),
    ("spvit:3~0.5", "cannot read selector"),
])
def test_bad_configs_are_named(config, message):
    with pytest.raises(VitsearchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pruning.apply(tiny_vit(), config)


def test_non_vit_models_are_refused():
    with pytest.raises(VitsearchError, match="VisionTransformer"):
        pruning.apply(timm.create_model("resnet18", pretrained=False), "spvit:3=0.5")


def test_evovit_needs_a_class_token():
    with pytest.raises(VitsearchError, match="class token"):
        pruning.apply(tiny_vit(class_token=False, global_pool="avg"), "evovit:4=0.5")


def test_masked_attention_is_the_softmax_over_the_kept_keys_with_bounded_gradients():
    """A pruned key far above the kept ones (a dropped digit patch) neither leaks into the output nor sends the
    selector an unbounded straight-through gradient (DynamicViT's max-over-all-keys + eps form sent 1/eps)."""
    torch.manual_seed(0)
    attn = torch.randn(2, 3, 5, 5)
    attn[..., 1] += 60.0  # key 1 dominates every row
    policy = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0, 1.0]], requires_grad=True)
    out = pruning.softmax_with_policy(attn, policy)
    for b in range(2):
        for q in range(5):
            seen = policy[b].detach().bool().clone()
            seen[q] = True  # a query always sees itself
            expected = torch.zeros(5)
            expected[seen] = attn[b, :, q, seen].softmax(dim=-1)[0]
            torch.testing.assert_close(out[b, 0, q], expected)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(policy.grad).all() and policy.grad.abs().max() < 10
    logits = torch.randn(2, 3, 5, 5, requires_grad=True)  # nothing pruned: the plain softmax, gradients included
    plain = logits.detach().clone().requires_grad_()
    weights = torch.randn(2, 3, 5, 5)
    (pruning.softmax_with_policy(logits, torch.ones(2, 5)) * weights).sum().backward()
    (plain.softmax(dim=-1) * weights).sum().backward()
    torch.testing.assert_close(logits.grad, plain.grad)


def test_an_empty_package_is_zero_with_a_finite_gradient():
    from vitsearch.pruning.tokens import weighted_mean

    x = torch.randn(2, 4, 8)
    weights = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.25, 0.0]], requires_grad=True)
    pkg = weighted_mean(x, weights)
    assert (pkg[0] == 0).all()
    torch.testing.assert_close(pkg[1, 0], (0.5 * x[1, 0] + 0.25 * x[1, 2]) / 0.75)
    pkg.sum().backward()
    assert torch.isfinite(weights.grad).all() and weights.grad.abs().max() < 100


def exported_with_parity(config: str, batch: int, tmp_path):
    """A tiny random-weight ViT patched for ``config``, exported at ``batch``: onnxruntime matches PyTorch and the
    graph computes the scheduled token counts. Returns the export result."""
    from vitsearch import export

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=8, num_classes=10).eval()
    pruning.apply(model, config)
    result = export.export_model(model, tmp_path / "model.onnx", batch=batch)
    assert result.max_abs_diff <= result.tolerance < 1e-3
    assert export.onnx_block_tokens(result.path) == list(model.token_schedule.block_tokens)
    x = export.example_input(model, batch)
    with torch.no_grad():
        expected = model(x)
    got = torch.from_numpy(export.run_onnxruntime(result.path, [x])[0])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    return result
