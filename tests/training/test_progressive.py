"""Progressive schedules as data: which config each step trains (a pure function of the config and settings)."""
import pytest

from vitsearch.pruning import PruneConfig
from vitsearch.errors import VitsearchError
from vitsearch.training.progressive import FinalizeSettings, plan

TINY = FinalizeSettings(steps=6, batch_size=16, warmup_steps=1, checkpoint_every=2)


def test_spvit_plan_inserts_one_selector_per_phase_in_block_order():
    phases = plan(PruneConfig.parse("spvit:3=0.8,6=0.7,9=0.6"), TINY, 9)
    assert [(p.start, p.end, str(p.config)) for p in phases] == [
        (0, 3, "spvit:3=0.8"), (3, 6, "spvit:3=0.8,6=0.7"), (6, 9, "spvit:3=0.8,6=0.7,9=0.6")]
    merged = plan(PruneConfig.parse("spvit:3=0.8,6=0.75,9=0.5"), FinalizeSettings(merge_tol=0.05), 10)
    assert [str(p.config) for p in merged] == ["spvit:3=0.8,6=0.75", "spvit:3=0.8,6=0.75,9=0.5"]
    switched = plan(PruneConfig.parse("spvit:3=0.8,6=0.7"), FinalizeSettings(switch=(0.25,)), 8)
    assert [(p.start, p.end) for p in switched] == [(0, 2), (2, 8)]


def test_evovit_plan_selects_at_every_block_first_then_stage_wise():
    phases = plan(PruneConfig.parse("evovit:4=0.5,8=0.5"), FinalizeSettings(evo_switch=0.25), 8)
    assert [(p.start, p.end, p.every_block, str(p.config)) for p in phases] == [
        (0, 2, True, "evovit:4=0.5,8=0.5"), (2, 8, False, "evovit:4=0.5,8=0.5")]
    plain = plan(PruneConfig.parse("evovit:4=0.5"), FinalizeSettings(schedule="plain"), 8)
    assert [(p.start, p.end, p.every_block) for p in plain] == [(0, 8, False)]


def test_bad_switch_points_are_refused():
    with pytest.raises(VitsearchError, match="gives 1 switch point.*3 phases"):
        plan(PruneConfig.parse("spvit:3=0.8,6=0.7,9=0.6"), FinalizeSettings(switch=(0.5,)), 9)
    with pytest.raises(VitsearchError, match="increase strictly"):
        plan(PruneConfig.parse("spvit:3=0.8,6=0.7,9=0.6"), FinalizeSettings(switch=(0.6, 0.3)), 9)
