"""What a search is told: its settings, and what it returns (candidates and the result)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import VitsearchError
from ..training.settings import LossWeights, TrainSettings
from ..studyfolder import check_study_name
from .budget import parse_budget

if TYPE_CHECKING:  # torch: imported where a search runs, never for the CLI's defaults
    from ..pruning import PruneConfig

STRATEGIES = ("brief", "shared")
LEARNED = "learned"  # the kind of the learned strategy's trial (search/learned.py)
# What a trained candidate stores in its trial's user attrs (and its records): both held-out accuracies first.
TRAINED_ATTRS = ("val_accuracy", "accuracy", "gmacs", "train_seconds", "selection_ms", "checkpoint", "status")

SAMPLERS = ("tpe", "random")
# Which baselines a search evaluates beside its trials (each trains as long as a candidate): the unpruned model, the
# uniform keep ratios of the space's [baselines] section, both, or none (a smoke test).
BASELINES = ("all", "unpruned", "uniform", "none")


@dataclass(frozen=True)
class SearchSettings:
    budget: str = "60%"  # "30ms", "0.03s", or a share of the unpruned model's latency on the device
    model: str = "digits"  # timm ViT/DeiT name, or an embedded model ("digits", "clutter")
    checkpoint: str | None = None  # the base weights (an embedded model uses its cached pretraining)
    # "digits", "clutter" or an ImageFolder path; None: an embedded model's own data set ("digits" for others)
    dataset: str | None = None
    device: str = "cpu"
    batch: int = 1  # batch size the latency is predicted for
    precision: str = "fp32"  # the precision the model runs in on the device (fp32, fp16, int8): its table predicts
    threads: int | None = None  # intra-op threads of a table profiled for the search (0 if None); checked on an existing one
    study: str | None = None  # name of the study folder under ``reports``; derived from the settings if None
    trials: int = 24  # candidates to train; those over budget are rejected before training and not counted
    max_attempts: int | None = None  # stop after this many candidates in all, trained or not (None: 10 x trials, >= 100)
    space: str | None = None  # search-space TOML; the built-in vitsearch/spaces/<family>.toml by default
    strategy: str = "brief"  # "brief": train every candidate; "shared": weight sharing
    train: TrainSettings = field(default_factory=TrainSettings)
    # Shared strategy: supernet steps (each trains the largest, the smallest and a random config), then a few
    # steps per candidate from it. On the digits default, 200 + 0 took 60% of the brief search's time for a front
    # 5% worse in hypervolume; 60 + 2 came within 0.6-0.9% in about a third of it
    # (benchmarks/RESULTS.md#claim-shared-defaults).
    shared_steps: int = 60
    shared_finetune_steps: int = 2
    # The learned strategy (search/learned.py): SPViT's keep rates learned under the budget, added to the study as
    # one more trial after the Optuna ones, with the trials' training compute (trials x steps) unless learned_steps.
    learned: bool = False
    learned_steps: int | None = None
    storage: str | None = None  # Optuna storage URL (postgresql://...); a journal file in the study folder if None
    # Seconds between a worker's heartbeats while it runs a trial; a trial silent for 4 of them is failed and its
    # config run again by the next worker (Optuna's heartbeat on a database, Heartbeat on the journal file).
    heartbeat_s: int = 30
    # The share of a prediction a search leaves under the budget for the table's own error; None: from the table's
    # validation (latency/validate.py measured_headroom), 0 where it has none.
    headroom: float | None = None
    sampler: str = "tpe"
    baselines: str = "all"  # one of BASELINES; baselines stored by an earlier run stay in the study's records
    seed: int = 0
    max_train: int | None = None  # subset sizes for large ImageFolder data sets
    max_val: int | None = None
    max_test: int | None = None
    train_device: str = "auto"  # where training runs (vitsearch.training.device); ``device`` is the latency target
    amp: bool = True  # mixed precision on a CUDA GPU (bf16, or fp16 with a grad scaler); the CPU is always fp32
    workers: int = 0  # DataLoader processes for ImageFolder images (speed only: results do not depend on it)
    reports: str = "reports"
    tables: str = "latency_tables"

    def __post_init__(self) -> None:
        if self.baselines not in BASELINES:
            raise VitsearchError(f"baselines {self.baselines!r} is not one of {', '.join(BASELINES)} (--baselines)")
        from ..latency.precision import parse

        object.__setattr__(self, "precision", parse(self.precision))
        if self.dataset is None:
            from ..models import embedded_task

            task = embedded_task(self.model)
            object.__setattr__(self, "dataset", task.name if task is not None else "digits")

    def name(self) -> str:
        """The study's folder name under ``reports``: ``study``, checked to be one plain name, or derived."""
        if self.study is not None:
            return check_study_name(self.study)
        budget = str(parse_budget(self.budget)).replace("%", "pct").replace(".", "p")
        precision = "" if self.precision == "fp32" else f"-{self.precision}"  # fp32 names stay as they were
        return f"{self.model}-{self.device.replace('/', '_').replace(':', '_')}{precision}-{budget}-{self.strategy}"

    def scoring(self) -> dict[str, Any]:
        """What the candidates' accuracy is measured in: their float model after brief training (on the training
        device, as in an fp32 study), whatever ``precision`` the latency is in; ``why`` says so where they differ
        (logged at the search's start, kept in study.json, shown in the report).

        Not a post-training quantization of each candidate: that adds an ONNX export, a calibration and an
        onnxruntime evaluation of val to every trial, for a difference smaller than the proxy's own error (brief
        against finalized accuracy, benchmarks/RESULTS.md#claim-proxy; int8 against fp32 of a finalized pick,
        #claim-int8-accuracy). ``finalize --precision int8`` measures the pick's int8 accuracy beside fp32's."""
        if self.precision == "fp32":
            return {"accuracy_in": "fp32", "why": None}
        then = (f"`vitsearch finalize --precision {self.precision}` measures the pick's {self.precision} accuracy "
                "beside fp32's" if self.precision == "int8" else "finalize ships fp32 and int8 models")
        return {"accuracy_in": "fp32", "why": (
            f"candidates are scored by their float (fp32) accuracy after brief training, not in {self.precision}: a "
            "post-training quantization of each would add an ONNX export, a calibration and an onnxruntime "
            "evaluation to every trial, for a change in accuracy smaller than brief training's own error "
            f"(benchmarks/RESULTS.md#claim-int8-accuracy); the latencies are {self.precision}'s (its table). {then}")}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchSettings":
        """The settings a ``study.json`` records (``to_dict``); fields this version does not know are ignored."""
        s = dict(d)
        train = dict(s.get("train") or {})
        train["weights"] = LossWeights(**train.get("weights", {}))
        s["train"] = TrainSettings(**train)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in s.items() if k in known})


@dataclass
class Candidate:
    """One evaluated config: a trial of the study or a baseline.

    Two accuracies, each from its split: ``val_accuracy`` is what the search decides by (Optuna's objective, the
    front, the best pick); ``accuracy`` is on the test split, which no decision reads: the model's accuracy as
    reports and records state it."""

    config: PruneConfig
    kind: str  # "search", LEARNED (the learned strategy's trial), "unpruned" or "uniform"
    predicted_ms: float
    accuracy: float | None = None  # on test: the accuracy stated; None: rejected before training
    gmacs: float | None = None
    train_seconds: float = 0.0
    trial: int | None = None
    feasible: bool = True
    status: str = "trained"
    block_tokens: tuple[int, ...] = ()
    selection_ms: float = 0.0
    checkpoint: str | None = None
    val_accuracy: float | None = None  # on val: what the search ranks and selects by; None: not trained

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(config=str(self.config), method=self.config.method,
                 blocks=list(self.config.keep), keep=list(self.config.keep.values()), block_tokens=list(self.block_tokens))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Candidate":
        """A candidate from its ``to_dict`` record (the baselines the study's storage keeps)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in fields}
        from ..pruning import PruneConfig

        d["config"] = PruneConfig.parse(d["config"])
        d["block_tokens"] = tuple(d.get("block_tokens", ()))
        return cls(**d)


@dataclass
class SearchResult:
    folder: Path
    budget_ms: float
    unpruned_ms: float
    trials: list[Candidate]
    front: list[Candidate]
    baselines: list[Candidate]
    limit_ms: float | None = None  # the predicted latency a pick may have: the budget less the table's headroom

    @property
    def best(self) -> Candidate | None:
        """The feasible candidate the search picks: the most accurate on val (the faster one on ties)."""
        ok = [c for c in self.trials if c.feasible and c.val_accuracy is not None]
        return max(ok, key=lambda c: (c.val_accuracy, -c.predicted_ms), default=None)
