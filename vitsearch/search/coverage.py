"""A search that covers its space: every proposal is a new model within the budget.

The budget is known before any training and a prediction is cheap, so the search first lists the space's distinct
feasible models (:class:`FeasibleSet`: canonical keys predicted within the budget, with at most ``max_selectors``
selectors), says how many there are, and stops early only once all of them are trained. Each trial's config comes
from :class:`CoverageSampler`, which asks the study's own sampler (TPE or random) for proposals on a private copy of
the study and hands the first that is feasible and not yet trained or claimed by a worker to the real trial. A
rejected proposal never becomes a trial, so neither the study, the dashboard nor the sampler's model is filled with
repeats and over-budget configs. The first trials take every method and selector count once; after them, a sampler
that keeps proposing taken or over-budget configs (TPE converging, or a selector count whose feasible share is tiny)
gets a random untaken model of the method and count it chose.
"""
from __future__ import annotations

import logging
import random
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from ..errors import VitsearchError
from ..pruning import PruneConfig
from .claims import KEY, OWNS
from .space import SearchSpace

logger = logging.getLogger(__name__)

# Proposals asked of the inner sampler per trial before a random untaken model of its method and count is taken.
MAX_PROPOSALS = 50


@dataclass(frozen=True)
class Feasible:
    config: PruneConfig  # one config of the space with this key
    predicted_ms: float


class FeasibleSet:
    """The distinct models (canonical keys) of a space predicted within a budget, per (method, selector count).

    A part of the space of at most ``sample`` configs is listed whole; a larger one (three selectors of eight
    blocks at 17 keep ratios: 275,128 configs, about 15 s of predictions) is first known from a seeded sample of
    ``sample`` configs, and listed whole only once every sampled model is taken (:meth:`complete`). So a search
    starts in a second or two and still stops only when the whole space is trained.
    """

    def __init__(self, space: SearchSpace, predict_ms: Callable[[PruneConfig], float],
                 key: Callable[[PruneConfig], str], budget_ms: float, *, sample: int = 4000, seed: int = 0) -> None:
        self.space, self.predict_ms, self.key, self.budget_ms = space, predict_ms, key, budget_ms
        self.models: dict[str, Feasible] = {}
        self.stratum: dict[str, tuple[str, int]] = {}  # key -> (method, selector count)
        self.exact: dict[tuple[str, int], bool] = {}
        self._seen: set[str] = set()
        rng = random.Random(seed)
        for method, n in space.strata():
            whole = space.stratum_size(method, n) <= sample
            self._add(space.configs(method, n) if whole else space.sample_configs(method, n, sample, rng), (method, n))
            self.exact[(method, n)] = whole

    def _add(self, configs: Iterable[PruneConfig], stratum: tuple[str, int]) -> None:
        for config in configs:
            k = self.key(config)
            if k in self._seen:
                continue
            self._seen.add(k)
            ms = self.predict_ms(config)
            if ms <= self.budget_ms:
                self.models[k], self.stratum[k] = Feasible(config, ms), stratum

    def complete(self) -> bool:
        """List the next sampled part of the space whole; False when every part already is."""
        stratum = next((s for s, whole in self.exact.items() if not whole), None)
        if stratum is None:
            return False
        started = time.perf_counter()
        self._add(self.space.configs(*stratum), stratum)
        self.exact[stratum] = True
        logger.info("listed every %s config with %d selectors: %d models within the budget (%.1f s)", *stratum,
                    sum(s == stratum for s in self.stratum.values()), time.perf_counter() - started)
        return True

    @property
    def is_exact(self) -> bool:
        return all(self.exact.values())

    def __len__(self) -> int:
        return len(self.models)

    def __contains__(self, key: str) -> bool:
        return key in self.models

    def describe(self) -> str:
        """One line: how many models fit the budget, per method and selector count."""
        counts = Counter(self.stratum.values())
        parts = []
        for method in self.space.methods:
            cells = [f"{'' if self.exact[(m, n)] else '>='}{counts[(m, n)]:,}"
                     for m, n in self.space.strata() if m == method]
            parts.append(f"{method} {' / '.join(cells)}")
        total = f"{len(self):,}" if self.is_exact else f"at least {len(self):,}"
        return (f"{total} distinct models fit the budget of {self.budget_ms:.3f} ms ({'; '.join(parts)} with "
                f"1 / 2 / ... selectors; '>=' where a sample of the space was listed)")

    def untaken(self, taken: set[str]) -> list[str]:
        """Feasible models no trial has taken; the sampled parts are listed whole before saying there are none."""
        while True:
            left = [k for k in self.models if k not in taken]
            if left or not self.complete():
                return left


def taken_keys(trials: Iterable[FrozenTrial]) -> set[str]:
    """Models a worker trains or has trained: keys claimed by running or waiting trials, and keys finished
    trials owned (:mod:`.claims`). A failed trial's key is free again."""
    out = set()
    for t in trials:
        key = t.user_attrs.get(KEY)
        if key is None or str(key).startswith("baseline:"):
            continue
        if t.state in (TrialState.RUNNING, TrialState.WAITING) or (t.state == TrialState.COMPLETE and t.user_attrs.get(OWNS)):
            out.add(str(key))
    return out


class CoverageSampler(BaseSampler):
    """Hands each trial a config that is feasible and new, proposed by ``inner`` (see the module docstring).

    Optuna asks a sampler for one parameter at a time; the whole proposal is made at the trial's first parameter
    and its values are returned one by one, so the trial's parameters are exactly what :meth:`SearchSpace.suggest`
    would have sampled for that config. Parameters Optuna fixes itself (an enqueued trial's) never reach it.
    """

    def __init__(self, inner: BaseSampler, space: SearchSpace, feasible: FeasibleSet, seed: int) -> None:
        self.inner, self.space, self.feasible = inner, space, feasible
        self._rng = random.Random(seed)
        self._proposals: dict[int, dict[str, Any]] = {}  # trial number -> its params
        self.exhausted = False  # the last proposal found every feasible model taken

    # --- BaseSampler -------------------------------------------------------------------------------------------

    def infer_relative_search_space(self, study: Any, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Any, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        if trial.number not in self._proposals:
            self._proposals[trial.number] = self.propose(study)
        params = self._proposals[trial.number]
        if param_name not in params:
            raise VitsearchError(f"trial {trial.number} asked for parameter {param_name!r}, which its proposal "
                                 f"{params} does not hold")
        return params[param_name]

    def after_trial(self, study: Any, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._proposals.pop(trial.number, None)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
        self._rng.seed()

    # --- proposals ---------------------------------------------------------------------------------------------

    def propose(self, study: Any) -> dict[str, Any]:
        """Parameters of a feasible model no worker has taken; raises :class:`NoModelLeft` when there is none.

        Until every (method, selector count) that holds a feasible model has one taken, the proposal is a random
        untaken model of one that has none (a stratified start: TPE's own start draws the method and count at
        random, and in 24 candidates left whole counts of a method untried). Then the inner sampler chooses the
        method and the selector count (TPE learns which pay; random takes each equally often), among those that
        still hold an untaken model; then proposes the rest with those two fixed
        until a proposal is feasible and new, or after ``MAX_PROPOSALS`` takes a random untaken model of them.
        Without the second step the counts whose feasible share is small (three Evo-ViT selectors under a tight
        budget: 0.4% of their configs) would almost never be proposed whole."""
        trials = study.get_trials(deepcopy=False)
        taken = taken_keys(trials)
        untaken = self.feasible.untaken(taken)
        if not untaken:
            self.exhausted = True
            raise NoModelLeft(f"all {len(self.feasible)} models within the budget are trained or being trained")
        open_strata = {self.feasible.stratum[k] for k in untaken}
        unseen = sorted(open_strata - {self.feasible.stratum[k] for k in taken if k in self.feasible})
        if unseen:  # the stratified start: one model of every method and count before the inner sampler chooses
            return self._any_untaken(self._rng.choice(unseen), untaken)
        shadow = self._shadow(study, trials)
        stratum = None
        for _ in range(MAX_PROPOSALS):
            if stratum is not None:
                shadow.enqueue_trial({"method": stratum[0], "selectors": stratum[1]})
            t = shadow.ask()
            try:
                config = self.space.suggest(t)
            except VitsearchError:  # blocks not increasing: not a config
                config = None
            if config is not None:
                key = self.feasible.key(config)
                if key in self.feasible and key not in taken:
                    return self.space.params_of(config)
            shadow.tell(t, state=TrialState.FAIL)  # never seen by the real study
            if stratum is None and (t.params["method"], t.params["selectors"]) in open_strata:
                stratum = (t.params["method"], t.params["selectors"])
        if stratum is None:  # the inner sampler only chose counts with nothing left: take the others evenly
            stratum = self._rng.choice(sorted(open_strata))
        return self._any_untaken(stratum, untaken)

    def _any_untaken(self, stratum: tuple[str, int], untaken: list[str]) -> dict[str, Any]:
        """Parameters of a random untaken model of ``stratum`` (method, selector count)."""
        key = self._rng.choice([k for k in untaken if self.feasible.stratum[k] == stratum])
        return self.space.params_of(self.feasible.models[key].config)

    def _shadow(self, study: Any, trials: list[FrozenTrial]) -> Any:
        """A private in-memory copy of the study's finished candidates (params, values, constraints), on which the
        inner sampler proposes: what it learns is the real study's; what it proposes there costs nothing."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            shadow = optuna.create_study(directions=study.directions, sampler=self.inner)
            shadow.add_trials([t for t in trials if t.state == TrialState.COMPLETE and t.params])
        return shadow


class NoModelLeft(VitsearchError):
    """Every feasible model of the space is trained or being trained."""
