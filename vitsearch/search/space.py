"""Search spaces: which blocks may hold a selector, how many, which keep ratios and methods.

The built-in spaces ship inside the package (``vitsearch/spaces/*.toml``, read with :mod:`importlib.resources`), so
an installed wheel finds them from any folder; a user's own space is any TOML file passed as ``--space``.
"""
from __future__ import annotations

import itertools
import math
import random
import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from ..errors import VitsearchError
from ..pruning import PruneConfig, pruning_methods

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

    @property
    def keep_choices(self) -> list[float]:
        n = round((self.keep_max - self.keep_min) / self.keep_step)
        return [round(self.keep_min + i * self.keep_step, 6) for i in range(n + 1)]

    def suggest(self, trial: Any) -> PruneConfig:
        """Sample a config with an Optuna trial, each parameter only where the config uses it: the method, the
        number of selectors n, then ``block_i`` and ``keep_i`` for i = 1..n (the i-th selector's block and keep
        ratio). The count is its own parameter because it decides latency at batch 1 (each selector is a
        sequential step), and so that every count is sampled as often as the others. ``block_i`` ranges over
        the blocks that leave room for the selectors before it; proposals whose blocks are not increasing are
        not configs, and :class:`~vitsearch.search.coverage.CoverageSampler` never makes one."""
        method = trial.suggest_categorical("method", list(self.methods))
        count = trial.suggest_int("selectors", 1, self.max_selectors)
        keep: dict[int, float] = {}
        for i in range(1, count + 1):
            lo, hi = self.block_range(i)
            b = trial.suggest_int(f"block_{i}", lo, hi)
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
        params: dict[str, Any] = {"method": config.method, "selectors": len(config.keep)}
        for i, (b, r) in enumerate(sorted(config.keep.items()), 1):
            params[f"block_{i}"], params[f"keep_{i}"] = b, r
        return params

    def strata(self) -> list[tuple[str, int]]:
        """(method, selector count) of every part of the space, in order."""
        return [(m, n) for m in self.methods for n in range(1, min(self.max_selectors, len(self.blocks)) + 1)]

    def stratum_size(self, n: int) -> int:
        """How many configs one method has with ``n`` selectors."""
        return math.comb(len(self.blocks), n) * len(self.keep_choices) ** n

    def configs(self, method: str, n: int) -> Iterator[PruneConfig]:
        """Every config of ``method`` with ``n`` selectors: each placement, each keep ratio at each selector (many
        are the same model: see :func:`~vitsearch.pruning.canonical_key`)."""
        for blocks in itertools.combinations(self.blocks, n):
            for ratios in itertools.product(self.keep_choices, repeat=n):
                yield PruneConfig(method, dict(zip(blocks, ratios)))

    def sample_configs(self, method: str, n: int, size: int, rng: random.Random) -> Iterator[PruneConfig]:
        """``size`` configs of ``method`` with ``n`` selectors drawn uniformly (with replacement)."""
        keep = self.keep_choices
        for _ in range(size):
            blocks = sorted(rng.sample(self.blocks, n))
            yield PruneConfig(method, {b: rng.choice(keep) for b in blocks})

    def baselines(self) -> list[PruneConfig]:
        """Uniform keep ratios at the standard placements, for every method."""
        return [PruneConfig(method=m, keep={b: r for b in self.baseline_blocks})
                for m in self.methods for r in self.baseline_keep]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_space_file(model_name: str) -> Path:
    """The family's built-in file: the embedded digits model has its own (see ``vitsearch/spaces/digits.toml``),
    every other model vitsearch prunes is a plain timm ViT/DeiT."""
    return SPACES_DIR / ("digits.toml" if model_name in ("digits", "vit_digits") else "vit.toml")


def load_space(path: str | Path, *, depth: int) -> SearchSpace:
    """Read a search-space TOML for a model of ``depth`` blocks, checking every field against the model."""
    path = Path(path)
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in SPACES_DIR.glob("*.toml"))) or "none"
        raise VitsearchError(f"search space file {path} does not exist (built-in spaces in {SPACES_DIR}: {known})")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise VitsearchError(f"search space file {path} is not valid TOML: {e}") from None
    s, b = doc.get("space", {}), doc.get("baselines", {})

    def block(i: int) -> int:
        return i + depth if i < 0 else i

    try:
        first, last = block(int(s.get("first_block", 3))), block(int(s.get("last_block", -1)))
        space = SearchSpace(
            methods=tuple(s.get("methods", pruning_methods())),
            blocks=tuple(range(first, last + 1)),
            max_selectors=int(s.get("max_selectors", 3)),
            keep_min=float(s.get("keep_min", 0.3)), keep_max=float(s.get("keep_max", 0.95)),
            keep_step=float(s.get("keep_step", 0.05)),
            baseline_blocks=tuple(block(int(i)) for i in b.get("blocks", [])),
            baseline_keep=tuple(float(r) for r in b.get("keep", [])),
            source=str(path),
        )
    except (TypeError, ValueError) as e:
        raise VitsearchError(f"search space file {path}: {e}") from None
    problems = []
    if not space.blocks or space.blocks[0] < 0 or space.blocks[-1] >= depth:
        problems.append(f"selector blocks {first}..{last} do not fit a model of {depth} blocks")
    if any(not 0 <= x < depth for x in space.baseline_blocks):
        problems.append(f"baseline blocks {list(space.baseline_blocks)} do not fit a model of {depth} blocks")
    if not 0 < space.keep_min <= space.keep_max <= 1 or space.keep_step <= 0:
        problems.append("keep ratios need 0 < keep_min <= keep_max <= 1 and keep_step > 0")
    bad = [m for m in space.methods if m not in pruning_methods()]
    if bad or not space.methods:
        problems.append(f"methods must be among {', '.join(pruning_methods())}, got {list(space.methods)}")
    if space.max_selectors < 1:
        problems.append("max_selectors must be at least 1")
    if problems:
        raise VitsearchError(f"search space file {path}: " + "; ".join(problems))
    return space
