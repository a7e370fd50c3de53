"""Search spaces: which blocks may hold a selector, how many, which keep ratios and methods.

The built-in spaces ship inside the package (``vitsearch/spaces/*.toml``, read with :mod:`importlib.resources`), so
an installed wheel finds them from any folder; a user's own space is any TOML file passed as ``--space``.
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

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
        """Sample a config with an Optuna trial. The space is the same for every trial (a use flag and a keep
        ratio per block, and how many selectors), which TPE and NSGA-II model best. The config takes the first
        ``selectors`` flagged blocks: a fixed map from parameters to configs, so no trial is wasted on a config the
        space does not allow. The count is its own parameter because it decides latency at batch 1 (each selector
        is a sequential step): from eight independent flags alone, one selector came up in 3% of the trials."""
        method = trial.suggest_categorical("method", list(self.methods))
        count = trial.suggest_int("selectors", 1, self.max_selectors)
        keep = {}
        for b in self.blocks:
            use = trial.suggest_categorical(f"use_{b}", [True, False])
            ratio = trial.suggest_float(f"keep_{b}", self.keep_min, self.keep_max, step=self.keep_step)
            if use and len(keep) < count:
                keep[b] = ratio
        return PruneConfig(method=method, keep=keep)

    def params_of(self, config: PruneConfig) -> dict[str, Any]:
        """The trial parameters that :meth:`suggest` turns into ``config`` (for enqueueing known configs)."""
        params: dict[str, Any] = {"method": config.method, "selectors": min(max(1, len(config.keep)),
                                                                            self.max_selectors)}
        for b in self.blocks:
            params[f"use_{b}"] = b in config.keep
            params[f"keep_{b}"] = config.keep.get(b, self.keep_max)
        return params

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
