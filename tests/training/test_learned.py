"""Learned keep rates (issue 14, item 3): the rate's gradient, and the two pulls that settle it at the budget."""
import copy

import pytest
import torch

from vitsearch.data import load_dataset
from vitsearch import pruning
from vitsearch.models import create_model
from vitsearch.pruning import PruneConfig, kept_tokens, prune_state
from vitsearch.pruning.methods.spvit import draw_topk
from vitsearch.training import PiecewiseLinear, TrainSettings
from vitsearch.training.learned import KeepRates, LearnSettings, learn_rates, phase_of, rates_config


def test_a_learnable_rate_keeps_its_count_and_gets_the_gradient_of_moving_the_cut():
    torch.manual_seed(0)
    n = 64
    margin, alive = torch.randn(3, n), torch.ones(3, n)
    keep = torch.tensor(0.4, requires_grad=True)
    d = draw_topk(margin, alive, keep, noise=0.0)
    fixed = draw_topk(margin, alive, 0.4, noise=0.0)
    assert torch.equal(d.detach(), fixed) and int(d[0].sum()) == kept_tokens(n, 0.4)  # the forward is the top-k's
    d.sum().backward()  # keeping a share more keeps about n tokens more per image
    assert float(keep.grad) == pytest.approx(3 * n, rel=0.1)
    # The gradient falls on the tokens around the cut: a loss that rewards the best-ranked tokens only gives none.
    keep.grad = None
    order = margin.argsort(dim=1, descending=True)
    top = torch.zeros(3, n).scatter(1, order[:, :4], 1.0)
    (draw_topk(margin, alive, keep, noise=0.0) * top).sum().backward()
    assert abs(float(keep.grad)) < 0.01 * 3 * n


def rate_grads(model, images, labels, learnable, *, read_at=None):
    """The gradients a task loss (cross-entropy of the logits, or of the head on block ``read_at``'s output) gives
    the keep rates of the selectors in ``learnable``; the others keep the config's 0.5 as a plain number."""
    rates = {b: torch.tensor(0.5, requires_grad=b in learnable) for b in (2, 6)}
    state = prune_state(model)
    state.progress, state.train, state.rates = 1.0, TrainSettings(spvit_draw="topk"), rates  # noise 0: the draws are the top-k
    seen = {}
    hook = None if read_at is None else model.blocks[read_at].register_forward_hook(
        lambda m, args, out: seen.update(x=out))
    logits = model(images)
    if read_at is not None:
        hook.remove()
        logits = model.head(model.norm(seen["x"])[:, 0])
    torch.nn.functional.cross_entropy(logits, labels).backward()
    state.rates = None
    return {b: None if r.grad is None else float(r.grad) for b, r in rates.items()}


def test_a_rates_task_loss_gradient_lands_on_the_rate_of_the_selector_whose_cut_moved(tiny_vit):
    """Two learnable rates in a training forward (selectors at blocks 2 and 6): each one's gradient is its own
    selector's (the same whether or not the other rate learns), and a loss read between the two selectors, which
    the second cut cannot move, reaches the first rate only. Breaks if a selector draws with another block's rate,
    or the rate's surrogate gradient is not attached."""
    model = pruning.apply(tiny_vit, PruneConfig("spvit", {2: 0.5, 6: 0.5})).train()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    both = rate_grads(model, images, labels, {2, 6})
    assert both[2] is not None and both[6] is not None and abs(both[2]) > 1e-6 and abs(both[6]) > 1e-6
    model.zero_grad()
    assert rate_grads(model, images, labels, {2})[2] == pytest.approx(both[2], rel=1e-4)
    model.zero_grad()
    assert rate_grads(model, images, labels, {6})[6] == pytest.approx(both[6], rel=1e-4)
    model.zero_grad()
    between = rate_grads(model, images, labels, {2, 6}, read_at=4)
    assert abs(between[2]) > 1e-6 and not between[6]  # None or 0: the cut at block 6 moves nothing before it


def test_rates_live_in_keep_min_to_one_and_start_where_told():
    rates = KeepRates([3, 5], keep_min=0.2, init_keep=0.9)
    assert rates.values() == pytest.approx({3: 0.9, 5: 0.9})
    with torch.no_grad():
        rates.free["3"].fill_(-50.0)
        rates.free["5"].fill_(50.0)
    assert rates.values() == pytest.approx({3: 0.2, 5: 1.0})
    assert str(rates_config(rates.rates([3, 5]))) == "spvit:3=0.2,5=1"


def test_layer_to_phase_inserts_one_selector_per_phase_in_block_order():
    assert [phase_of(i, 12, 4) for i in range(12)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert phase_of(5, 4, 8) == 7  # more blocks than steps: the last one is reached


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = create_model("digits", depth=4)
    return model, load_dataset("digits", model, max_train=256, max_val=64)


def latency(model):
    """A latency whose blocks cost 0.01 ms per token (prefix + alive patches + packages), nothing else."""
    n, prefix, depth = model.patch_embed.num_patches, model.num_prefix_tokens, len(model.blocks)
    curve = PiecewiseLinear([0, n + prefix + depth], [0.0, 0.01 * (n + prefix + depth)])

    def latency_of(rates):
        alive, packages, out = torch.tensor(float(n)), 0, []
        for b in range(depth):
            if b in rates:
                alive, packages = alive * rates[b], packages + 1
            out.append(curve(prefix + alive + packages))
        return torch.stack(out).sum()

    return latency_of


TRAIN = TrainSettings(steps=0, batch_size=16, warmup_steps=2)


@pytest.mark.slow
def test_the_task_loss_alone_raises_the_rates(small):
    """No sparsity loss: the loss is lower with more tokens, so the rates rise from where they start. With the
    rate's gradient cut (the surrogate removed), they would stay at 0.5 exactly."""
    model, splits = small
    run = learn_rates(copy.deepcopy(model), model, splits, [1, 2], latency(model), budget_ms=1.0, train=TRAIN,
                      settings=LearnSettings(steps=40, keep_min=0.1, init_keep=0.5, rate_lr=0.05, sparsity_weight=0.0))
    assert min(run.rates.values()) > 0.5, run.rates
    assert [sorted(h["rates"]) for h in run.history] == [[1], [1, 2]]  # layer-to-phase


@pytest.mark.slow
def test_the_sparsity_loss_drives_the_rates_down_to_the_budget(small):
    model, splits = small
    latency_of = latency(model)
    full = float(latency_of({}))
    budget = 0.6 * full
    run = learn_rates(copy.deepcopy(model), model, splits, [1, 2], latency_of, budget_ms=budget, train=TRAIN,
                      settings=LearnSettings(steps=80, keep_min=0.1, init_keep=0.95, rate_lr=0.1, sparsity_weight=5.0))
    reached = float(latency_of({b: torch.tensor(r) for b, r in run.rates.items()}))
    assert float(latency_of({1: torch.tensor(0.95)})) > budget  # the first phase starts over budget
    assert reached == pytest.approx(budget, rel=0.08), (run.rates, reached, budget)
    # The earlier selector saves more blocks per token, so it is pushed harder.
    assert run.rates[1] < run.rates[2]
