"""Does the search's proxy accuracy rank configs as finalize does? (issue 14 item 1, "Measure the proxy")

For each config (by default 14 on the digits model: both methods, one to three selectors, keep 0.1-0.9) the proxy
accuracy of every strategy, computed as the search computes it:
- brief: the search's brief training of the candidate (``Evaluator``, strategy ``brief``), over ``--seeds`` seeds;
  seed 0 is the search's own number, the others give its spread;
- shared: one weight-sharing supernet, trained once (strategy ``shared``), each config evaluated from it;
- training-free: the config applied to the base model, nothing trained (finalize's ``accuracy_training_free``);
and the finalized accuracy: the config trained from the base by its method's progressive schedule (finalize's
``plan`` and ``train_schedule``, ``--steps`` steps). Reported per strategy: Kendall's tau between proxy and finalized
accuracy over all configs and per method, and the top-3 overlap (how many of the 3 best configs by the proxy are
among the 3 best finalized; ties keep the config list's order); for brief also the tau of the seed median. With
``--finalize-seeds N`` the finalized accuracy is the mean of N finalize seeds, and each pair of finalize seeds is
ranked against each other: the ceiling no proxy can be expected to beat.
Target (issue 14): tau >= 0.7 for brief, the search's default, over both methods together.

Every result is cached in ``--work``/proxy.json under its quantity, recipe and config, with the fingerprint of the
vitsearch source that computed it, and a finalize in progress saves its training state there, so an interrupted
run resumes without training again what is done. A result from other source code is computed again, except
finalized ones under ``--reuse-finalized`` (after a change that cannot affect finalize: the report says so).

    .venv/bin/python benchmarks/proxy.py [--steps 600] [--seeds 3] [--finalize-seeds 2] [--configs ...]

Writes its section of benchmarks/RESULTS.md (unless ``--no-results``), prints a table and a last JSON line.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import ROOT, wait_for_quiet, write_section  # noqa: E402
from vitsearch import __version__  # noqa: E402
from vitsearch.errors import VitsearchError  # noqa: E402
from vitsearch.files import write_json  # noqa: E402
from vitsearch.finalize import FinalizeSettings  # noqa: E402
from vitsearch.pruning import PruneConfig  # noqa: E402
from vitsearch.search import Evaluator, SearchSettings, Setup, prepare  # noqa: E402
from vitsearch.stats import kendall_tau  # noqa: E402
from vitsearch.studyfolder import StudyFolder  # noqa: E402
from vitsearch.training import accuracy, fresh_model, train_candidate  # noqa: E402
from vitsearch.training import progressive  # noqa: E402

logger = logging.getLogger("benchmark.proxy")

# Both methods, one to three selectors, keep ratios over the digits space's range (blocks 3-10, keep 0.1-0.9), so
# the shared supernet has a selector wherever a config puts one. SPViT ratios compound; an Evo-ViT ratio is a share
# of all patches, re-ranked at every stage.
DEFAULT_CONFIGS = (
    "spvit:3=0.3", "spvit:3=0.7", "spvit:6=0.15", "spvit:4=0.5,7=0.5", "spvit:3=0.9,8=0.2",
    "spvit:3=0.7,6=0.7,9=0.5", "spvit:3=0.5,5=0.5,8=0.5",
    "evovit:3=0.5", "evovit:4=0.3", "evovit:6=0.1", "evovit:3=0.5,6=0.5", "evovit:3=0.7,7=0.3",
    "evovit:4=0.5,8=0.25", "evovit:3=0.3,6=0.2,9=0.1",
)
TARGET_TAU = 0.7  # issue 14: brief (the default strategy), both methods together
QUIET_LOAD = 1.5
LOG_EVERY_S = 10.0
STRATEGIES = ("brief", "brief_median", "shared", "training_free")


def config_arg(text: str) -> PruneConfig:
    try:
        config = PruneConfig.parse(text)
    except VitsearchError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not config.keep:
        raise argparse.ArgumentTypeError(f"config {text!r} prunes nothing: give METHOD:BLOCK=KEEP,...")
    return config


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def digest(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:10]


def code_fingerprint() -> str:
    """The vitsearch source (every .py and .toml), so results of other code are not taken for this code's."""
    h = hashlib.sha256()
    for path in sorted(p for p in (ROOT / "vitsearch").rglob("*") if p.suffix in (".py", ".toml")):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:10]


class Cache:
    """Results already computed, in one JSON file: ``"<quantity> <recipe digest> <config>"`` -> record; a record
    counts if the source ``code`` computed it (a finalized one from any source if ``reuse_finalized``)."""

    def __init__(self, path: Path, code: str, reuse_finalized: bool = False) -> None:
        self.path, self.code, self.reuse_finalized = path, code, reuse_finalized
        self.entries: dict[str, dict[str, Any]] = (json.loads(path.read_text())["entries"]
                                                    if path.is_file() else {})

    def get(self, key: str) -> dict[str, Any] | None:
        record = self.entries.get(key)
        if record is None or record.get("code") == self.code or (self.reuse_finalized and key.startswith("finalized ")):
            return record
        return None

    def put(self, key: str, record: dict[str, Any]) -> None:
        self.entries[key] = record
        write_json(self.path, {"entries": self.entries})


@dataclasses.dataclass
class Unit:
    """One accuracy to compute: ``quantity`` of ``config`` (brief: with ``seed``), at ``estimate_s`` seconds."""

    quantity: str  # "training_free", "brief", "shared", "finalized"
    config: PruneConfig
    key: str
    run: Callable[[], float]
    seed: int | None = None
    estimate_s: float = 0.0


def step_seconds(setup: Setup, config: PruneConfig, settings: SearchSettings, batch: int, latency: Any) -> float:
    """Seconds per training step of ``config`` at ``batch`` on the training device: 4 steps, the first untimed."""
    stamps: list[float] = []
    model = fresh_model(setup.base, config, 0)
    train = dataclasses.replace(settings.train, steps=4, batch_size=batch, warmup_steps=1)
    train_candidate(model, setup.base, setup.splits, train, latency=latency, precision=setup.precision,
                    after=lambda done, parts: stamps.append(time.perf_counter()))
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def finalized_model(setup: Setup, config: PruneConfig, settings: FinalizeSettings, latency: Any,
                    state_path: Path) -> Any:
    """Finalize's training of ``config`` (its progressive schedule, from the base), resumable at ``state_path``."""
    model = fresh_model(setup.base, config, settings.seed)
    phases = progressive.plan(config, settings, settings.steps)
    first: list[tuple[int, float]] = []
    last = time.perf_counter()

    def on_step(step: int, phase: Any) -> None:
        nonlocal last
        now = time.perf_counter()
        if not first:
            first.append((step, now))
        if now - last >= LOG_EVERY_S:
            last = now
            per_step = (now - first[0][1]) / max(step - first[0][0], 1)
            logger.info("finalize %s: step %d/%d, phase %s, %.2f s/step, about %.0f s left", config, step,
                        settings.steps, phase.config, per_step, per_step * (settings.steps - step))

    state_path.parent.mkdir(parents=True, exist_ok=True)
    progressive.train_schedule(model, setup.base, setup.splits, config, phases, settings, latency=latency,
                               state_path=state_path, on_step=on_step, progress=False, precision=setup.precision)
    state_path.unlink(missing_ok=True)
    return model


def finalized_accuracy(setup: Setup, config: PruneConfig, settings: FinalizeSettings, latency: Any,
                       state_path: Path) -> float:
    """The val accuracy of :func:`finalized_model`."""
    return accuracy(finalized_model(setup, config, settings, latency, state_path), setup.splits,
                    precision=setup.precision)


def ranking(proxy: dict[str, float], final: dict[str, float], methods: dict[str, str]) -> dict[str, Any]:
    """Kendall's tau of ``proxy`` against ``final`` (all configs, and per method), and the top-3 overlap."""
    names = list(proxy)

    def tau(subset: list[str]) -> float | None:
        t = kendall_tau([proxy[n] for n in subset], [final[n] for n in subset]) if len(subset) > 1 else math.nan
        return None if math.isnan(t) else t

    def top(values: dict[str, float]) -> list[str]:
        return sorted(names, key=lambda n: -values[n])[:3]  # stable: ties keep the config list's order

    return {"tau": tau(names),
            "tau_by_method": {m: tau([n for n in names if methods[n] == m]) for m in sorted(set(methods.values()))},
            "top3_proxy": top(proxy), "top3_finalized": top(final),
            "top3_overlap": len(set(top(proxy)) & set(top(final)))}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=FinalizeSettings().steps, help="finalize steps")
    parser.add_argument("--seeds", type=positive_int, default=3, help="brief-training seeds (0..N-1; 0: the search's)")
    parser.add_argument("--finalize-seeds", type=positive_int, default=1,
                        help="finalize seeds (0..N-1): the ranking to predict is their mean, and with 2 or more the "
                             "report gives how well one finalize ranks like another (the ceiling of any proxy)")
    parser.add_argument("--configs", type=config_arg, nargs="+", help=f"configs (default: {len(DEFAULT_CONFIGS)} "
                        "spanning both methods, 1-3 selectors and the keep range)")
    parser.add_argument("--brief-steps", type=positive_int, default=SearchSettings().train.steps,
                        help="steps of the brief training (default: the search's)")
    parser.add_argument("--shared-steps", type=positive_int, default=SearchSettings().shared_steps,
                        help="steps of the shared supernet (default: the search's)")
    parser.add_argument("--work", type=Path, default=Path("/work/bench/proxy"), help="cache and training state")
    parser.add_argument("--tables", type=Path, default=ROOT / "latency_tables",
                        help="latency tables (a missing CPU table is profiled first, as a search does)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch.set_num_threads for training")
    parser.add_argument("--wait", type=float, default=30, help="seconds to wait for a quiet machine first")
    parser.add_argument("--reuse-finalized", action="store_true", help="reuse finalized accuracies computed by "
                        "other vitsearch source (only after a change that cannot affect finalize)")
    parser.add_argument("--no-results", action="store_true", help="print only; leave RESULTS.md alone (smoke runs)")
    return parser.parse_args()


def quiet_machine(limit: float) -> float:
    """``wait_for_quiet``, saying every ~10 s that it waits; returns the 1-minute load."""
    deadline = time.monotonic() + limit
    while os.getloadavg()[0] >= QUIET_LOAD and time.monotonic() < deadline:
        logger.info("1-min load %.2f: waiting up to %.0f s more for it to fall below %.1f", os.getloadavg()[0],
                    deadline - time.monotonic(), QUIET_LOAD)
        time.sleep(max(min(LOG_EVERY_S, deadline - time.monotonic()), 0.0))
    return wait_for_quiet(QUIET_LOAD, 0)  # the load, and the common warning if the machine is still busy


@dataclasses.dataclass
class Plan:
    """Every result the run needs, and the shared strategy's supernet folder (trained once, kept for resumes)."""

    units: list[Unit]
    supernets: StudyFolder


def plan_units(args: argparse.Namespace, configs: list[PruneConfig], setup: Setup, settings: SearchSettings,
               fin_settings: FinalizeSettings, latency: Any, code: str) -> Plan:
    """The units in the order they run: the cheap proxies of every config first, finalize last."""
    table = setup.predictor.table
    common = {"base_sha256": setup.base_info["sha256"], "split": setup.base_info["split"],
              "table_sha256": hashlib.sha256(Path(table.path).read_bytes()).hexdigest(),
              "training": setup.precision.to_dict()}
    digests = {q: digest(r) for q, r in {
        "training_free": {"base_sha256": common["base_sha256"], "seed": fin_settings.seed},
        "brief": {**common, "train": settings.train.to_dict()},
        "shared": {**common, "train": settings.train.to_dict(), "shared_steps": settings.shared_steps,
                   "shared_finetune_steps": settings.shared_finetune_steps, "space": setup.space.to_dict()},
        "finalized": {**common, "finalize": fin_settings.to_dict()},
    }.items()}

    def evaluator(strategy: str, seed: int, folder: StudyFolder | None = None) -> Evaluator:
        train = dataclasses.replace(settings.train, seed=seed)
        e = Evaluator(dataclasses.replace(setup, folder=folder or setup.folder),
                      dataclasses.replace(settings, strategy=strategy, train=train))
        e.estimated = True  # this benchmark estimates its own cost; the search's estimate would describe a search
        return e

    supernets = StudyFolder(args.work / "supernets" / f"{digests['shared']}-{code}").make()
    shared = evaluator("shared", settings.train.seed, supernets)
    brief = {seed: evaluator("brief", seed) for seed in range(args.seeds)}
    units: list[Unit] = []
    for c in configs:
        units.append(Unit("training_free", c, f"training_free {digests['training_free']} {c}",
                          lambda c=c: accuracy(fresh_model(setup.base, c, fin_settings.seed), setup.splits,
                                               precision=setup.precision)))
    for c in configs:
        for seed in range(args.seeds):
            units.append(Unit("brief", c, f"brief {digests['brief']} seed={seed} {c}",
                              lambda c=c, seed=seed: brief[seed].evaluate(c, "search").accuracy, seed))
    for c in configs:
        units.append(Unit("shared", c, f"shared {digests['shared']} {c}",
                          lambda c=c: shared.evaluate(c, "search").accuracy))
    for seed in range(args.finalize_seeds):  # seed 0 keys as before seeds were added (its cache entries stay valid)
        fin = dataclasses.replace(fin_settings, seed=seed)
        tag = "" if seed == 0 else f"seed={seed} "
        for c in configs:
            state = args.work / "state" / (f"{digests['finalized']}-{code}-{tag.replace('=', '')}"
                                           f"{re.sub(r'[^A-Za-z0-9.]+', '_', str(c))}.pt")
            units.append(Unit("finalized", c, f"finalized {digests['finalized']} {tag}{c}",
                              lambda c=c, state=state, fin=fin: finalized_accuracy(setup, c, fin, latency, state),
                              seed))
    return Plan(units, supernets)


def estimate(plan: Plan, todo: list[Unit], setup: Setup, settings: SearchSettings, fin_settings: FinalizeSettings,
             latency: Any) -> tuple[float, float, str]:
    """Set every unit's ``estimate_s`` from steps x seconds per step (timed on the first config of each method);
    returns (seconds of the whole run, seconds still to do, the step costs in words)."""
    t0 = time.perf_counter()
    accuracy(setup.base, setup.splits, precision=setup.precision)
    eval_s = time.perf_counter() - t0 + 0.5  # + the candidate's GMACs count
    per_step = {}
    for method in sorted({u.config.method for u in plan.units}):
        first = next(u.config for u in plan.units if u.config.method == method)
        logger.info("timing training steps of %s", first)
        per_step[method] = (step_seconds(setup, first, settings, settings.train.batch_size, latency),
                            step_seconds(setup, first, settings, fin_settings.batch_size, latency))
    for u in plan.units:
        b, f = per_step[u.config.method]
        u.estimate_s = eval_s + {"training_free": 0.0, "brief": settings.train.steps * b,
                                 "shared": settings.shared_finetune_steps * b,
                                 "finalized": fin_settings.steps * f}[u.quantity]
    supernet_s = 3 * settings.shared_steps * statistics.mean(b for b, _ in per_step.values())  # 3 configs a step
    total = sum(u.estimate_s for u in plan.units) + supernet_s
    left = sum(u.estimate_s for u in todo)
    if any(u.quantity == "shared" for u in todo) and not plan.supernets.supernet.exists():
        left += supernet_s
    words = ", ".join(f"{m} {b:.2f} s/step brief, {f:.2f} s/step finalize" for m, (b, f) in per_step.items())
    return total, left, words


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    started, start_wall = time.perf_counter(), datetime.datetime.now(datetime.timezone.utc)
    configs = list({str(c): c for c in (args.configs or [PruneConfig.parse(c) for c in DEFAULT_CONFIGS])}.values())
    if len(configs) < 2:
        raise SystemExit("give at least two configs: a ranking needs two")
    load = quiet_machine(args.wait)
    search_defaults = SearchSettings(tables=str(args.tables), reports=str(args.work / "reports"), study="proxy",
                                     shared_steps=args.shared_steps)
    settings = dataclasses.replace(search_defaults,
                                   train=dataclasses.replace(search_defaults.train, steps=args.brief_steps))
    fin_settings = FinalizeSettings(steps=args.steps)
    logger.info("loading the digits base model and the CPU latency table (a first run trains the base model and "
                "profiles the table first, a few minutes each)")
    setup = prepare(settings)
    torch.set_num_threads(args.threads)
    for c in configs:
        if not set(c.blocks) <= set(setup.space.blocks):
            logger.warning("%s has a selector outside the search space's blocks %s: the shared supernet never "
                           "trained one there", c, list(setup.space.blocks))
    latency = Evaluator(setup, settings).latency  # the predictor's curve, as the search and finalize use it
    code = code_fingerprint()
    cache = Cache(args.work / "proxy.json", code, args.reuse_finalized)
    args.work.mkdir(parents=True, exist_ok=True)
    logger.info("results cache: %s (source fingerprint %s; delete the file to measure everything again)",
                cache.path, code)
    plan = plan_units(args, configs, setup, settings, fin_settings, latency, code)
    todo = [u for u in plan.units if cache.get(u.key) is None]
    left = 0.0
    if todo:
        total, left, words = estimate(plan, todo, setup, settings, fin_settings, latency)
        logger.info("estimated: %.1f min for the whole run (%d configs, %d brief seeds, finalize %d steps, %d "
                    "threads; %s), %.1f min of it still to do (%d of %d results cached)", total / 60, len(configs),
                    args.seeds, args.steps, args.threads, words, left / 60, len(plan.units) - len(todo),
                    len(plan.units))
    else:
        logger.info("every result is cached in %s: reporting only", cache.path)
    supernet_s = max(left - sum(u.estimate_s for u in todo), 0.0)  # the supernet's share of what is left
    for i, u in enumerate(plan.units, 1):
        if cache.get(u.key) is not None:
            continue
        t0 = time.perf_counter()
        value = u.run()
        seconds = time.perf_counter() - t0
        cache.put(u.key, {"accuracy": value, "seconds": round(seconds, 1), "threads": args.threads, "code": code,
                          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        left = max(left - u.estimate_s - (supernet_s if u.quantity == "shared" else 0.0), 0.0)
        if u.quantity == "shared":
            supernet_s = 0.0  # trained with the first shared result
        logger.info("[%d/%d] %s%s %s: %.4f in %.0f s; about %.1f min left", i, len(plan.units), u.quantity,
                    "" if u.seed is None else f" seed {u.seed}", u.config, value, seconds, left / 60)
    return report(args, configs, plan.units, cache, setup, settings, fin_settings, load, started, start_wall)


def report(args: argparse.Namespace, configs: list[PruneConfig], units: list[Unit], cache: Cache, setup: Setup,
           settings: SearchSettings, fin_settings: FinalizeSettings, load: float, started: float,
           start_wall: datetime.datetime) -> int:
    names = [str(c) for c in configs]
    methods = {str(c): c.method for c in configs}
    got: dict[str, dict[str, Any]] = {n: {"config": n, "method": methods[n], "brief_by_seed": [],
                                          "finalized_by_seed": []} for n in names}
    train_s, other_code = 0.0, []
    for u in units:
        record = cache.get(u.key)
        assert record is not None
        train_s += record["seconds"]
        if record.get("code") != cache.code:
            other_code.append(f"`{u.config}` ({record.get('code')})")
        row = got[str(u.config)]
        if u.quantity in ("brief", "finalized"):
            row[f"{u.quantity}_by_seed"].append(record["accuracy"])
        else:
            row[u.quantity] = record["accuracy"]
    for row in got.values():
        seeds = row["brief_by_seed"]
        row.update(brief=seeds[0], brief_median=statistics.median(seeds), brief_range=max(seeds) - min(seeds),
                   finalized=statistics.mean(row["finalized_by_seed"]))
    final = {n: got[n]["finalized"] for n in names}
    # The ceiling: how well one finalize seed ranks the configs like another (no proxy can be expected to beat it).
    pairs = [(a, b) for a in range(args.finalize_seeds) for b in range(a + 1, args.finalize_seeds)]
    ceiling = [ranking({n: got[n]["finalized_by_seed"][a] for n in names},
                       {n: got[n]["finalized_by_seed"][b] for n in names}, methods) for a, b in pairs]
    rankings = {s: ranking({n: got[n][s] for n in names}, final, methods) for s in STRATEGIES}
    tau = rankings["brief"]["tau"]
    met = tau is not None and tau >= TARGET_TAU
    held_out = sum(len(y) for _, y in setup.splits.held_out_batches(256))

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:+.3f}"

    method_names = sorted(set(methods.values()))
    seed_words = f"seeds 0-{args.seeds - 1}" if args.seeds > 1 else "seed 0"
    lines = [
        "## Proxy against finalized accuracy (issue 14 item 1)", "",
        f"`benchmarks/proxy.py --steps {args.steps} --seeds {args.seeds} --threads {args.threads}"
        + (f" --finalize-seeds {args.finalize_seeds}" if args.finalize_seeds > 1 else "")
        + (f" --brief-steps {args.brief_steps}" if args.brief_steps != SearchSettings().train.steps else "")
        + (f" --shared-steps {args.shared_steps}" if args.shared_steps != SearchSettings().shared_steps else "")
        + (f" --configs {' '.join(names)}" if args.configs else "")
        + f"` on {start_wall:%Y-%m-%d %H:%M} UTC: the digits base (sha256 {setup.base_info['sha256'][:12]}), "
        f"{len(configs)} configs, training on {setup.precision.device} ({setup.precision.name}). Proxies as the "
        f"search computes them: brief = {settings.train.steps} steps at batch {settings.train.batch_size} per "
        f"candidate, {seed_words} (seed 0 is the search's); shared = a supernet of "
        f"{settings.shared_steps} steps, then {settings.shared_finetune_steps} per config; training-free = the "
        f"config on the base, untrained. Finalized = the progressive schedule, {args.steps} steps at batch "
        f"{fin_settings.batch_size}"
        + (f", mean of seeds 0-{args.finalize_seeds - 1}" if args.finalize_seeds > 1 else "")
        + f". Held out: {held_out} images (one is {100 / held_out:.2f} points).", "",
        f"| config | method | brief, seed 0 | brief median [range], {seed_words} | shared | training-free "
        "| finalized" + (" (by seed)" if args.finalize_seeds > 1 else "") + " |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        r = got[n]
        lines.append(f"| `{n}` | {r['method']} | {pct(r['brief'])} | {pct(r['brief_median'])} "
                     f"[{pct(min(r['brief_by_seed']))}-{pct(max(r['brief_by_seed']))}] | {pct(r['shared'])} | "
                     f"{pct(r['training_free'])} | {pct(r['finalized'])}"
                     + (f" ({', '.join(pct(v) for v in r['finalized_by_seed'])})" if args.finalize_seeds > 1 else "")
                     + " |")
    labels = {"brief": "brief, seed 0 (the search's)", "brief_median": f"brief, median of {seed_words}",
              "shared": "shared", "training_free": "training-free"}
    lines += ["", f"| proxy | Kendall's tau, all {len(names)} | " + " | ".join(f"tau, {m}" for m in method_names)
              + " | top-3 overlap |", "|---|---|" + "---|" * len(method_names) + "---|"]
    for s in STRATEGIES:
        rk = rankings[s]
        by_method = " | ".join(num(rk["tau_by_method"][m]) for m in method_names)
        lines.append(f"| {labels[s]} | {num(rk['tau'])} | {by_method} | {rk['top3_overlap']}/3 |")
    for (a, b), rk in zip(pairs, ceiling):
        by_method = " | ".join(num(rk["tau_by_method"][m]) for m in method_names)
        lines.append(f"| finalize seed {a} as the proxy of seed {b} (the ceiling) | {num(rk['tau'])} | {by_method} "
                     f"| {rk['top3_overlap']}/3 |")
    ranges = [got[n]["brief_range"] for n in names]
    margin = None if tau is None else tau - TARGET_TAU
    verdict = (f"Target (issue 14): Kendall's tau >= {TARGET_TAU} for brief over both methods: "
               f"**{'met' if met else 'missed'}**, tau {num(tau)} (margin {num(margin)}); on the seed median "
               f"{num(rankings['brief_median']['tau'])}.")
    lines += ["", f"Top 3 finalized: {', '.join(f'`{n}`' for n in rankings['brief']['top3_finalized'])}; by brief: "
              f"{', '.join(f'`{n}`' for n in rankings['brief']['top3_proxy'])}. Brief seed spread (max - min over "
              f"{seed_words}): median {100 * statistics.median(ranges):.2f} points, largest "
              f"{100 * max(ranges):.2f}.", "", verdict, "",
              f"Load average at start {load:.2f}; training time of all results {train_s / 60:.1f} min (this run "
              f"{(time.perf_counter() - started) / 60:.1f} min wall; cache `{cache.path}`, source {cache.code})."]
    if other_code:
        lines += ["", f"Finalized accuracies reused from other source (`--reuse-finalized`): {', '.join(other_code)}."]
    text = "\n".join(lines)
    if not args.no_results:
        write_section("proxy", text)
    print(text)
    print(json.dumps({"configs": list(got.values()), "rankings": rankings,
                      "ceiling": [{"seeds": list(p), **rk} for p, rk in zip(pairs, ceiling)],
                      "target": {"tau": TARGET_TAU, "strategy": "brief", "met": met, "margin": margin},
                      "settings": {"steps": args.steps, "seeds": args.seeds, "finalize_seeds": args.finalize_seeds,
                                   "brief_steps": settings.train.steps,
                                   "shared_steps": settings.shared_steps, "threads": args.threads,
                                   "training": setup.precision.to_dict()},
                      "held_out": held_out, "cache": str(cache.path), "source": cache.code,
                      "reused_from_other_source": other_code, "load_average": load,
                      "wall_s": round(time.perf_counter() - started, 1), "train_s": round(train_s, 1),
                      "machine": platform.platform(), "vitsearch": __version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
