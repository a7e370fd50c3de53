"""How a trial is written into Optuna's storage (vitsearch/search/record.py)."""
import optuna

from vitsearch.search.record import CONSTRAINTS, set_constraints


def test_constraints_are_one_list_as_optunas_samplers_store_them():
    """FrozenTrial.constraints reads the one list (issue 28 item 9: not also by name, which gave four entries for
    two constraints); optuna-dashboard reads the same list, under the system attr "constraints"."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    set_constraints(trial, {"selectors": -1.0, "latency_ms": 0.25})
    study.tell(trial, [0.5, 1.0])
    frozen = study.trials[0]
    assert frozen.constraints == {"0": 0.25, "1": -1.0} and CONSTRAINTS == ("latency_ms", "selectors")
    assert frozen.system_attrs["constraints"] == [0.25, -1.0]
    assert study.best_trials == []  # infeasible: over the latency budget
