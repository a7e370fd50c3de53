"""Each mechanism of each method, tested so that removing, reversing or replacing it by identity fails a test
(issue 14 item 6), and the models a method refuses."""
import copy

import pytest
import torch

from vitsearch import pruning
from vitsearch.errors import VitsearchError
from vitsearch.pruning.methods.spvit import algorithm as spvit
from vitsearch.pruning.methods.evovit import algorithm as evovit
from vitsearch.pruning.methods.spvit import SPViTRecord
from vitsearch.training import TrainSettings

from .test_pruning import images, tiny_vit  # noqa: F401  (images is a fixture: the same tiny model and inputs)


class FixedScores(torch.nn.Module):
    """A selector whose keep log-odds (B, N) are given."""

    def __init__(self, margin: torch.Tensor) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, x, mask=None):
        return self.margin, torch.sigmoid(self.margin)


# SPViT ------------------------------------------------------------------------------------------------------

def test_spvit_inference_keeps_the_highest_keep_margins_in_place_order():
    margin = torch.tensor([[0.1, 3.0, -2.0, 2.0, 0.5, -1.0]])
    patches = torch.arange(6.0)[None, :, None].expand(1, 6, 2)  # token i holds the value i
    kept, pkg = spvit.prune_hard(FixedScores(margin), patches, 3)
    assert kept[0, :, 0].tolist() == [1.0, 3.0, 4.0]  # the top 3 by margin, highest first
    w = torch.sigmoid(margin[0, [0, 2, 5]])
    assert float(pkg[0, 0, 0]) == pytest.approx(float((w * torch.tensor([0.0, 2.0, 5.0])).sum() / w.sum()))


@pytest.mark.parametrize("spread", [0.1, 3.0, 30.0])
@pytest.mark.parametrize("level", [-5.0, 5.0])
def test_spvit_topk_training_keeps_exactly_the_target_count_whatever_the_scores(spread, level):
    torch.manual_seed(0)
    margin = level + spread * torch.randn(256, 16)
    kept, _ = spvit.prune_soft(FixedScores(margin), torch.randn(256, 16, 4), torch.ones(256, 16), keep=0.25,
                               draw="topk")
    assert (kept.sum(dim=1) == 4).all()


def test_spvit_topk_training_draws_follow_the_scores_and_anneal_to_the_inference_top_k():
    torch.manual_seed(0)
    margin = torch.randn(512, 16) * 2
    sel, patches, alive = FixedScores(margin), torch.randn(512, 16, 4), torch.ones(512, 16)
    top = torch.zeros(512, 16).scatter(1, margin.topk(4, dim=1).indices, 1.0)
    overlap = {noise: float((spvit.prune_soft(sel, patches, alive, 0.25, draw="topk", noise=noise)[0] * top).sum()
                            / (512 * 4)) for noise in (0.0, 0.25, 1.0)}
    assert overlap[0.0] == 1.0  # no noise: exactly what inference keeps
    assert 0.4 < overlap[1.0] < 0.95  # noise explores, yet favours high scores (random keeps 0.25)
    assert overlap[1.0] + 0.1 < overlap[0.25] < 1.0  # less noise, closer to inference
    from vitsearch.pruning.methods.spvit import selection_noise
    assert selection_noise(0.0) == 1.0 and selection_noise(1.0) == 0.0


@pytest.mark.parametrize("draw", ["logodds", "topk"])
def test_spvit_training_gradient_moves_the_ranking_not_the_level(draw):
    """The straight-through gradient on the keep margins sums to zero in every image: the selector learns which
    tokens to keep, never "keep every token more" (uncentred, that common part taught the digits selectors to
    drop the digit: benchmarks/RESULTS.md)."""
    torch.manual_seed(0)
    margin = torch.randn(64, 16, requires_grad=True)
    kept, _ = spvit.prune_soft(FixedScores(margin), torch.randn(64, 16, 4), torch.ones(64, 16), 0.25, draw=draw)
    (kept * torch.rand(64, 16)).sum().backward()  # a loss that rewards keeping any token
    assert float(margin.grad.abs().sum()) > 0
    torch.testing.assert_close(margin.grad.sum(dim=1), torch.zeros(64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", [{}, {"global_pool": "avg", "fc_norm": True}])
def test_spvit_training_at_zero_noise_computes_what_inference_computes(variant, images):
    """Masked attention, packaging and pooling in training reproduce inference when the draws are the top-k:
    breaks if training stops masking, packages differently, or pools over the pruned tokens."""
    model = pruning.apply(tiny_vit(**variant), "spvit:3=0.5,6=0.5")
    with torch.no_grad():
        for sel in model.token_selectors.values():  # a spread of scores, like a trained selector
            sel.out[-1].weight.mul_(30)
        inference = model(images)
        model.train()
        state = pruning.prune_state(model)
        state.progress, state.train = 1.0, TrainSettings(spvit_draw="topk")  # noise 0: the draws are the inference top-k
        training = model(images)
    torch.testing.assert_close(training, inference, atol=2e-5, rtol=1e-4)


def test_spvit_latency_term_acts_above_the_schedule_and_pulls_the_decisions_down():
    """The computation-aware term: keeping more than the schedule costs latency, with a gradient on the decisions."""
    from vitsearch.training import LossWeights, PiecewiseLinear, SoftLatency

    model = pruning.apply(tiny_vit(), "spvit:3=0.5")
    schedule, method = model.token_schedule, model.prune_method
    state = pruning.PruneState()
    decisions = torch.ones(2, 64, requires_grad=True)  # every patch kept: over the schedule's 32
    state.method = SPViTRecord([decisions], [0.5])
    latency = SoftLatency(PiecewiseLinear([1, 65, 66], [0.1, 1.0, 1.02]))  # ms per block at n tokens
    parts: dict = {}
    loss = method.loss(torch.zeros(()), parts, state, schedule, None, LossWeights(ratio=0.0), latency)
    loss.backward()
    assert float(parts["latency"].detach()) > 0 and float(decisions.grad.sum()) > 0  # descent keeps fewer tokens


# Evo-ViT ----------------------------------------------------------------------------------------------------

def stage(k: int = 2):
    torch.manual_seed(0)
    patches = torch.randn(2, 6, 4)
    score = torch.tensor([[0.1, 0.5, 0.2, 0.9, 0.0, 0.3], [0.6, 0.1, 0.2, 0.3, 0.4, 0.5]])
    return patches, score, evovit.enter_stage(patches, score, k)


def test_evovit_slow_path_takes_the_most_attended_patches():
    patches, score, st = stage()
    torch.testing.assert_close(st.informative[0], patches[0, [3, 1]])
    torch.testing.assert_close(st.informative[1], patches[1, [0, 5]])


def test_evovit_representative_is_the_score_weighted_mean_of_the_placeholders():
    patches, score, st = stage()
    rest = [0, 2, 4, 5]  # image 0's placeholders
    w = score[0, rest]
    torch.testing.assert_close(st.representative[0, 0], (w[:, None] * patches[0, rest]).sum(0) / w.sum())


def test_evovit_leaving_a_stage_restores_every_token_in_its_place():
    patches, score, st = stage()
    restored, restored_score = evovit.leave_stage(st)
    torch.testing.assert_close(restored, patches)
    torch.testing.assert_close(restored_score, score)


def test_evovit_fast_update_adds_the_representatives_residual_and_the_score_moves():
    patches, score, st = stage()
    P, k = 1, st.n_keep
    out = torch.randn(2, P + k + 1, 4)  # a block's output: prefix, informative, representative
    before, rep = st.placeholders.clone(), st.representative.clone()
    cls = torch.full((2, k + 1), 2.0)  # this block's class attention on informative + representative
    evovit.after_block(st, out, P, cls)
    torch.testing.assert_close(st.placeholders, before + (out[:, -1:] - rep))
    torch.testing.assert_close(st.informative, out[:, P:P + k])
    restored, new_score = evovit.leave_stage(st)
    assert new_score[0, 3] == pytest.approx(0.5 * 0.9 + 0.5 * 2.0)  # informative: smoothed with the new attention
    assert new_score[0, 0] == pytest.approx(0.1)  # placeholders keep their score


def test_evovit_model_fast_updates_restores_and_reranks_at_every_stage(images, monkeypatch):
    """The wiring in the model: the placeholders change across a stage by the representative's residual (one
    vector per image), every patch returns to its place, and the second stage ranks by a score the first updated."""
    model = tiny_vit()
    for blk in model.blocks:  # peaky attention, so the ranking moves as in a trained ViT
        blk.attn.qkv.weight.data *= 4
    model = pruning.apply(model, "evovit:4=0.5,8=0.5")
    stages, original = [], evovit.enter_stage

    def recorded(patches, score, n_keep):
        stages.append((patches.clone(), score.clone(), original(patches, score, n_keep)))
        return stages[-1][2]

    captured = {}
    model.norm.register_forward_pre_hook(lambda m, args: captured.update(tokens=args[0]))
    monkeypatch.setattr(evovit, "enter_stage", recorded)
    with torch.inference_mode():
        model(images)
    (p1, s1, st1), (p2, s2, st2) = stages
    order = st1.order
    moved = p2.gather(1, order[..., None].expand(-1, -1, p2.shape[-1])) - p1.gather(
        1, order[..., None].expand(-1, -1, p1.shape[-1]))  # (B, N, C) per patch, in stage-1 order
    k = st1.n_keep
    fast = moved[:, k:]  # the placeholders: all moved by one and the same residual
    assert float(fast.abs().amax()) > 1e-3
    torch.testing.assert_close(fast, fast[:, :1].expand_as(fast), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(moved[:, :k], fast[:, :1].expand(-1, k, -1))  # the slow ones went through blocks
    inf_idx = order[:, :k]
    assert not torch.allclose(s2.gather(1, inf_idx), s1.gather(1, inf_idx))  # their score moved with the blocks
    torch.testing.assert_close(s2.gather(1, order[:, k:]), s1.gather(1, order[:, k:]))  # placeholders' did not
    assert captured["tokens"].shape == (8, 1 + k + 1, 64)  # the class-token head's open last stage: slow tokens


def test_evovit_assisted_head_reads_a_normalised_class_token(images):
    model = pruning.apply(tiny_vit(global_pool="avg", fc_norm=True), "evovit:4=0.5").train()
    seen = {}
    linear = model.head_aux[-1] if isinstance(model.head_aux, torch.nn.Sequential) else model.head_aux
    linear.register_forward_pre_hook(lambda m, args: seen.update(x=args[0].detach()))
    model(images)
    assert pruning.prune_state(model).method.aux_logits is not None
    assert float(seen["x"].std(dim=-1).mean()) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("variant", [{}, {"qk_norm": True}])
def test_evovit_records_the_stock_attentions_class_token_row(variant, fused, images, monkeypatch):
    """The class-attention row Evo-ViT records at each block that feeds a selection is the row the stock timm
    attention computes (its own attention matrix, which its unfused path hands to ``attn_drop``) for the class
    token on the same weights and the same input: the block before the first selector on all tokens, the stage
    blocks on the slow ones. The first stage ranks the patches by that row summed over heads. Breaks if the row
    drops the scale, q_norm / k_norm, or is another token's, or the score reads another block's row."""
    stock = tiny_vit(**variant)
    for blk in stock.blocks:  # peaky attention, as in a trained ViT, so that a wrong row shows
        blk.attn.qkv.weight.data *= 4
    stock.requires_grad_(False)
    model = pruning.apply(copy.deepcopy(stock), "evovit:4=0.5,8=0.5")
    state = pruning.prune_state(model)
    inputs, rows, scores = {}, {}, []
    for i, blk in enumerate(model.blocks):
        blk.attn.fused_attn = fused
        blk.register_forward_pre_hook(lambda m, args, i=i: inputs.update({i: args[0]}))
        blk.attn.register_forward_hook(
            lambda m, args, out, i=i: rows.update({i: state.cls_attn}) if state.record_cls_attn else None)
    enter = evovit.enter_stage

    def recorded(patches, score, n_keep):
        scores.append(score)
        return enter(patches, score, n_keep)

    monkeypatch.setattr(evovit, "enter_stage", recorded)
    with torch.no_grad():
        model(images)
    assert sorted(rows) == [3, 4, 5, 6, 7]  # the block before the first selector, the first stage's blocks
    for i, row in rows.items():
        attn, seen = stock.blocks[i].attn, {}
        attn.fused_attn = False
        hook = attn.attn_drop.register_forward_pre_hook(lambda m, args: seen.update(attn=args[0]))
        with torch.no_grad():
            attn(stock.blocks[i].norm1(inputs[i]))
        hook.remove()
        assert row.shape == seen["attn"][:, :, 0].shape  # (B, H, tokens the block computed on)
        torch.testing.assert_close(row, seen["attn"][:, :, 0])
    torch.testing.assert_close(scores[0], rows[3][:, :, 1:].sum(dim=1))


@pytest.fixture
def mean_head(monkeypatch):
    """Evo-ViT with the official DeiT head: the mean of all patch tokens (``EvoViT.head_pooling = "avg"``)."""
    monkeypatch.setattr(pruning.METHODS["evovit"], "head_pooling", "avg")


@pytest.mark.parametrize("variant", [{}, {"global_pool": "avg", "fc_norm": True}])
def test_evovit_mean_head_reads_every_patch_so_the_placeholders_reach_the_logits(variant, images, mean_head,
                                                                                 monkeypatch):
    """The official DeiT Evo-ViT's head: the logits are the classifier on the mean of every patch token after the
    last stage, placeholders included, whatever the stock model pooled; the assisted head reads the class token.
    Breaks if the head reads the class token only, skips the placeholders, or the aux head reads the mean."""
    model = pruning.apply(tiny_vit(**variant), "evovit:4=0.5,8=0.5")
    captured = {}
    model.norm.register_forward_hook(lambda m, args, out: captured.update(tokens=out))
    with torch.no_grad():
        logits = model(images)
        tokens = captured["tokens"]  # (B, P + N, C) normed
        torch.testing.assert_close(logits, model.head(model.fc_norm(tokens[:, 1:].mean(dim=1))))
        leave, calls = evovit.leave_stage, []

        def last_placeholders_noise(stage):  # the second (last) stage's placeholders replaced by noise
            calls.append(1)
            if len(calls) == 2:
                stage.placeholders = torch.randn_like(stage.placeholders)
            return leave(stage)

        monkeypatch.setattr(evovit, "leave_stage", last_placeholders_noise)
        assert not torch.allclose(model(images), logits, atol=1e-3)
        monkeypatch.setattr(evovit, "leave_stage", leave)
        model.train()
        model(images)
        torch.testing.assert_close(pruning.prune_state(model).method.aux_logits, model.head_aux(captured["tokens"][:, 0]))


@pytest.mark.parametrize("head_pooling", [None, "avg"])
@pytest.mark.parametrize("variant", [{}, {"fc_norm": True}, {"global_pool": "avg"}, {"global_pool": "avg", "fc_norm": False}])
def test_evovit_assisted_head_reads_the_other_pooling_normalised_as_the_main_heads_input(variant, head_pooling, images,
                                                                                         monkeypatch):
    """Under every pooling the patch accepts (class token or mean of the patches, with the final norm before or
    after pooling as timm builds it, and Evo-ViT's own mean head), the assisted head's classifier reads the pooling
    the main head does not, of the same tokens, normalised exactly as the stock model normalises its head's input
    (timm's ``global_pool_nlc``, ``norm``, ``fc_norm``). Breaks if it reads the main head's pooling, a raw
    residual stream, or a norm applied twice."""
    from timm.models.vision_transformer import global_pool_nlc

    monkeypatch.setattr(pruning.METHODS["evovit"], "head_pooling", head_pooling)
    model = tiny_vit(**variant)
    g = torch.Generator().manual_seed(3)
    for norm in (model.norm, model.fc_norm):  # affine norms, so a norm applied twice or to the wrong input shows
        for p in norm.parameters():
            p.data = torch.randn(p.shape, generator=g)
    model = pruning.apply(model, "evovit:4=0.5,8=0.5").train()
    linear = model.head_aux[-1] if isinstance(model.head_aux, torch.nn.Sequential) else model.head_aux
    torch.nn.init.normal_(linear.weight, generator=torch.Generator().manual_seed(2))  # not the main head's copy
    seen = {}
    # the first call's input only: (B, P + N, C) (a hook that returns nothing leaves the input as it is)
    model.norm.register_forward_pre_hook(lambda m, args: None if "tokens" in seen else seen.update(tokens=args[0]))
    with torch.no_grad():
        model(images)
        other = "avg" if model.global_pool == "token" else "token"
        expected = linear(model.fc_norm(global_pool_nlc(model.norm(seen["tokens"]), other, num_prefix_tokens=1)))
    assert seen["tokens"].shape[1] == 1 + 64  # training restores every patch for the mean
    torch.testing.assert_close(pruning.prune_state(model).method.aux_logits, expected)


def test_evovit_mean_head_pooling_is_the_methods_own_and_other_configs_get_the_stock_pooling_back(mean_head):
    """A supernet switches configs on one model: SPViT and the unpruned config pool as the stock model did."""
    model = pruning.apply(tiny_vit(), "evovit:4=0.5")
    assert model.global_pool == "avg" and model.base_pool == "token"
    pruning.apply(model, "spvit:3=0.5")
    assert model.global_pool == "token"
    pruning.apply(model, "none")
    assert model.global_pool == "token"


def test_evovit_class_token_head_computes_nothing_of_the_last_stages_placeholders(images, monkeypatch):
    """The default head of a class-token model reads x[:, 0] only: at inference the last stage's placeholders are
    neither fast-updated nor restored (the head gets the P + k + 1 slow tokens), with the same logits as the full
    restore; earlier stages still update theirs (the next stage re-ranks them), and training restores every token
    for the aux head on the mean. Breaks if the last stage updates or restores, or an earlier one stops updating."""
    model = pruning.apply(tiny_vit(), "evovit:4=0.5,8=0.25")
    fast, after = [], evovit.after_block
    monkeypatch.setattr(evovit, "after_block", lambda *a, **kw: fast.append(kw.get("fast", True)) or after(*a, **kw))
    shapes = []
    model.norm.register_forward_pre_hook(lambda m, args: shapes.append(args[0].shape[1]))
    with torch.no_grad():
        logits = model(images)
        assert fast == [True] * 4 + [False] * 4 and shapes == [1 + 16 + 1] == [model.token_schedule.final_tokens]
        monkeypatch.setattr(pruning.METHODS["evovit"], "reads_placeholders", lambda pool: True)  # the full restore
        torch.testing.assert_close(model(images), logits)  # the class token saw the same
        assert shapes[-1] == 65 and fast[-4:] == [True] * 4
        monkeypatch.undo()
        model.train()
        model(images)
        assert shapes[-1] == 65 and pruning.prune_state(model).method.aux_logits is not None


# Models a method refuses -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["spvit:3=0.5", "evovit:4=0.5"])
@pytest.mark.parametrize("kw", [{"global_pool": "map"}, {"global_pool": "max"}, {"global_pool": "avgmax"},
                                {"global_pool": ""}])
def test_unsupported_pooling_is_refused_with_the_fix(method, kw):
    model = tiny_vit(**kw)
    with pytest.raises(VitsearchError, match="global_pool='token' or 'avg'"):
        pruning.apply(model, method)


def test_evovit_refuses_a_model_without_class_token_and_leaves_it_unpatched():
    model = tiny_vit(class_token=False, global_pool="avg")
    with pytest.raises(VitsearchError, match="no class token"):
        pruning.apply(model, "evovit:4=0.5")
    assert not isinstance(model, pruning.PrunedViTMixin)
    pruning.apply(model, "spvit:3=0.5")  # SPViT needs none


@pytest.mark.parametrize("config", ["spvit:3=0.5,6=0.5", "evovit:4=0.5,8=0.5"])
def test_register_tokens_are_carried_as_prefix(config, images):
    """The class and register tokens are never ranked or pruned: each block after a selector starts with the
    prefix the block before it produced."""
    model = pruning.apply(tiny_vit(reg_tokens=2), config)
    ins, outs = {}, {}
    for i, blk in enumerate(model.blocks):
        blk.register_forward_pre_hook(lambda m, args, i=i: ins.update({i: args[0]}))
        blk.register_forward_hook(lambda m, args, out, i=i: outs.update({i: out}))
    with torch.inference_mode():
        out = model(images)
    sched = model.token_schedule
    assert sched.num_prefix == 3 and pruning.prune_state(model).block_tokens == list(sched.block_tokens)
    assert out.shape == (8, 10)
    for step in sched.selectors:
        torch.testing.assert_close(ins[step.block][:, :3], outs[step.block - 1][:, :3])


# Schedules: what a keep ratio means, per method --------------------------------------------------------------

def test_spvit_ratios_compound_and_each_selector_adds_a_package():
    s = pruning.token_schedule("spvit:3=0.5,6=0.5", depth=12, num_patches=196, num_prefix=1)
    assert s.block_tokens == (197,) * 3 + (1 + 98 + 1,) * 3 + (1 + 49 + 2,) * 6
    assert [(st.n_in, st.n_keep) for st in s.selectors] == [(196, 98), (98, 49)]


def test_evovit_ratios_are_fractions_of_all_patches_the_official_deit_schedule():
    s = pruning.token_schedule("evovit:4=0.5,8=0.5", depth=12, num_patches=196, num_prefix=1, pool="avg")
    assert s.block_tokens == (197,) * 4 + (1 + 98 + 1,) * 8 and s.final_tokens == 197  # a mean head reads all
    # a class-token head reads the open last stage's slow tokens only
    assert pruning.token_schedule("evovit:4=0.5,8=0.5", depth=12, num_patches=196, num_prefix=1).final_tokens == 100
    assert [(st.n_in, st.n_keep) for st in s.selectors] == [(196, 98), (196, 98)]
    with pytest.raises(VitsearchError, match="drop the selector at block 8"):
        pruning.token_schedule("evovit:4=0.5,8=1.0", depth=12, num_patches=196, num_prefix=1)
