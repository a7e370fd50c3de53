"""The search: an Optuna multi-objective study over selector placement and keep ratios under a latency budget.

Objectives: maximise accuracy on the val split, minimise the latency predicted from the device's table. Each
candidate's test accuracy is recorded beside it (the accuracy results state); no decision of the search reads it.
The budget is an Optuna constraint (:mod:`.record`): a candidate predicted over budget is rejected before any
training, and pruned without an accuracy.
Everything lands in the study folder (:class:`~vitsearch.studyfolder.StudyFolder`), enough to rebuild the report.

- :mod:`.settings`: :class:`SearchSettings`, and what a search returns (:class:`Candidate`, :class:`SearchResult`);
- :mod:`.space` and :mod:`.budget`: the search space (``search/*.toml``) and the latency budget;
- :mod:`.setup`: the base model, data, predictor, space and budget, resolved once (:func:`prepare`);
- :mod:`.storage`: the Optuna study (journal file or database) and what is read back from it;
- :mod:`.evaluation`: a config to a :class:`Candidate` (brief training or the shared supernet);
- :mod:`.learned`: the learned strategy (SPViT's keep rates learned under the budget), one more trial;
- :mod:`.running`: baselines, the objective, the learned trial, the results (:func:`run_search`).

```python
from vitsearch.search import SearchSettings, run_search
result = run_search(SearchSettings(budget="60%"))   # reports/digits-cpu-60pct-brief/
```

The names below are imported from their submodule on first use (PEP 562): the settings and the budget parser come
without torch and optuna (the CLI builds its options from them).
"""
from __future__ import annotations

from ..lazy import lazy_names

_SUBMODULE = {
    **dict.fromkeys(("Budget", "parse_budget"), ".budget"),
    "Evaluator": ".evaluation",
    **dict.fromkeys(("evaluate_baselines", "make_objective", "run_search", "summary", "write_results"), ".running"),
    **dict.fromkeys(("BASELINES", "SAMPLERS", "STRATEGIES", "Candidate", "SearchResult", "SearchSettings"), ".settings"),
    **dict.fromkeys(("Setup", "fastest_config", "load_base", "load_predictor", "load_splits", "prepare",
                     "write_provenance"), ".setup"),
    **dict.fromkeys(("SearchSpace", "default_space_file", "load_space"), ".space"),
    **dict.fromkeys(("collect", "open_optuna_study", "recover_stale_trials"), ".storage"),
}

__all__ = sorted(_SUBMODULE)

__getattr__, __dir__ = lazy_names(__name__, _SUBMODULE)
