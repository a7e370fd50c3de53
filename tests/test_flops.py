"""MAC counting: no op goes uncounted, fused attention is counted, fvcore agrees with the analytic ViT formula."""
import pytest
import timm
import torch
import torch.nn as nn

from vitsearch import pruning
from vitsearch.errors import VitsearchError
from vitsearch.flops import (MATMUL_OPS, ZERO_COST_OPS, analytic_model_macs, analytic_vit_macs, block_macs,
                             count_by_block, count_macs, op_handles)
from vitsearch.models import geometry

CONFIGS = ["none", "spvit:2=0.5,4=0.5", "evovit:2=0.5,4=0.5"]


def tiny_vit(config: str = "none", fused: bool = True, **kw) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vitsearch_test_vit", **{"depth": 6, **kw}).eval()
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    return pruning.apply(model, config)


@pytest.mark.parametrize("variant", [{}, {"init_values": 0.1, "qk_norm": True}, {"global_pool": "avg", "fc_norm": True}])
@pytest.mark.parametrize("config", CONFIGS)
def test_no_op_goes_uncounted(config, variant):
    count = count_macs(tiny_vit(config, **variant), strict=False)
    assert count.unsupported == {}
    assert count.by_operator["scaled_dot_product_attention"] > 0  # fused attention is not invisible
    assert count.total > count.matmul > 0


def test_token_selection_work_is_counted():
    spvit = count_macs(tiny_vit("spvit:2=0.5,4=0.5")).by_operator
    assert spvit["matmul"] > 0 and spvit["topk"] > 0 and spvit["index"] > 0 and spvit["scatter"] > 0
    evovit = count_macs(tiny_vit("evovit:2=0.5,4=0.5")).by_operator
    assert evovit["argsort"] > 0 and evovit["index"] > 0 and evovit["matmul"] > 0  # class-attention rows


def test_an_op_without_handle_is_an_error():
    class Odd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.erfinv(x.clamp(-0.5, 0.5))

    with pytest.raises(VitsearchError, match="erfinv"):
        count_macs(Odd(), input_size=(4,))
    assert count_macs(Odd(), input_size=(4,), strict=False).unsupported == {"aten::erfinv": 1}


def test_zero_cost_ops_and_counted_ops_are_disjoint():
    assert not ZERO_COST_OPS & set(op_handles())


@pytest.mark.parametrize("config", CONFIGS)
def test_fused_and_unfused_attention_count_the_same(config):
    fused, unfused = count_macs(tiny_vit(config, fused=True)), count_macs(tiny_vit(config, fused=False))
    assert "scaled_dot_product_attention" not in unfused.by_operator
    assert fused.total == unfused.total
    assert fused.matmul == unfused.matmul


@pytest.mark.parametrize("config", ["none", "spvit:2=0.5,4=0.5"])
def test_analytic_formula_equals_fvcore_per_block(config):
    model = tiny_vit(config)
    count = count_macs(model, batch=2)
    tokens = model.token_schedule.block_tokens
    assert count.block_tokens == tokens
    expected = [2 * block_macs(n, 64, 256) for n in tokens]
    assert count_by_block(count, 6, matmul_only=True) == expected  # multiply-adds: exact
    for total, macs in zip(count_by_block(count, 6), expected):  # + norms, residuals, GELU, softmax
        assert macs < total < 1.05 * macs


def test_deit_small_matches_the_analytic_count():
    model = timm.create_model("deit_small_patch16_224", pretrained=False)  # fused attention, timm's default
    count = count_macs(model)
    analytic = analytic_model_macs(model)
    assert analytic == analytic_vit_macs(geometry(model), [197] * 12)
    assert 4.55e9 < analytic < 4.65e9  # DeiT-S: 4.6 GMACs in the paper
    assert count.matmul == analytic
    assert abs(count.total - analytic) / analytic < 0.02


@pytest.mark.parametrize("config", ["spvit:2=0.5,4=0.5", "evovit:2=0.5,4=0.5"])
def test_pruned_counts_follow_the_token_schedule(config):
    dense, model = count_macs(tiny_vit()), tiny_vit(config)
    pruned = count_macs(model)
    assert pruned.block_tokens == model.token_schedule.block_tokens
    analytic, analytic_dense = analytic_model_macs(model), analytic_model_macs(tiny_vit())
    selectors = sum(v for k, v in pruned.matmul_by_module.items() if k.startswith("token_selectors.") and k.count(".") == 1)
    if config.startswith("spvit"):  # each package is one (1, n_in) @ (n_in, C) matmul per image
        packages = sum(step.n_in for step in model.token_schedule.selectors) * model.embed_dim
        assert pruned.matmul - selectors - packages == analytic  # blocks, patch embedding and head: exact
    # What the formula leaves out (selectors, Evo-ViT's class-attention rows, elementwise) stays small.
    assert analytic < pruned.total < 1.05 * analytic
    assert pruned.total / dense.total == pytest.approx(analytic / analytic_dense, rel=0.03)
    assert pruned.total < 0.8 * dense.total


def test_counts_scale_with_batch_and_restore_training_mode():
    model = tiny_vit("spvit:2=0.5,4=0.5").train()
    one, four = count_macs(model), count_macs(model, batch=4)
    assert model.training  # counted in eval mode (the pruned inference graph), mode restored
    assert four.total == 4 * one.total
    assert one.gmacs == one.matmul / 1e9 == four.gmacs and one.gmacs_all_ops == one.total / 1e9 == four.gmacs_all_ops
    assert set(one.to_dict()) >= {"total", "matmul", "gmacs", "gmacs_all_ops", "convention", "by_operator"}
    assert {k for k in one.by_operator if k in MATMUL_OPS} >= {"linear", "conv", "matmul", "scaled_dot_product_attention"}
