"""How a search is written into Optuna's storage, so that Optuna's own tools read it right.

- The objectives are named (``study.set_metric_names``): optuna-dashboard, ``optuna.visualization`` and
  ``trials_dataframe()`` show ``val_accuracy`` and ``predicted_latency_ms`` instead of ``0`` and ``1``. The
  objective is the val split's accuracy, what the search decides by; the test split's (the accuracy vitsearch
  states) is the user attr ``accuracy``, which no decision reads.
- The constraints are stored as one list under the system attr ``"constraints"``, the form Optuna's samplers write
  for a ``constraints_func`` and the only one optuna-dashboard (0.21) reads (a trial without it is shown feasible
  there); ``FrozenTrial.constraints``, the samplers and ``plot_pareto_front`` read it too. Not also by name
  (``trial.set_constraint``): Optuna would read both forms, four entries for two constraints. Their order and
  meaning are the study's user attr ``constraints`` (:data:`CONSTRAINTS`).
- A trial rejected before training (predicted over the budget, or a selector count outside the space) has no
  accuracy, so it ends PRUNED, without objective values, its constraints stored as a trained trial's are
  (:func:`reject`). A COMPLETE trial needs a value per objective: Optuna fails one given NaN, and any number
  would be a fake accuracy that Optuna's plots and optuna-dashboard draw on the accuracy axis (0.0 started every
  axis at 0; -inf reaches the dashboard as the string "-inf"). PRUNED trials are on no objective axis of either
  (the dashboard's plots and Optuna's read COMPLETE trials' values only); the dashboard lists the trial as
  Pruned with its ``status`` ("rejected before training: over budget by ... ms") and its constraints (> 0:
  infeasible) in its API. Its grey "Infeasible" label is given only to COMPLETE trials, so it is not used.
  vitsearch counts a rejected trial as a candidate tried (``--max-attempts``), never as trained, and lists it in
  ``trials.json`` without an accuracy.
- The study's user attributes say what the numbers mean (:func:`describe`).
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import optuna

OBJECTIVES = ("val_accuracy", "predicted_latency_ms")
DIRECTIONS = ("maximize", "minimize")
CONSTRAINTS_LIST_KEY = "constraints"  # optuna-dashboard's ``CONSTRAINTS_KEY``; Optuna's list form
CONSTRAINTS = ("latency_ms", "selectors")  # the list's entries, in order
REJECTED = "rejected"  # user attr of a trial rejected before training: why


def constraint_list(constraints: Mapping[str, float]) -> list[float]:
    """The stored list of a trial's constraints (feasible when every value is <= 0), in :data:`CONSTRAINTS` order."""
    if set(constraints) != set(CONSTRAINTS):
        raise ValueError(f"constraints {sorted(constraints)} are not {list(CONSTRAINTS)}")
    return [float(constraints[name]) for name in CONSTRAINTS]


def set_constraints(trial: Any, constraints: Mapping[str, float]) -> None:
    """Store a trial's constraints as the one list (:func:`constraint_list`)."""
    storage = trial.storage  # the storage the trial lives in; its trial id found through public storage calls
    study_id = storage.get_study_id_from_name(trial.study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    storage.set_trial_system_attr(trial_id, CONSTRAINTS_LIST_KEY, constraint_list(constraints))


def reject(trial: Any, why: str) -> None:
    """Mark the running ``trial`` rejected before training; the objective then raises ``optuna.TrialPruned``."""
    trial.set_user_attr(REJECTED, why)
    trial.set_user_attr("status", f"rejected before training: {why}")


def is_rejected(frozen: Any) -> bool:
    """Whether a finished trial was rejected before training (:func:`reject`)."""
    return frozen.state == optuna.trial.TrialState.PRUNED and REJECTED in frozen.user_attrs


def describe(study: Any, *, metric: str, device: str, batch: int, budget: str, budget_ms: float,
             unpruned_ms: float, limit_ms: float) -> dict[str, Any]:
    """Name the objectives and record, as study user attributes, what each number of a trial means."""
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and what every Optuna tool reads names from
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(OBJECTIVES))
    attrs: dict[str, Any] = {
        "objectives": {
            "val_accuracy": f"{metric} accuracy on the val split (0..1) after brief training: what the search "
                            "ranks and selects by. A trial rejected before training has none: it is PRUNED, with its "
                            "constraints (> 0: infeasible) and its status",
            "predicted_latency_ms": f"latency predicted from the {device} latency table, batch {batch} (ms)",
        },
        "constraints": {  # in the order of each trial's list (FrozenTrial.constraints "0", "1")
            "latency_ms": f"predicted latency minus {limit_ms:.4f} ms (<= 0: within it): the budget {budget} = "
                          f"{budget_ms:.4f} ms less the headroom left for the latency table's error",
            "selectors": "selectors over the space's limit, or 1 for none (<= 0: allowed)",
        },
        "budget_ms": budget_ms, "limit_ms": limit_ms, "unpruned_ms": unpruned_ms, "device": device, "batch": batch,
        "accuracy": f"user attr accuracy: {metric} accuracy on the test split (0..1) after brief training, the "
                    "accuracy vitsearch states for the candidate; never read by the sampler or the front",
        "gmacs": "user attr gmacs: 10^9 multiply-accumulates per image in matmuls (linear layers and attention "
                 "products), the convention of every vitsearch figure",
        "status": "user attr status: trained, rejected before training (and why), or same config as an earlier trial",
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return attrs
