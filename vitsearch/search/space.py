"""Search spaces: which blocks may hold a selector, how many, which keep ratios and methods.

The built-in spaces ship inside the package (``vitsearch/spaces/*.toml``, read with :mod:`importlib.resources`), so
an installed wheel finds them from any folder; a user's own space is any TOML file passed as ``--space``.
"""
from __future__ import annotations

import difflib
import itertools
import math
import random
import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import VitsearchError
from ..pruning import PruneConfig, method_of, pruning_methods

# A plain folder: wheels install as files (never zipped), so the built-in spaces are paths a study can record.
SPACES_DIR = Path(str(resources.files("vitsearch") / "spaces"))


@dataclass(frozen=True)
class SearchSpace:
    methods: tuple[str, ...]
    blocks: tuple[int, ...]  # blocks that may hold a selector
    max_selectors: int
    keep_min: float
    keep_max: float
    keep_step: float
    baseline_blocks: tuple[int, ...]
    baseline_keep: tuple[float, ...]
    source: str  # the file it was read from
    # The choices of a method whose block setting is a token count (PruningMethod.setting "count", e.g. tokens
    # merged): per selector block, and for every block at once (its 0-selector configs, and its baselines).
    count_choices: tuple[int, ...] = ()
    every_choices: tuple[int, ...] = ()

    @property
    def keep_choices(self) -> list[float]:
        n = round((self.keep_max - self.keep_min) / self.keep_step)
        return [round(self.keep_min + i * self.keep_step, 6) for i in range(n + 1)]

    def counts(self, method: str) -> bool:
        """Whether ``method``'s block setting is a token count rather than a keep ratio."""
        return method_of(method).setting == "count"

    def choices(self, method: str) -> list[float]:
        """The settings ``method`` may take at a selector block."""
        return [float(c) for c in self.count_choices] if self.counts(method) else self.keep_choices

    def min_selectors(self, method: str) -> int:
        """0 where the method may take one setting for every block (``METHOD:r=8``), else 1."""
        return 0 if self.counts(method) and self.every_choices else 1

    @property
    def trained_methods(self) -> tuple[str, ...]:
        """The methods a shared supernet trains: those with something to train and keep ratios at blocks."""
        return tuple(m for m in self.methods if not method_of(m).training_free and not self.counts(m))

    def selectors_over(self, config: PruneConfig) -> int:
        """How far ``config``'s selector count is outside what the space allows (<= 0: inside)."""
        low = 0 if config.every is not None else self.min_selectors(config.method)
        return max(len(config.keep) - self.max_selectors, low - len(config.keep))

    def suggest(self, trial: Any) -> PruneConfig:
        """Sample a config with an Optuna trial, each parameter only where the config uses it: the method, the
        number of selectors n, then ``block_i`` and ``keep_i`` for i = 1..n (the i-th selector's block and keep
        ratio). The count is its own parameter because it decides latency at batch 1 (each selector is a
        sequential step), and so that every count is sampled as often as the others. ``block_i`` ranges over
        the blocks that leave room for the selectors before it; proposals whose blocks are not increasing are
        not configs, and :class:`~vitsearch.search.coverage.CoverageSampler` never makes one."""
        method = trial.suggest_categorical("method", list(self.methods))
        count = trial.suggest_int("selectors", self.min_selectors(method), self.max_selectors)
        if count == 0:  # one setting for every block
            return PruneConfig(method=method, every=trial.suggest_categorical("every", list(self.every_choices)))
        keep: dict[int, float] = {}
        for i in range(1, count + 1):
            lo, hi = self.block_range(i)
            b = trial.suggest_int(f"block_{i}", lo, hi)
            if self.counts(method):  # a token count: its own parameter, as its distribution differs from a ratio's
                keep[b] = trial.suggest_categorical(f"count_{i}", list(self.count_choices))
            else:
                keep[b] = trial.suggest_float(f"keep_{i}", self.keep_min, self.keep_max, step=self.keep_step)
        blocks = list(keep)
        if len(keep) != count or blocks != sorted(blocks):
            raise VitsearchError(f"blocks {blocks} of a sampled config are not increasing")
        return PruneConfig(method=method, keep=keep)

    def block_range(self, i: int) -> tuple[int, int]:
        """The blocks the i-th selector (from 1) may take: every block but the first i - 1, which the selectors
        before it need. The same range for every count, so TPE learns one distribution per parameter."""
        return self.blocks[i - 1], self.blocks[-1]

    def params_of(self, config: PruneConfig) -> dict[str, Any]:
        """The trial parameters that :meth:`suggest` turns into ``config`` (for enqueueing known configs)."""
        if config.every is not None:
            return {"method": config.method, "selectors": 0, "every": int(config.every)}
        params: dict[str, Any] = {"method": config.method, "selectors": len(config.keep)}
        value = "count" if self.counts(config.method) else "keep"
        for i, (b, r) in enumerate(sorted(config.keep.items()), 1):
            params[f"block_{i}"], params[f"{value}_{i}"] = b, (int(r) if value == "count" else r)
        return params

    def strata(self) -> list[tuple[str, int]]:
        """(method, selector count) of every part of the space, in order (count 0: one setting for every block)."""
        return [(m, n) for m in self.methods
                for n in range(self.min_selectors(m), min(self.max_selectors, len(self.blocks)) + 1)]

    def stratum_size(self, method: str, n: int) -> int:
        """How many configs ``method`` has with ``n`` selectors."""
        if n == 0:
            return len(self.every_choices)
        return math.comb(len(self.blocks), n) * len(self.choices(method)) ** n

    def configs(self, method: str, n: int) -> Iterator[PruneConfig]:
        """Every config of ``method`` with ``n`` selectors: each placement, each setting at each selector (many
        are the same model: see :func:`~vitsearch.pruning.canonical_key`); with none, each setting for every
        block."""
        if n == 0:
            yield from (PruneConfig(method, every=r) for r in self.every_choices)
            return
        for blocks in itertools.combinations(self.blocks, n):
            for ratios in itertools.product(self.choices(method), repeat=n):
                yield PruneConfig(method, dict(zip(blocks, ratios)))

    def sample_configs(self, method: str, n: int, size: int, rng: random.Random) -> Iterator[PruneConfig]:
        """``size`` configs of ``method`` with ``n`` selectors drawn uniformly (with replacement)."""
        if n == 0:
            yield from (PruneConfig(method, every=rng.choice(self.every_choices)) for _ in range(size))
            return
        keep = self.choices(method)
        for _ in range(size):
            blocks = sorted(rng.sample(self.blocks, n))
            yield PruneConfig(method, {b: rng.choice(keep) for b in blocks})

    def baselines(self) -> list[PruneConfig]:
        """Uniform keep ratios at the standard placements, for every method whose setting is a keep ratio; a
        method whose setting is a token count: each setting for every block."""
        return [c for m in self.methods
                for c in ([PruneConfig(m, every=r) for r in self.every_choices] if self.counts(m)
                          else [PruneConfig(method=m, keep={b: r for b in self.baseline_blocks})
                                for r in self.baseline_keep])]

    def baseline_configs(self, which: str = "all") -> list[tuple[str, PruneConfig]]:
        """(kind, config) of the baselines ``which`` (``search.settings.BASELINES``) names: the unpruned model
        first, then the uniform ones."""
        unpruned = [("unpruned", PruneConfig())] if which in ("all", "unpruned") else []
        return unpruned + [("uniform", c) for c in self.baselines() if which in ("all", "uniform")]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_space_file(model_name: str) -> Path:
    """The family's built-in file: each embedded model has its own (``vitsearch/spaces/digits.toml``,
    ``clutter.toml``), every other model vitsearch prunes is a plain timm ViT/DeiT."""
    from ..models import embedded_task

    task = embedded_task(model_name)
    return SPACES_DIR / (task.space_file if task is not None else "vit.toml")


# A space file's schema: its sections and, for each key, its default (None: no default). Anything else is a typo
# that would otherwise run on the defaults without a word.
SCHEMA: dict[str, dict[str, Any]] = {
    "space": {"methods": None, "first_block": 3, "last_block": -1, "max_selectors": 3, "keep_min": 0.3,
              "keep_max": 0.95, "keep_step": 0.05, "counts": [], "counts_every": []},
    "baselines": {"blocks": [], "keep": []},
}


def _unknown(name: str, known: Iterable[str], what: str) -> str:
    """``what`` ``name`` is unknown: the known ones, and the closest as a suggestion."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {name!r}{hint}: the known ones are {', '.join(known)}"


def _whole(where: str, value: Any) -> int:
    """A TOML integer (not a float like 3.5 or 3.0, nor a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} = {value!r} must be a whole number, e.g. 3")
    return value


def _ratio(where: str, value: Any) -> float:
    """A finite TOML number in (0, 1]: a keep ratio."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} = {value!r} must be a finite number")
    if not 0 < value <= 1:
        raise ValueError(f"{where} = {value!r} is outside (0, 1]: a keep ratio is the share of tokens kept")
    return float(value)


def _positive(where: str, value: Any) -> int:
    """A whole number of tokens, at least 1."""
    if _whole(where, value) < 1:
        raise ValueError(f"{where} = {value!r} must be at least 1: a count of tokens, e.g. 8")
    return value


def _list(where: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where} = {value!r} must be a list, e.g. [3, 6, 9]")
    return value


def load_space(path: str | Path, *, depth: int) -> SearchSpace:
    """Read a search-space TOML for a model of ``depth`` blocks, checking it against :data:`SCHEMA` and every
    field against the model: unknown sections and keys, numbers that are not whole or not finite, keep ratios
    outside (0, 1], a step that does not divide the keep range, more selectors than blocks are all refused."""
    path = Path(path)
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in SPACES_DIR.glob("*.toml"))) or "none"
        raise VitsearchError(f"search space file {path} does not exist (built-in spaces in {SPACES_DIR}: {known})")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise VitsearchError(f"search space file {path} is not valid TOML: {e}") from None
    problems = [_unknown(k, SCHEMA, "section") + " (each written as [name])" for k in doc if k not in SCHEMA]
    for section, keys in SCHEMA.items():
        table = doc.get(section, {})
        if not isinstance(table, dict):
            problems.append(f"{section} must be a [{section}] section, not a value")
            continue
        problems += [_unknown(k, keys, f"key in [{section}]") for k in table if k not in keys]
    if problems:
        raise VitsearchError(f"search space file {path}: " + "; ".join(problems))
    given = doc.get("space", {})
    # Without a methods list: every method the space has choices for (a token-count method needs counts).
    offered = [m for m in pruning_methods() if method_of(m).setting != "count" or given.get("counts")
               or given.get("counts_every")]
    s = {**SCHEMA["space"], "methods": offered, **given}
    b = {**SCHEMA["baselines"], **doc.get("baselines", {})}

    def block(i: int) -> int:
        return i + depth if i < 0 else i

    try:
        first, last = block(_whole("first_block", s["first_block"])), block(_whole("last_block", s["last_block"]))
        methods = _list("methods", s["methods"])
        if not all(isinstance(m, str) for m in methods):
            raise ValueError(f"methods = {methods!r} must be a list of method names")
        space = SearchSpace(
            methods=tuple(methods),
            blocks=tuple(range(first, last + 1)),
            max_selectors=_whole("max_selectors", s["max_selectors"]),
            keep_min=_ratio("keep_min", s["keep_min"]), keep_max=_ratio("keep_max", s["keep_max"]),
            keep_step=_ratio("keep_step", s["keep_step"]),
            baseline_blocks=tuple(block(_whole("baselines.blocks", i)) for i in _list("baselines.blocks", b["blocks"])),
            baseline_keep=tuple(_ratio("baselines.keep", r) for r in _list("baselines.keep", b["keep"])),
            source=str(path),
            count_choices=tuple(_positive("counts", c) for c in _list("counts", s["counts"])),
            every_choices=tuple(_positive("counts_every", c) for c in _list("counts_every", s["counts_every"])),
        )
    except ValueError as e:
        raise VitsearchError(f"search space file {path}: {e}") from None
    problems = []
    if not space.blocks or space.blocks[0] < 0 or space.blocks[-1] >= depth:
        problems.append(f"selector blocks {first}..{last} do not fit a model of {depth} blocks")
    if any(not 0 <= x < depth for x in space.baseline_blocks):
        problems.append(f"baseline blocks {list(space.baseline_blocks)} do not fit a model of {depth} blocks")
    if len(set(space.baseline_blocks)) < len(space.baseline_blocks):
        problems.append(f"baseline blocks {list(space.baseline_blocks)} name a block twice")
    if space.keep_min > space.keep_max:
        problems.append(f"keep_min {space.keep_min:g} is above keep_max {space.keep_max:g}")
    else:
        # The supernet and Optuna sample keep_min + i * keep_step: a step that overshoots the range samples
        # above keep_max (0.3 + 9 * 0.07 = 0.93 for keep_max = 0.9).
        steps = (space.keep_max - space.keep_min) / space.keep_step
        if abs(steps - round(steps)) > 1e-6:
            fits = space.keep_min + math.floor(steps) * space.keep_step
            problems.append(
                f"keep_step {space.keep_step:g} does not divide keep_max - keep_min = "
                f"{space.keep_max - space.keep_min:g} ({steps:.2f} steps): use a step that does (e.g. 0.05), or "
                f"keep_max = {fits:g}")
    bad = [m for m in space.methods if m not in pruning_methods()]
    if bad or not space.methods:
        problems.append(f"methods must be among {', '.join(pruning_methods())}, got {list(space.methods)}")
    needs = [m for m in space.methods if m in pruning_methods() and method_of(m).setting == "count"
             and not space.count_choices and not space.every_choices]
    if needs:
        problems.append(f"{', '.join(needs)} take a token count at each block, not a keep ratio: give counts = "
                        "[...] (the choices at a selector block) or counts_every = [...] (for every block), e.g. "
                        "counts = [4, 8, 12]")
    if space.max_selectors < 1:
        problems.append("max_selectors must be at least 1")
    elif space.blocks and space.max_selectors > len(space.blocks):
        # Refused rather than clamped: a typo (1000000 for 3) would otherwise run a different search silently.
        problems.append(f"max_selectors = {space.max_selectors} is more than the {len(space.blocks)} blocks that "
                        f"may hold a selector ({first}..{last}): use at most {len(space.blocks)}")
    if problems:
        raise VitsearchError(f"search space file {path}: " + "; ".join(problems))
    return space
