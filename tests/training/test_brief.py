"""The computation-aware loss and brief training, on the real digits data with a small model."""
import copy

import pytest
import torch

from vitsearch import pruning
from vitsearch.pruning import PruneConfig
from vitsearch.data import load_dataset
from vitsearch.models import create_model
from vitsearch.training import (LossWeights, PiecewiseLinear, TrainSettings, keep_ratio_loss,
                                latency_loss, soft_block_tokens, train_candidate, train_supernet)


def test_piecewise_linear_interpolates_and_differentiates():
    curve = PiecewiseLinear([1, 11, 21], [1.0, 2.0, 4.0])
    n = torch.tensor(16.0, requires_grad=True)
    y = curve(n)
    y.backward()
    assert float(y.detach()) == pytest.approx(3.0) and float(n.grad) == pytest.approx(0.2)
    assert float(curve(torch.tensor(11.0))) == pytest.approx(2.0)


def test_soft_token_counts_follow_the_decisions():
    d1 = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])  # 2.5 kept on average
    d2 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])  # 1.5
    counts = soft_block_tokens([d1, d2], [1, 3], depth=4, num_prefix=1)
    assert [float(c) for c in counts] == [5.0, 1 + 2.5 + 1, 1 + 2.5 + 1, 1 + 1.5 + 2]


def test_latency_loss_penalises_only_what_is_over_the_target():
    curve = PiecewiseLinear([0, 100], [0.0, 10.0])  # 0.1 ms per token
    under = [torch.tensor(40.0), torch.tensor(40.0)]
    assert float(latency_loss(under, curve, target_ms=8.0)) == 0.0
    over = [torch.tensor(60.0, requires_grad=True), torch.tensor(60.0)]
    loss = latency_loss(over, curve, target_ms=8.0)
    loss.backward()
    assert float(loss) == pytest.approx((12 / 8 - 1) ** 2) and float(over[0].grad) > 0


def test_keep_ratio_loss_uses_the_per_sample_fraction():
    d = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert float(keep_ratio_loss([d], [0.5])) == pytest.approx((0 + 0.25) / 2)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = create_model("digits", depth=6)
    return model, load_dataset("digits", model)


def _keep_fraction(model, splits) -> float:
    x = splits.train.images[:128]
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    return float(pruning.prune_state(model).method.keep_decisions[0].mean())


def _selector_at_half_asked_for_a_quarter(base):
    """A selector created for keep 1/2 (its scores start there), then asked to keep 1/4."""
    return pruning.apply(pruning.apply(copy.deepcopy(base), "spvit:3=0.5"), "spvit:3=0.25")


def test_training_keeps_each_selector_at_its_target_share(small):
    base, splits = small
    model = _selector_at_half_asked_for_a_quarter(base)  # its scores start at 1/2: the level is not learned
    before = _keep_fraction(model, splits)
    settings = TrainSettings(steps=25, batch_size=32, selector_lr=3e-3, weights=LossWeights(ratio=5.0))
    result = train_candidate(model, base, splits, settings)
    after = _keep_fraction(model, splits)
    assert abs(before - 0.25) < 0.05 and abs(after - 0.25) < 0.05
    assert result.steps == 25 and set(result.final_loss) >= {"ce", "distill", "ratio", "total"}


class _FixedScores(torch.nn.Module):
    """A selector whose keep log-odds are given: prune_soft's decision rule alone is under test."""

    def __init__(self, margin: torch.Tensor) -> None:
        super().__init__()
        self.margin = margin  # (B, N)

    def forward(self, x, mask=None):
        return self.margin, torch.sigmoid(self.margin)


def test_soft_decisions_keep_the_target_share_whatever_the_level_and_favour_higher_scores():
    from vitsearch.pruning.methods.spvit import prune_soft

    torch.manual_seed(0)
    patches, alive = torch.randn(512, 8, 4), torch.ones(512, 8)
    ranking = torch.arange(8.0).expand(512, 8) / 2  # token 7 scores highest
    for level in (-5.0, 0.0, 5.0):  # a selector's overall level moves nothing
        kept, _ = prune_soft(_FixedScores(ranking + level), patches, alive, keep=0.25)
        assert float(kept.mean()) == pytest.approx(0.25, abs=0.05)
        assert float(kept[:, 7].mean()) > float(kept[:, 0].mean()) + 0.3
    alive[:, :4] = 0  # only the tokens still alive count, and only they can be kept
    kept, _ = prune_soft(_FixedScores(ranking), patches, alive, keep=0.5)
    assert float(kept[:, :4].sum()) == 0 and float(kept[:, 4:].mean()) == pytest.approx(0.5, abs=0.1)


def test_a_later_selector_does_not_turn_the_first_against_the_digit(digits_base):
    """On the trained digits model, the first of two selectors gets a gradient that keeps the digit's own patches
    (4 of 64 on each canvas). Masked attention that underflowed sent it 1e3-1e8 the other way, and after a brief
    training `spvit:3=0.5,6=0.9` kept 4% of the digit's patches at block 3 and 226 of 359 images right."""
    from vitsearch.training.brief import candidate_loss

    base, _ = digits_base
    splits = load_dataset("digits", base)
    x, y = splits.train.images[:64], splits.train.labels[:64]  # (64, 1, 64, 64): 8 x 8 patches of 8 pixels
    bg = x.flatten(1).amin(dim=1)[:, None, None, None]
    ink = ((x - bg).abs() > 1e-5).any(dim=1)  # (B, 64, 64)
    digit = ink.reshape(64, 8, 8, 8, 8).any(dim=4).any(dim=2).flatten(1)  # (B, 64 patches)
    model = pruning.apply(copy.deepcopy(base), "spvit:3=0.5,6=0.9").train()
    margins: list[torch.Tensor] = []

    def recorded(selector, inputs, outputs):  # the first selector's keep log-odds (B, 64)
        outputs[0].retain_grad()
        margins.append(outputs[0])

    model.token_selectors["3"].register_forward_hook(recorded)
    torch.manual_seed(0)
    grads = []
    for _ in range(4):  # a few Gumbel draws
        margins.clear()
        with torch.no_grad():
            teacher = base(x)
        loss, _ = candidate_loss(model, x, y, teacher, LossWeights())
        loss.backward()
        grads.append(margins[0].grad)
    g = torch.stack(grads).mean(dim=0)  # (B, 64) d loss / d first selector's keep log-odds
    assert torch.isfinite(g).all() and g.abs().max() < 1.0
    assert g[digit].mean() < 0 < g[~digit].mean()  # descent raises the digit's keep odds, lowers the background's


def test_supernet_shares_selectors_across_configs(small):
    base, splits = small
    model = copy.deepcopy(base)
    configs = ["spvit:3=0.5", "spvit:3=0.3,4=0.5", "evovit:3=0.5"]
    result = train_supernet(model, base, splits, lambda step, rng: [configs[step % 3]], configs,
                            TrainSettings(steps=3, batch_size=16))
    assert result.steps == 3 and set(model.token_selectors) == {"3", "4"} and hasattr(model, "head_aux")


def test_fresh_candidates_start_from_the_same_selectors_whatever_ran_before(tiny_vit):
    from vitsearch.training import fresh_model

    a = fresh_model(tiny_vit, PruneConfig.parse("spvit:1=0.5"), seed=3)
    torch.randn(100)  # other work consumes the global generator in between
    b = fresh_model(tiny_vit, PruneConfig.parse("spvit:1=0.5"), seed=3)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert not hasattr(tiny_vit, "token_selectors")  # the base model is left as it was


def test_a_new_selector_starts_at_its_target_keep_ratio(tiny_vit):
    from vitsearch.training import fresh_model

    model = fresh_model(tiny_vit, PruneConfig.parse("spvit:1=0.25"))
    x = torch.randn(4, 16, tiny_vit.embed_dim)
    with torch.no_grad():
        _, p_keep = model.token_selectors["1"](x)
    assert abs(float(p_keep.mean()) - 0.25) < 0.1  # not 1/2: brief training starts where it must end


def test_the_spvit_training_draw_is_a_setting_that_reaches_every_training_forward(tiny_vit, monkeypatch):
    """``TrainSettings.spvit_draw`` picks the rule (topk by default; logodds); an unknown
    rule is refused."""
    from vitsearch.errors import VitsearchError
    from vitsearch.pruning.methods.spvit import algorithm as spvit
    from vitsearch.training import fresh_model

    assert TrainSettings().spvit_draw == "topk"
    with pytest.raises(VitsearchError, match="topk, logodds"):
        TrainSettings(spvit_draw="gumbel")
    seen = []
    soft, topk = spvit.prune_soft, spvit.prune_topk

    def recorded_soft(*args, draw, noise, **kw):
        seen.append((draw, noise))
        return soft(*args, draw=draw, noise=noise, **kw)

    def recorded_topk(*args, noise, **kw):  # topk draws have their own function
        seen.append(("topk", noise))
        return topk(*args, noise=noise, **kw)

    monkeypatch.setattr(spvit, "prune_soft", recorded_soft)
    monkeypatch.setattr(spvit, "prune_topk", recorded_topk)
    images = torch.randn(32, 3, 32, 32)

    class Splits:
        augment = None

        def train_batches(self, batch_size, seed):
            while True:
                yield images[:batch_size], torch.randint(0, tiny_vit.num_classes, (batch_size,))

    for draw in ("logodds", "topk"):
        seen.clear()
        model = fresh_model(tiny_vit, PruneConfig.parse("spvit:1=0.5"))
        train_candidate(model, tiny_vit, Splits(), TrainSettings(steps=3, batch_size=8, spvit_draw=draw))
        assert seen == [(draw, 1.0), (draw, 0.5), (draw, 0.0)]  # topk's noise anneals over the steps
