"""Fronts per method, the combined front, and the per-study verdict: which method is best at the budget and by how
much over the best training-free one (issue 26 items 4 and 5)."""
from __future__ import annotations

import json
from pathlib import Path

from vitsearch.report import load_study, write_report
from vitsearch.report.draw import draw_method_fronts
from vitsearch.report.methods import method_fronts_info
from vitsearch.studyfolder import TRAINING_FREE

from .conftest import write_study

# Within the 1.6 ms budget: EViT's best is the most accurate (0.90); ToMe, training-free, reaches 0.86 at best.
TRIALS = [("spvit:3=0.5", 1.20, 0.80), ("spvit:3=0.7,6=0.7", 1.40, 0.84), ("evit:3=0.7", 1.50, 0.90),
          ("evit:3=0.5", 1.25, 0.83), ("tome:r=2", 1.45, 0.86), ("tome:3=8", 1.10, 0.79), ("tome:r=1", 1.9, None)]


def _four_methods(reports: Path, trials=TRIALS) -> Path:
    folder = write_study(reports, "four-methods", trials=trials)
    for name in ("trials", "front"):  # the search writes this status for a training-free method's candidates
        rows = json.loads((folder / f"{name}.json").read_text())
        for r in rows:
            if r["method"] == "tome" and r["accuracy"] is not None:
                r["status"] = TRAINING_FREE
        (folder / f"{name}.json").write_text(json.dumps(rows))
    return folder


def test_each_method_has_its_own_front_and_the_combined_front_spans_them(reports):
    info = method_fronts_info(load_study(_four_methods(reports)))
    by = {m.method: m for m in info.methods}
    assert list(by) == ["spvit", "evit", "tome", "evovit"]  # the uniform baselines add Evo-ViT's
    assert [m for m in by.values() if m.training_free] == [by["tome"]]
    assert [p.label for p in by["tome"].front] == ["tome:3=8", "tome:r=2"]  # the over-budget r=1 is no point
    assert [p.label for p in by["evit"].front] == ["evit:3=0.5", "evit:3=0.7"]
    combined = [p.label for p in info.combined.front]
    assert combined == ["tome:3=8", "spvit:3=0.5", "evit:3=0.5", "evovit:3=0.7,5=0.7,7=0.7", "evit:3=0.7"]
    assert info.verdict == ("on cpu (budget 80%): best method evit (`evit:3=0.7`, 90.0% on test), +4.0 points over "
                            "the best training-free one (tome, `tome:r=2`, 86.0% on test)")
    ax = draw_method_fronts(info)
    labels = ax.get_legend_handles_labels()[1]
    assert "tome (training-free) front" in labels and "combined front" in labels and "evit front" in labels


def test_a_training_free_method_that_wins_is_named_so(reports):
    trials = [(c, ms, 0.95 if c == "tome:r=2" else acc) for c, ms, acc in TRIALS]
    info = method_fronts_info(load_study(_four_methods(reports, trials)))
    assert info.verdict == ("on cpu (budget 80%): best method tome (`tome:r=2`, 95.0% on test), training-free: no "
                            "trained method beats it (best trained: evit, 90.0% on test)")


def test_the_report_says_which_method_wins_and_draws_the_fronts_apart(reports):
    files = write_report(load_study(_four_methods(reports)))
    md = files.markdown.read_text()
    assert "**Methods:** on cpu (budget 80%): best method evit" in md and "over the best training-free one" in md
    assert "Fronts per method" in md and "methods" in files.figures
    assert "every: 2" in md  # tome:r=2's setting for every block, not an empty placement
