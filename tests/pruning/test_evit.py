"""EViT (youweiliang/evit) as a vitsearch method: the same outputs as the official algorithm, written out here from
the paper and the official ``evit.py`` on the same stock weights; the same per-block token counts; the keep-rate
warm-up of its recipe; ONNX export with parity; bad input."""
import copy
import math

import pytest
import torch

from vitsearch import pruning
from vitsearch.errors import VitsearchError
from vitsearch.pruning import PruneConfig, token_schedule
from vitsearch.pruning.methods.evit import fuse
from vitsearch.pruning.methods.evit import method as evit_method

from .test_pruning import exported_with_parity, images, tiny_vit  # noqa: F401  (images is a fixture)


# The reference: the official algorithm, written out straightforwardly -----------------------------------------

def ref_evit(model, img, rates, *, fuse_token=True, normalise=False, heads="mean"):
    """Official EViT Block forward over a stock timm ViT: explicit attention, then (in a pruning block) the class
    row averaged over heads ranks x[:, 1:], top-k kept (sorted), the complement summed weighted by its attention."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(img)))
    for i, blk in enumerate(model.blocks):
        B, N, C = x.shape
        attn_mod = blk.attn
        qkv = attn_mod.qkv(blk.norm1(x)).reshape(B, N, 3, attn_mod.num_heads, C // attn_mod.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * attn_mod.scale).softmax(dim=-1)
        x = x + attn_mod.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
        if i in rates:
            left = math.ceil(rates[i] * (N - 1))
            if left < N - 1:
                cls_attn = attn[:, :, 0, 1:]
                cls_attn = cls_attn.mean(dim=1) if heads == "mean" else cls_attn[:, 0]
                _, idx = torch.topk(cls_attn, left, dim=1, largest=True, sorted=True)
                non_cls = x[:, 1:]
                x_others = torch.gather(non_cls, 1, idx[..., None].expand(-1, -1, C))
                mask = torch.ones_like(cls_attn, dtype=torch.bool).scatter(1, idx, False)
                compl = torch.stack([row.nonzero()[:, 0] for row in mask])  # the complement, ascending
                non_topk = torch.gather(non_cls, 1, compl[..., None].expand(-1, -1, C))
                w = torch.gather(cls_attn, 1, compl)
                if normalise:
                    w = w / w.sum(dim=1, keepdim=True)
                extra = torch.sum(non_topk * w[..., None], dim=1, keepdim=True)
                x = torch.cat([x[:, :1], x_others] + ([extra] if fuse_token else []), dim=1)
        x = x + blk.mlp(blk.norm2(x))
    return model.forward_head(model.norm(x))


def official_counts(tokens, rates, depth=12):
    counts = []
    for i in range(depth):
        counts.append(tokens)
        if i in rates:
            left = math.ceil(rates[i] * (tokens - 1))
            if left < tokens - 1:
                tokens = 1 + left + 1
    return counts, tokens


CONFIGS = {"evit:3=0.7,6=0.7,9=0.7": {3: 0.7, 6: 0.7, 9: 0.7}, "evit:1=0.5,2=0.5,10=0.25": {1: 0.5, 2: 0.5, 10: 0.25},
           "evit:0=0.3": {0: 0.3}}


# Outputs ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS)
def test_evit_gives_the_official_algorithms_output_on_the_same_weights(config, images):
    """Breaks if the ranking (class row, mean over heads), the top-k, the fused token, its unnormalised attention
    weights, or the pruning's place (after attention, before the MLP) changes."""
    model = tiny_vit()
    rates = CONFIGS[config]
    with torch.no_grad():
        expected = ref_evit(model, images, rates)
        got = pruning.apply(copy.deepcopy(model), config).eval()(images)
        for broken in (dict(fuse_token=False), dict(normalise=True), dict(heads="first")):
            assert not torch.allclose(ref_evit(model, images, rates, **broken), expected, atol=1e-4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_fused_token_is_the_attention_weighted_sum_of_the_inattentive_tokens():
    x = torch.arange(6.0)[None, :, None].expand(1, 6, 2)  # token i holds i; token 0 is the class token
    attn = torch.tensor([[0.1, 0.4, 0.05, 0.3, 0.15]])  # over tokens 1..5
    out = fuse.keep_and_fuse(x, attn, 2, 1)
    assert out[0, :, 0].tolist() == pytest.approx([0.0, 2.0, 4.0, 0.1 * 1 + 0.05 * 3 + 0.15 * 5])


def test_a_pruning_block_at_keep_one_is_the_stock_block(images):
    for variant in ({"init_values": 0.1, "qk_norm": True}, {}):
        model = tiny_vit(**variant)
        expected = model(images)
        torch.testing.assert_close(pruning.apply(copy.deepcopy(model), "evit:3=1.0,6=1.0").eval()(images), expected)


@pytest.mark.parametrize("variant", [{"init_values": 0.1, "qk_norm": True}, {"global_pool": "avg", "fc_norm": True}])
def test_the_split_block_runs_every_submodule_of_the_stock_block(variant):
    """A reduction that changes nothing gives the stock block's output (layer scale, qk norm included)."""
    model = pruning.apply(tiny_vit(**variant), "evit:3=0.5")
    x = torch.randn(2, 65, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.blocks[3](x, reduce=lambda t: t), model.blocks[3](x))


# Token counts -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("config", CONFIGS)
def test_every_block_sees_the_scheduled_and_official_token_count(config, batch, images):
    model = pruning.apply(tiny_vit(), config)
    seen: list[int] = []
    hooks = [blk.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1])) for blk in model.blocks]
    mlp_seen: list[int] = []
    hooks += [blk.mlp.register_forward_pre_hook(lambda m, args: mlp_seen.append(args[0].shape[1]))
              for blk in model.blocks]
    with torch.inference_mode():
        out = model(images[:batch])
    for h in hooks:
        h.remove()
    counts, final = official_counts(65, CONFIGS[config])
    assert seen == list(model.token_schedule.block_tokens) == counts
    assert mlp_seen == counts[1:] + [final] == [*model.token_schedule.block_tokens[1:], model.token_schedule.final_tokens]
    assert out.shape == (batch, 10) and min(seen) < 65


def test_deit_small_counts_are_the_officials():
    """0.7 at blocks 3, 6, 9 of DeiT-S: 197, then 140, 100, 72 (the fused token re-ranked each time)."""
    schedule = token_schedule(PruneConfig.parse("evit:3=0.7,6=0.7,9=0.7"), depth=12, num_patches=196)
    counts, final = official_counts(197, {3: 0.7, 6: 0.7, 9: 0.7})
    assert list(schedule.block_tokens) == counts and counts[3:10:3] == [197, 140, 100] and final == 72
    assert schedule.final_tokens == 72
    # the official float product: ceil(0.55 * 100) = 56, not 55
    assert official_counts(101, {0: 0.55})[1] == 1 + 56 + 1 == fuse.kept_count(100, 0.55) + 2


def test_each_image_gives_the_same_output_alone_as_in_a_batch(images):
    model = pruning.apply(tiny_vit(), "evit:3=0.7,6=0.7,9=0.7")
    with torch.inference_mode():
        batched = model(images)
        alone = torch.cat([model(images[i:i + 1]) for i in range(len(images))])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)


# Training ---------------------------------------------------------------------------------------------------

def test_finalize_trains_through_the_official_keep_rate_warm_up():
    """Keep rate 1 for the first 10/300 of the steps, a cosine down to the config's rates by 110/300, then the
    config (the official recipe's shrink_start_epoch=10, shrink_epochs=100 of 300)."""
    from vitsearch.training import progressive
    from vitsearch.training.settings import FinalizeSettings

    config = PruneConfig.parse("evit:3=0.7,6=0.5")
    phases = progressive.plan(config, FinalizeSettings(), 300)
    assert [(p.start, p.end) for p in phases] == [(0, 10), (10, 35), (35, 60), (60, 85), (85, 110), (110, 300)]
    assert phases[0].config.keep == {3: 1.0, 6: 1.0} and phases[-1].config == config
    rates = [p.config.keep[6] for p in phases]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == len(rates)
    # the official adjust_keep_rate in the middle of each warm-up phase
    for p in phases[1:-1]:
        it = (p.start + p.end) / 2 - 10
        official = 0.5 + (1 - 0.5) * (math.cos(it / 100 * math.pi) + 1) * 0.5
        assert p.config.keep[6] == pytest.approx(official, abs=1e-3)


def test_an_evit_config_trains_through_the_pruning(images):
    base = tiny_vit()
    model = pruning.apply(copy.deepcopy(base), "evit:3=0.7,6=0.7,9=0.7")
    assert set(model.state_dict()) == set(base.state_dict()) and model.prune_method.new_parameters == ()
    with torch.no_grad():
        inference = model.eval()(images)
    model.train()
    logits = model(images)
    torch.testing.assert_close(logits, inference)
    torch.nn.functional.cross_entropy(logits, torch.arange(8) % 10).backward()
    for i in (0, 5, 11):
        assert model.blocks[i].attn.qkv.weight.grad.abs().sum() > 0


# Export -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 2])
def test_evit_exports_with_parity_at_the_scheduled_counts(batch, tmp_path):
    exported_with_parity("evit:3=0.7,6=0.7,9=0.7", batch, tmp_path)


# Bad input --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, needle", [
    ("evit:3=1.5", "keep ratio 1.5 for the selector at block 3 is outside (0, 1]"),
    ("evit:r=0.7", "evit takes no setting for every block"),
    ("evit:3=0.7,tome:r=8", "config 'evit:3=0.7,tome:r=8' mixes methods ('evit' and 'tome')"),
    ("evit:12=0.7", "selector at block 12 does not exist"),
])
def test_bad_evit_configs_are_refused_with_one_message_and_the_model_unchanged(config, needle):
    model = tiny_vit()
    with pytest.raises(VitsearchError) as e:
        pruning.apply(model, config)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert type(model).__name__ == "VisionTransformer"


def test_evit_refuses_a_model_without_a_class_token_and_leaves_it_unpatched():
    model = tiny_vit(class_token=False, global_pool="avg")
    with pytest.raises(VitsearchError, match="evit cannot prune this model: it ranks tokens by class-token attention"):
        pruning.apply(model, "evit:3=0.7")
    assert type(model).__name__ == "VisionTransformer"
    with pytest.raises(VitsearchError, match="no class token"):
        token_schedule(PruneConfig.parse("evit:3=0.7"), depth=12, num_patches=64, num_prefix=0)


# FLOPs ------------------------------------------------------------------------------------------------------

def test_traced_macs_are_the_analytic_formula_at_the_scheduled_counts_plus_the_ranking_and_fusion():
    """Attention at each block's count, the MLP at the pruned count (TokenSchedule.mlp_tokens), and the matmuls
    EViT adds per pruning block: the class token's attention row (T x C, beside fused attention) and the fused
    token ((T - P - k) x C)."""
    from vitsearch.flops import analytic_model_macs, count_macs

    model = pruning.apply(tiny_vit(), "evit:3=0.7,6=0.7,9=0.7")
    schedule = model.token_schedule
    extra = sum(schedule.block_tokens[s.block] * 64 + (s.n_in - s.n_keep) * 64 for s in schedule.selectors)
    count = count_macs(model, batch=2)
    assert count.block_tokens == schedule.block_tokens
    assert count.matmul == 2 * (analytic_model_macs(model) + extra)


# Latency components -----------------------------------------------------------------------------------------

def test_the_timed_components_cover_every_config_and_export_with_parity(tmp_path):
    from vitsearch import export
    from vitsearch.latency.components import GridSpec
    from vitsearch.pruning.methods.evit import latency

    model = pruning.apply(tiny_vit(), "evit:3=0.7")
    specs = {kind.name: (kind.grid(1, 64, GridSpec()), kind.build) for kind in latency.KINDS}
    for config in [*CONFIGS, "evit:1=0.1,2=0.1,3=0.1"]:
        for kind, n, k in pruning.method_of("evit").components(token_schedule(PruneConfig.parse(config), depth=12,
                                                                              num_patches=64)):
            if kind == "block":
                continue
            pts = specs[kind][0]
            assert min(p[0] for p in pts) <= n <= max(p[0] for p in pts), (kind, n)
            if kind == "evit_fuse":
                assert 1 <= k <= n - 2
    gen = torch.Generator().manual_seed(0)
    for kind, (_, build) in specs.items():
        timed = build(model, model._vitsearch, 2, gen)
        module, dynamic, example = timed.module, timed.dynamic, timed.inputs(33, 20)
        assert len(dynamic) == len(example)
        path = export.export_onnx(module, example, tmp_path / f"{kind}.onnx")
        with torch.no_grad():
            expected = module(*example)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = export.run_onnxruntime(path, [t for t in example if t.dim() > 1])  # count's values are never read
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(torch.from_numpy(g), e, atol=1e-4, rtol=1e-4)
