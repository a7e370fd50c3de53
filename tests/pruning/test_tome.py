"""ToMe (facebookresearch/ToMe) as a vitsearch method: the same outputs as the official algorithm, written out
here from the paper and the official ``tome/merge.py`` + ``tome/patch/timm.py`` on the same stock weights; the
same per-block token counts; ONNX export with parity; bad input."""
import copy
import math

import pytest
import timm
import torch

from vitsearch import pruning
from vitsearch.errors import VitsearchError
from vitsearch.pruning import PruneConfig, token_schedule
from vitsearch.pruning.methods.tome import merge, method as tome_method

from .test_pruning import exported_with_parity, images, tiny_vit  # noqa: F401  (images is a fixture)


# The reference: the official algorithm, written out straightforwardly -----------------------------------------

def ref_matching(metric, r, class_token):
    """Official bipartite_soft_matching: A = even positions, B = odd, the class token's row at -inf."""
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    scores = a @ b.transpose(-1, -2)
    if class_token:
        scores[..., 0, :] = -math.inf
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx, src_idx = edge_idx[..., r:, :], edge_idx[..., :r, :]
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
    if class_token:
        unm_idx = unm_idx.sort(dim=1)[0]

    def merge_fn(x):
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce="sum")
        return torch.cat([unm, dst], dim=1)

    return merge_fn


def ref_attention(attn, x, size, prop_attn):
    """Official ToMeAttention: explicit softmax, log size added to the logits, keys' mean over heads returned."""
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = (q @ k.transpose(-2, -1)) * attn.scale
    if prop_attn and size is not None:
        logits = logits + size.log()[:, None, None, :, 0]
    out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C)
    return attn.proj(out), k.mean(1)


def ref_tome(model, img, rs, *, prop_attn=True, weighted=True, class_token=True):
    """Official ToMeBlock forward over a stock timm ViT (no layer scale, no qk norm)."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(img)))
    size = None
    for blk, r in zip(model.blocks, rs):
        x_attn, metric = ref_attention(blk.attn, blk.norm1(x), size, prop_attn)
        x = x + x_attn
        r = min(r, (x.shape[1] - int(class_token)) // 2)
        if r > 0:
            merge_fn = ref_matching(metric, r, class_token)
            if size is None:
                size = torch.ones_like(x[..., 0, None])
            if weighted:
                x = merge_fn(x * size)
                size = merge_fn(size)
                x = x / size
            else:
                x, size = merge_fn(x) / 2, merge_fn(size)  # an unweighted pairwise mean (a break, for the test)
        x = x + blk.mlp(blk.norm2(x))
    return model.forward_head(model.norm(x))


def official_counts(tokens, rs, protected=1):
    counts = []
    for r in rs:
        counts.append(tokens)
        tokens -= min(r, (tokens - protected) // 2)
    return counts, tokens


# Outputs ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, rs", [
    ("tome:r=4", [4] * 12),
    ("tome:r=2", [2] * 12),
    ("tome:0=8,3=13,6=5,7=5,11=3", [8, 0, 0, 13, 0, 0, 5, 5, 0, 0, 0, 3]),
])
def test_tome_gives_the_official_algorithms_output_on_the_same_weights(config, rs, images):
    """Breaks if proportional attention, size weighting, the class token's protection, the A/B alternation or
    the merge position (after attention, before the MLP) changes."""
    model = tiny_vit()
    with torch.no_grad():
        expected = ref_tome(model, images, rs)
        got = pruning.apply(copy.deepcopy(model), config).eval()(images)
        # the mechanisms matter on these weights: each left out gives another output
        for broken in (dict(prop_attn=False), dict(weighted=False)):
            assert not torch.allclose(ref_tome(model, images, rs, **broken), expected, atol=1e-4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_tome_without_a_class_token_merges_every_token_as_the_official_class_token_false(images):
    model = tiny_vit(class_token=False, global_pool="avg")
    with torch.no_grad():
        expected = ref_tome(model, images, [3] * 12, class_token=False)
        got = pruning.apply(copy.deepcopy(model), "tome:r=3").eval()(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_class_token_is_never_merged():
    """A class token identical to a patch (the best possible match) still stays, alone, at position 0."""
    torch.manual_seed(0)
    keys = torch.randn(2, 9, 4)
    keys[:, 0] = keys[:, 1]  # the class token's key equals B's first token's
    x = torch.randn(2, 9, 3)
    x[:, 0] = 100.0
    m = merge.bipartite_soft_matching(keys, merge.max_merges(9, 1), 1)
    out, size = merge.merge_weighted(m, x, torch.ones(2, 9, 1))
    assert out.shape == (2, 5, 3) and (out[:, 0] == 100.0).all() and (size[:, 0] == 1).all()
    assert (out[:, 1:] < 100.0).all()


def test_merge_is_the_size_weighted_mean_of_what_joins():
    x = torch.tensor([[[0.0], [1.0], [2.0], [3.0], [4.0]]])  # prefix, then A = {2, 4}, B = {1, 3}
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [1.0, 0.0], [1.0, 0.05]]])
    size = torch.tensor([[[1.0], [1.0], [3.0], [1.0], [1.0]]])
    m = merge.bipartite_soft_matching(keys, 1, 1)  # token 4 matches token 3 best (cosine ~1)
    out, new_size = merge.merge_weighted(m, x, size)
    assert out[0, :, 0].tolist() == pytest.approx([0.0, 2.0, 1.0, 3.5])  # [prefix, unmerged A, B with 4 in 3]
    assert new_size[0, :, 0].tolist() == [1.0, 3.0, 1.0, 2.0]
    m2 = merge.bipartite_soft_matching(keys, 2, 1)  # token 2 (size 3) joins token 1
    out2, size2 = merge.merge_weighted(m2, x, size)
    assert out2[0, :, 0].tolist() == pytest.approx([0.0, (1.0 + 3 * 2.0) / 4, 3.5])
    assert size2[0, :, 0].tolist() == [1.0, 4.0, 2.0]


@pytest.mark.parametrize("variant", [{"init_values": 0.1, "qk_norm": True}, {"global_pool": "avg", "fc_norm": True}])
def test_a_merging_block_that_merges_nothing_is_the_stock_block(variant):
    """The split block calls every submodule timm's Block.forward calls (layer scale, qk norm), and proportional
    attention at size 1 changes nothing."""
    model = pruning.apply(tiny_vit(**variant), "tome:3=2")
    x = torch.randn(2, 65, 64)
    with torch.no_grad():
        for blk in model.blocks[:3]:
            out, size = tome_method.merging_block(blk, x, torch.ones(2, 65, 1), 0, 1, model._vitsearch)
            torch.testing.assert_close(out, blk(x))
            assert (size == 1).all()


# Token counts -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("config", ["tome:r=4", "tome:0=8,3=13,6=5"])
def test_every_block_sees_the_scheduled_and_official_token_count(config, batch, images):
    model = pruning.apply(tiny_vit(), config)
    seen: list[int] = []
    hooks = [blk.attn.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
             for blk in model.blocks]
    mlp_seen: list[int] = []
    hooks += [blk.mlp.register_forward_pre_hook(lambda m, args: mlp_seen.append(args[0].shape[1]))
              for blk in model.blocks]
    with torch.inference_mode():
        out = model(images[:batch])
    for h in hooks:
        h.remove()
    schedule = model.token_schedule
    rs = [0] * 12
    for s in schedule.selectors:
        rs[s.block] = s.n_in - s.n_keep
    counts, final = official_counts(65, rs)
    assert seen == list(schedule.block_tokens) == counts == pruning.prune_state(model).block_tokens
    assert mlp_seen == counts[1:] + [final] and schedule.final_tokens == final  # the MLP runs after the merge
    assert out.shape == (batch, 10)


@pytest.mark.parametrize("r, final", [(8, 101), (13, 41)])
def test_deit_small_counts_are_the_officials(r, final):
    schedule = token_schedule(PruneConfig.parse(f"tome:r={r}"), depth=12, num_patches=196)
    counts, official_final = official_counts(197, [r] * 12)
    assert list(schedule.block_tokens) == counts and schedule.final_tokens == official_final == final


def test_config_forms_are_one_normalised_config():
    c = PruneConfig.parse("tome:r=8")
    assert str(c) == "tome:r=8" and c.every == 8 and PruneConfig.parse(c.to_dict()) == c
    assert PruneConfig.parse(str(c)) == c
    per_block = PruneConfig.parse(",".join(f"{b}=8" for b in range(12)).join(["tome:", ""]))
    key = pruning.canonical_key
    assert key(c, depth=12, num_patches=196) == key(per_block, depth=12, num_patches=196)
    assert key(PruneConfig.parse("tome:r=0"), depth=12, num_patches=196) == "none"
    mixed = PruneConfig.parse("tome:r=8,3=13")  # a block's own r over the constant
    assert token_schedule(mixed, depth=12, num_patches=196).block_tokens[:5] == (197, 189, 181, 173, 160)


# Training ---------------------------------------------------------------------------------------------------

def test_a_tome_config_trains_through_the_merges(images):
    """Training-free by default, yet fine-tunable: gradients reach every block through the merges, nothing new
    is added, and a training forward merges as inference does."""
    base = tiny_vit()
    model = pruning.apply(copy.deepcopy(base), "tome:r=4")
    assert set(model.state_dict()) == set(base.state_dict()) and model.prune_method.new_parameters == ()
    with torch.no_grad():
        inference = model.eval()(images)
    model.train()
    logits = model(images)
    torch.testing.assert_close(logits, inference)  # no dropout in the tiny model
    torch.nn.functional.cross_entropy(logits, torch.arange(8) % 10).backward()
    for i in (0, 5, 11):
        assert model.blocks[i].attn.qkv.weight.grad.abs().sum() > 0
        assert model.blocks[i].mlp.fc1.weight.grad.abs().sum() > 0


# Export -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 2])
def test_tome_exports_with_parity_at_the_scheduled_counts(batch, tmp_path):
    from vitsearch import export

    result = exported_with_parity("tome:r=4", batch, tmp_path)
    assert export.read_metadata(result.path)["config"] == "tome:r=4"


# Bad input --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, needle", [
    ("tome:r=40", "ToMe's r=40 at block 0 merges more tokens than the block can: it holds 65 tokens, of which at "
                  "most 32 can merge"),
    ("tome:r=6", "ToMe's r=6 at block 9 merges more tokens than the block can: it holds 11 tokens, of which at most 5"),
    ("tome:3=0.5", "ToMe's r for block 3 is 0.5: give the whole number"),
    ("tome:r=8,evit:3=0.7", "config 'tome:r=8,evit:3=0.7' mixes methods ('tome' and 'evit')"),
    ("tome:r=8,r=4", "gives r= twice"),
    ("spvit:r=0.5", "spvit takes no setting for every block"),
    ("tome:12=4", "selector at block 12 does not exist"),
])
def test_bad_tome_configs_are_refused_with_one_message_and_the_model_unchanged(config, needle):
    model = tiny_vit()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(VitsearchError) as e:
        pruning.apply(model, config)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert type(model).__name__ == "VisionTransformer"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_cli_refuses_a_too_large_r_naming_it(tmp_path, capsys):
    from vitsearch.cli import main
    from vitsearch.models import create_model

    checkpoint = tmp_path / "digits.pt"
    torch.save(create_model("digits").state_dict(), checkpoint)
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "digits", "--checkpoint", str(checkpoint), "--config", "tome:r=40",
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ToMe's r=40 at block 0" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# FLOPs ------------------------------------------------------------------------------------------------------

def test_traced_macs_are_the_analytic_formula_at_the_scheduled_counts_plus_the_matching():
    """Attention at each block's count, the MLP at the merged count (TokenSchedule.mlp_tokens), and the one
    matmul ToMe adds: the similarity of A and B on the keys, |A| x |B| x head_dim per merging block."""
    from vitsearch.flops import analytic_model_macs, count_macs

    model = pruning.apply(tiny_vit(), "tome:r=4,3=9")
    schedule = model.token_schedule
    head_dim = 64 // 4
    matching = 0
    for n in schedule.block_tokens:
        a = merge.max_merges(n, 1)  # |A|: the even positions after the class token
        matching += a * (n - 1 - a) * head_dim
    count = count_macs(model, batch=2)
    assert count.block_tokens == schedule.block_tokens
    assert count.matmul == 2 * (analytic_model_macs(model) + matching)


# Latency components -----------------------------------------------------------------------------------------

def test_the_timed_components_cover_every_config_and_export_with_parity(tmp_path):
    """What a table would profile: every component a tome config charges is a declared kind whose grid spans its
    counts, and each timed module exports and runs in onnxruntime as in PyTorch."""
    from vitsearch import export
    from vitsearch.latency.components import GridSpec
    from vitsearch.pruning.methods.tome import latency

    model = pruning.apply(tiny_vit(), "tome:r=4")
    specs = {kind.name: (kind.grid(1, 64, GridSpec()), kind.build) for kind in latency.KINDS}
    for config in ("tome:r=4", "tome:r=2", "tome:0=32,1=16", "tome:11=1", "tome:r=4,0=8,9=2"):
        for kind, n, k in pruning.method_of("tome").components(token_schedule(PruneConfig.parse(config), depth=12,
                                                                              num_patches=64)):
            if kind == "block":
                continue
            pts = specs[kind][0]
            assert min(p[0] for p in pts) <= n <= max(p[0] for p in pts), (kind, n)
            if kind == "tome_merge":  # r = n - k within what the grid merges at the next n up
                assert 1 <= n - k <= max(pn - pk for pn, pk in pts if pn >= n)
    gen = torch.Generator().manual_seed(0)
    for kind, (_, build) in specs.items():
        timed = build(model, model._vitsearch, 2, gen)
        module, dynamic, example = timed.module, timed.dynamic, timed.inputs(33, 25)
        assert len(dynamic) == len(example)
        path = export.export_onnx(module, example, tmp_path / f"{kind}.onnx")
        with torch.no_grad():
            expected = module(*example)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = export.run_onnxruntime(path, [t for t in example if t.dim() > 1])  # count's values are never read
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(torch.from_numpy(g), e, atol=1e-4, rtol=1e-4)


def test_tome_and_evit_are_offered_and_profiled():
    """Both are in what a search space may offer and their kinds in every latency table."""
    from vitsearch.latency import components_of
    from vitsearch.latency.components import kinds
    from vitsearch.models import geometry

    assert pruning.pruning_methods() == ("spvit", "evovit", "tome", "evit")
    assert {"tome_attn", "tome_merge", "tome_mlp", "evit_attn", "evit_fuse", "evit_mlp"} <= set(kinds())
    assert [p.kind for p in components_of("tome:r=4", geometry(tiny_vit()))][2:5] == ["tome_attn", "tome_merge",
                                                                                      "tome_mlp"]


def test_brief_training_fine_tunes_a_tome_config_on_the_digits_data():
    """The search's brief training path (train_candidate) runs a tome config and moves the backbone."""
    from vitsearch.data.digits import digits_splits
    from vitsearch.models import create_model
    from vitsearch.training import TrainSettings, train_candidate

    torch.manual_seed(0)
    base = create_model("digits").eval()
    model = pruning.apply(copy.deepcopy(base), "tome:r=2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_candidate(model, base, digits_splits(base), TrainSettings(steps=2, batch_size=8, warmup_steps=0))
    assert result.steps == 2 and math.isfinite(result.final_loss["total"])
    assert set(model.state_dict()) == set(before)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items() if k.startswith("blocks.0."))
