"""The ``vitsearch`` command line: a thin layer over the library.

Each command is a small :class:`Command` subclass listed in :data:`COMMANDS`; add a command by writing one and
appending it there. :func:`main` is the only place that sets up logging and turns an error into one
``error: ...`` line instead of a traceback (``--debug`` shows it): exit code 2 for bad input (as argparse uses for a
bad command line), 1 for a failure while running (:class:`~vitsearch.errors.RunFailure`: a device, database or hub
out of reach, a measurement that failed).

Option names mean one thing in every command: ``--model``/``--checkpoint`` the model, ``--dataset`` the data,
``--device``/``--tables``/``--threads`` the latency table, ``--batch`` the batch a latency is measured or
predicted for, ``--train-batch`` the training batch, ``--reports`` the folder of study folders, ``--storage`` the
Optuna storage, a study named by ``--study`` (search) or as the first argument (report, plot, finalize).
"""
from __future__ import annotations

import abc
import argparse
import dataclasses
import errno
import json
import logging
import math
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .errors import RunFailure, VitsearchError

logger = logging.getLogger("vitsearch")

EXIT_FAILURE = 1  # the input was fine, running it failed
EXIT_BAD_INPUT = 2  # the same code argparse uses for a bad command line
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # SIGTERM (a scheduler, docker stop, timeout): 128 + SIGTERM


class Command(abc.ABC):
    """One subcommand: ``name`` and ``help`` for the parser, then ``add_arguments`` and ``run``.

    ``run`` returns the exit code; it raises :class:`VitsearchError` for bad input and prints its results
    (a human summary, and where a script may want it, a last line of JSON).
    """

    name: str
    help: str

    def parents(self) -> list[argparse.ArgumentParser]:
        """The shared option groups this command takes (``model_options()``, ``reports_options()``, ...)."""
        return []

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's own options to its subparser. Import only light modules here (settings, for their
        defaults): the parser of every command is built for ``--help``; heavy imports belong in ``run``."""

    @abc.abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Run with the parsed arguments and return the exit code."""


# Numeric options are checked where they are parsed (argparse ``type=``): argparse then names the option and its
# value in one line, before anything runs. Floats must be finite: ``float()`` reads "nan" and "inf" too.

def whole_number(text: str, minimum: int) -> int:
    """``text`` as an int of at least ``minimum``, or the argparse error that names what was expected."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number (1 or more)" if minimum == 1
                                         else f"expected a whole number >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number >= 1."""
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse ``type``: a whole number >= 0."""
    return whole_number(text, 0)


def finite_float(text: str) -> float:
    """An argparse ``type``: any finite number (no NaN, no infinity)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number: give a number like 0.001")
    return value


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number > 0 (a learning rate, a share of epochs)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not positive: give a number greater than 0")
    return value


def non_negative_float(text: str) -> float:
    """An argparse ``type``: a finite number >= 0 (a loss weight, a tolerance)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative: give 0 or more")
    return value


def share(text: str) -> float:
    """A fraction option: a finite number in [0, 1)."""
    try:
        value = finite_float(text)
    except argparse.ArgumentTypeError:
        value = math.nan
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share in [0, 1), such as 0.2")
    return value


def headroom(text: str) -> float | None:
    """``--headroom``: ``auto`` (None: from the table's validation) or a share of the budget such as 5% or 0."""
    if text.strip().lower() == "auto":
        return None
    number = text.strip().removesuffix("%")
    try:
        value = finite_float(number) / (100.0 if text.strip().endswith("%") else 1.0)
    except argparse.ArgumentTypeError:
        value = math.nan
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or a headroom such as 5% or 0.05 (0 to under 100%)")
    return value


def budget(text: str) -> Any:
    """An argparse ``type``: a latency budget (``vitsearch.search.parse_budget``: 30ms, 0.03s, 60%)."""
    from .search.budget import parse_budget

    try:
        return parse_budget(text)
    except VitsearchError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def prune_config(text: str) -> Any:
    """An argparse ``type``: a pruning config (``PruneConfig.parse``). Imports the pruning methods (torch), so only
    when the option is given."""
    from .pruning import PruneConfig

    try:
        return PruneConfig.parse(text)
    except VitsearchError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def shares(text: str) -> tuple[float, ...]:
    """An argparse ``type``: comma-separated shares of a whole, each in (0, 1), like 0.3,0.6."""
    try:
        values = tuple(finite_float(v) for v in text.split(","))
    except argparse.ArgumentTypeError:
        values = ()
    if not values or not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of shares in (0, 1) like 0.3,0.6")
    return values


def validation_count(text: str) -> int:
    """An argparse ``type``: 0 (no validation) or at least 2 configs, the fewest a rank correlation needs."""
    value = non_negative_int(text)
    if value == 1:
        raise argparse.ArgumentTypeError("1 config cannot be ranked: give 0 (no validation) or at least 2")
    return value


# Options shared by several commands, each defined once here on a parent parser (a fresh one per command, so one
# command's set_defaults never touches another's). Defaults come from the settings dataclasses, which import no
# torch: building the whole parser stays fast (``--help``, ``--version``, a mistyped flag).

def model_options() -> argparse.ArgumentParser:
    from .search.settings import SearchSettings

    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--model", default=SearchSettings.model, metavar="NAME",
                        help="timm ViT/DeiT name, e.g. deit_small_patch16_224, or a built-in model, trained and "
                             "cached on first use: digits, or clutter (digits among clutter, where the kept tokens "
                             "matter)")
    return parent


def checkpoint_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--checkpoint", type=Path, metavar="PATH",
                        help="weights of --model (.pt/.pth state_dict or .safetensors; never unpickles code); a "
                             "built-in model without one uses its cached trained base")
    return parent


def weights_options() -> argparse.ArgumentParser:
    """The head and hub options of the commands that build a model from its name (info, export)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--num-classes", type=positive_int, metavar="N",
                        help="classes of the model's head (default: read from the checkpoint, else the model's)")
    parent.add_argument("--pretrained", action="store_true",
                        help="download timm's pretrained weights (needs the Hugging Face Hub; offline, with the "
                             "weights in its cache: HF_HUB_OFFLINE=1)")
    return parent


def reports_options() -> argparse.ArgumentParser:
    from .search.settings import SearchSettings

    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--reports", type=Path, default=Path(SearchSettings.reports), metavar="DIR",
                        help="folder of study folders")
    return parent


def seed_options() -> argparse.ArgumentParser:
    from .search.settings import SearchSettings

    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--seed", type=non_negative_int, default=SearchSettings.seed, metavar="S",
                        help="random seed of everything the command draws (samplers, training batches and "
                             "initialisation, data subsets, validation configs): the same seed, the same run")
    return parent


def latency_options() -> argparse.ArgumentParser:
    """The options that name a latency table beside the model: device, batch, tables folder."""
    from .search.settings import SearchSettings

    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--device", default=SearchSettings.device, metavar="NAME",
                        help="latency target: a device name from the registry (cpu, cuda, torch-cpu, pixel, your own "
                             "in <tables>/devices.toml) or ssh://user@host[:port]")
    parent.add_argument("--batch", type=positive_int, default=SearchSettings.batch, metavar="B",
                        help="batch the latency is measured or predicted for")
    parent.add_argument("--tables", type=Path, default=Path(SearchSettings.tables), metavar="DIR",
                        help="latency tables folder")
    parent.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=SearchSettings.precision,
                        help="precision the model runs in on the device: each has its own table (int8: onnxruntime "
                             "QDQ static quantization)")
    return parent


def training_options() -> argparse.ArgumentParser:
    """Where and how a command that trains does it: ``--train-device``, ``--no-amp``, ``--workers``."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--train-device", default="auto", metavar="DEV",
                        help="where training and held-out evaluation run: auto (the first CUDA GPU, else the CPU), "
                             "cpu, cuda, cuda:N or mps. --device is the latency target")
    parent.add_argument("--no-amp", dest="amp", action="store_false",
                        help="train a CUDA GPU in float32 (default: mixed precision, bf16 where supported, else fp16)")
    parent.add_argument("--workers", type=non_negative_int, default=0, metavar="N",
                        help="processes that decode and augment ImageFolder images beside the training and check them "
                             "before it (0: in the training process; the built-in digits are in memory and need "
                             "none). Results do not depend on N")
    return parent


def model_from_args(args: argparse.Namespace, *, weights: bool = True) -> Any:
    """The model the model options name. With ``weights``, an embedded model (digits, clutter) without a
    checkpoint is its cached trained base model; otherwise a model without checkpoint or ``--pretrained`` is
    randomly initialised."""
    from .models import create_model, embedded_task, load_state_dict

    task = embedded_task(args.model)
    pretrained = args.checkpoint is None and (args.pretrained or (weights and task is not None))
    if weights and args.checkpoint is None and not pretrained:
        logger.warning("no --checkpoint or --pretrained for %s: its weights are random", args.model)
    if pretrained and task is not None:
        from .pretrain import base_model, recipe

        model = create_model(args.model, num_classes=args.num_classes)
        load_state_dict(model, base_model(recipe(task.name))[0].state_dict(),
                        source=f"the cached {task.name} base model")
        return model
    return create_model(args.model, checkpoint=args.checkpoint, pretrained=pretrained, num_classes=args.num_classes)


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: still accepted (into the new option's ``dest``), hidden from ``--help``, and
    warned about on stderr (logging is set up only after parsing)."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"warning: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_train_batch_argument(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--train-batch", type=positive_int, default=default, metavar="B",
                        help=f"training batch size (default: {default})")
    parser.add_argument("--batch-size", type=positive_int, dest="train_batch",
                        action=DeprecatedAlias, new="--train-batch")


def add_threads_argument(parser: argparse.ArgumentParser, default: int | None = 0) -> None:
    parser.add_argument("--threads", type=non_negative_int, default=default, metavar="T",
                        help="runtime intra-op threads of the latency measurements (0: all the device's cores, recorded in the "
                             "table; default: " + ("0)" if default == 0 else "an existing table's own threads)"))


def gmacs_of(model: Any) -> float:
    """The model's GMACs per image in vitsearch's one convention (``vitsearch.flops.GMACS``: matmuls)."""
    from .flops import count_macs

    return count_macs(model).gmacs


def precision_of(args: argparse.Namespace) -> Any:
    from .training import Precision

    return Precision.resolve(args.train_device, amp=args.amp)


def print_json(record: dict[str, Any]) -> None:
    """The last line of a command's output: one JSON object for scripts."""
    print(json.dumps(record, sort_keys=True, allow_nan=False))  # NaN and Infinity are no JSON


NEAR_CHANCE = 1.5  # a fitted base below 1.5x chance accuracy is warned about (3 classes: under 50%)


class PretrainCommand(Command):
    name = "pretrain"
    help = ("train (once) and cache a base model: a built-in model (digits, clutter), or a timm model's checkpoint "
            "fine-tuned with a new head for an ImageFolder's classes (--model M --checkpoint C --dataset D)")

    def parents(self) -> list[argparse.ArgumentParser]:
        return [model_options(), checkpoint_options(), training_options()]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from .training.settings import FinetuneSettings

        parser.add_argument("--dataset", metavar="DIR",
                            help="ImageFolder to fit the base to (its classes): train/ with val/ and test/, or one "
                                 "folder of class folders split by the fractions below")
        split = FinetuneSettings
        parser.add_argument("--val-fraction", type=share, metavar="F",
                            help="share of each class of --dataset held out as val when it has no val/ folder (what "
                                 f"a search selects on; default: {split.val_fraction:g})")
        parser.add_argument("--test-fraction", type=share, metavar="F",
                            help="share of each class of --dataset held out as test when it has no test/ folder (the "
                                 f"accuracy results state; default: {split.test_fraction:g}); the two sum under 1")
        parser.add_argument("--steps", type=positive_int, default=FinetuneSettings.steps,
                            help="fine-tuning steps (a tenth at most of them warm up)")
        parser.add_argument("--train-batch", type=positive_int, metavar="B",
                            help=f"fine-tuning batch size of --dataset (default: {FinetuneSettings.batch_size})")
        parser.add_argument("--lr", type=positive_float, metavar="LR",
                            help=f"backbone learning rate fitting --dataset (default: {FinetuneSettings.lr:g}; the new "
                                 f"head learns at {FinetuneSettings.head_lr:g})")
        parser.add_argument("--pretrained", action="store_true",
                            help="fit timm's pretrained weights for --model instead of a --checkpoint (the Hugging "
                                 "Face Hub, or its cache with HF_HUB_OFFLINE=1)")
        parser.add_argument("--max-train", type=positive_int, metavar="N",
                            help="fit the base on a seeded subset of N training images of --dataset")
        parser.add_argument("--max-val", type=positive_int, metavar="N",
                            help="report the fitted base's val accuracy on a seeded subset of N val images")
        parser.add_argument("--cache-dir", type=Path, metavar="DIR",
                            help="cache root (default: $VITSEARCH_CACHE or ~/.cache/vitsearch)")
        parser.add_argument("--retrain", action="store_true", help="train again even if a cached model exists")

    def run(self, args: argparse.Namespace) -> int:
        from .data import LoaderSettings
        from .models import embedded_task
        from .pretrain import base_model, recipe

        task = embedded_task(args.model)
        if task is None or args.checkpoint or args.dataset or args.pretrained:
            return self.finetune(args)
        if any(v is not None for v in (args.train_batch, args.lr, args.max_train, args.max_val)):
            raise VitsearchError(f"--train-batch, --lr, --max-train and --max-val set the fitting of a --dataset; the "
                                 f"built-in {task.name} model trains with its own recipe")
        if args.val_fraction is not None or args.test_fraction is not None:
            raise VitsearchError("--val-fraction and --test-fraction split a --dataset folder; the built-in digits "
                                 "model keeps its own 60/20/20 split (the search's default data)")

        _, meta = base_model(recipe(task.name), root=args.cache_dir, retrain=args.retrain,
                             loading=LoaderSettings(args.workers), precision=precision_of(args))
        source = "cached" if meta["cached"] else f"trained in {meta['train_seconds']:.1f} s"
        print(f"{task.name} base model ({source}): {meta['path']}")
        print(f"  test accuracy {100 * meta['test_accuracy']:.2f}% (val {100 * meta['val_accuracy']:.2f}%) on "
              f"{meta['dataset']}")
        print(f"  created {meta['created']} with torch {meta['versions']['torch']}, timm {meta['versions']['timm']}")
        print_json({"path": meta["path"], "accuracy": meta["test_accuracy"], "val_accuracy": meta["val_accuracy"],
                    "cached": meta["cached"],
                    "train_seconds": meta["train_seconds"], "settings_key": meta["settings_key"]})
        return 0

    def finetune(self, args: argparse.Namespace) -> int:
        from .data import LoaderSettings, SplitFractions
        from .finetune import FinetuneSettings, finetuned_base, hub_weights
        from .models import embedded_task

        task = embedded_task(args.model)
        if args.pretrained and args.checkpoint is not None:
            raise VitsearchError("give either --checkpoint or --pretrained, not both")
        if task is None and args.pretrained and args.dataset is not None:
            args.checkpoint = hub_weights(args.model, root=args.cache_dir)
        if task is not None or args.checkpoint is None or args.dataset is None:
            raise VitsearchError("fitting a base to a data set takes --model NAME (--checkpoint PATH or --pretrained) "
                                 "--dataset DIR "
                                 f"(the built-in {task.name if task else 'digits'} model is trained by plain "
                                 f"`vitsearch pretrain --model {task.name if task else 'digits'}`)")
        d = FinetuneSettings()
        fractions = SplitFractions(d.val_fraction if args.val_fraction is None else args.val_fraction,
                                   d.test_fraction if args.test_fraction is None else args.test_fraction)
        settings = FinetuneSettings(steps=args.steps, val_fraction=fractions.val, test_fraction=fractions.test,
                                    batch_size=d.batch_size if args.train_batch is None else args.train_batch,
                                    lr=d.lr if args.lr is None else args.lr, max_train=args.max_train,
                                    max_val=args.max_val)
        meta = finetuned_base(args.model, args.checkpoint, args.dataset, settings,
                              root=args.cache_dir, retrain=args.retrain, loading=LoaderSettings(args.workers),
                              precision=precision_of(args))
        source = "cached" if meta["cached"] else f"fine-tuned in {meta['train_seconds']:.1f} s"
        print(f"{args.model} fitted to {meta['num_classes']} classes ({source}): {meta['checkpoint']}")
        chance = 1 / meta["num_classes"]
        if meta["test_accuracy"] < NEAR_CHANCE * chance:
            print(f"  warning: test accuracy {100 * meta['test_accuracy']:.2f}% is near chance ({100 * chance:.1f}% for "
                  f"{meta['num_classes']} classes): this base has learned little, and a search of it ranks noise. "
                  f"Train longer (--steps, now {args.steps}) or check the data", file=sys.stderr)
        print(f"  test accuracy {100 * meta['test_accuracy']:.2f}% (val {100 * meta['val_accuracy']:.2f}%); search it "
              f"with: vitsearch search --model {args.model} --checkpoint {meta['checkpoint']} --dataset {args.dataset}")
        print_json({"accuracy": meta["test_accuracy"]} | {
            k: meta[k] for k in ("checkpoint", "num_classes", "val_accuracy", "cached", "train_seconds")})
        return 0


class InfoCommand(Command):
    name = "info"
    help = "show a model's geometry (and check that a checkpoint fits it)"

    def parents(self) -> list[argparse.ArgumentParser]:
        return [model_options(), checkpoint_options(), weights_options()]

    def run(self, args: argparse.Namespace) -> int:
        from .models import file_sha256, geometry

        model = model_from_args(args, weights=False)  # the geometry needs no trained weights
        geo = geometry(model)
        params = sum(p.numel() for p in model.parameters())
        print(f"{args.model}: {type(model).__name__}, {params / 1e6:.2f} M parameters")
        print(f"  {geo.depth} blocks, embed dim {geo.embed_dim}, {geo.num_heads} heads, MLP ratio {geo.mlp_ratio:g}")
        print(f"  input {geo.in_chans}x{geo.img_size[0]}x{geo.img_size[1]}, patch {geo.patch_size[0]}x"
              f"{geo.patch_size[1]}: {geo.num_patches} patch tokens + {geo.num_prefix_tokens} prefix token(s)")
        gmacs = gmacs_of(model)
        print(f"  {geo.num_classes} classes; {gmacs:.4f} GMACs per image (matmuls); latency table key {geo.key}")
        record: dict[str, Any] = {"model": args.model, "parameters": params, "gmacs": gmacs, "geometry": geo.to_dict()}
        if args.checkpoint is not None:
            record["checkpoint"] = {"path": str(args.checkpoint.resolve()), "sha256": file_sha256(args.checkpoint)}
            print(f"  checkpoint {args.checkpoint} loads cleanly (sha256 {record['checkpoint']['sha256'][:16]}...)")
        print_json(record)
        return 0


class ProfileCommand(Command):
    name = "profile"
    help = "measure a model's components on a device into a latency table (resumes an interrupted profile)"

    def parents(self) -> list[argparse.ArgumentParser]:
        return [model_options(), latency_options(), seed_options()]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_threads_argument(parser)
        parser.add_argument("--validate", type=validation_count, default=0, metavar="N",
                            help="then measure N random pruned models end to end against the table's prediction "
                                 "(0: none; at least 2, to rank them)")
        parser.add_argument("--restart", action="store_true", help="discard an existing table and start over")

    def run(self, args: argparse.Namespace) -> int:
        from .latency import profile, validate

        table = profile(args.device, model=args.model, batch=args.batch, threads=args.threads, tables=args.tables,
                        restart=args.restart, progress=sys.stderr.isatty(), precision=args.precision)
        rt = table.meta["runtime"]
        print(f"latency table {table.path}: {len(table.rows)} components of {table.geometry.key} at batch "
              f"{table.batch} in {table.precision} on {table.device} ({rt.get('runtime')} {rt.get('version')}, threads "
              f"{table.meta['threads']}), profiled in {table.meta.get('profile_seconds', 0):.0f} s")
        record: dict[str, Any] = {"table": str(table.path), "precision": table.precision, "components": len(table.rows),
                                  "profile_seconds": table.meta.get("profile_seconds")}
        if args.validate:
            result = validate(table, args.validate, seed=args.seed, tables=str(args.tables),
                              progress=sys.stderr.isatty())
            s = result.summary
            keys = ("count", "median_abs_error_pct", "p95_abs_error_pct", "within_10pct", "kendall_tau",
                    "mean_error_pct")

            def line(x: dict) -> str:
                return (f"median |error| {x['median_abs_error_pct']:.1f}%, p95 {x['p95_abs_error_pct']:.1f}%, "
                        f"{100 * x['within_10pct']:.0f}% within 10%, Kendall tau {x['kendall_tau']:.3f}")

            corrected = s.get("drift_corrected")
            print(f"validation on {s['count']} random configs: {line(s)}"
                  + (f"; at the table's speed (drift reference): {line(corrected)}" if corrected else "")
                  + f"; saved to {result.paths['json']} and {result.paths['png'].name}")
            record["validation"] = {k: s[k] for k in keys}
            if corrected:
                record["validation"]["drift_corrected"] = {k: corrected[k] for k in keys}
        print_json(record)
        return 0


class PredictCommand(Command):
    name = "predict"
    help = "predict a pruning config's latency on a device from its latency table"

    def parents(self) -> list[argparse.ArgumentParser]:
        return [model_options(), latency_options()]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", type=prune_config, required=True, metavar="SPEC",
                            help="pruning config, e.g. 'spvit:3=0.7,6=0.7,9=0.7', 'evovit:4=0.5' or 'none'")

    def run(self, args: argparse.Namespace) -> int:
        from .latency import predict
        from .models import create_model
        from .pruning import apply

        config = args.config
        pred = predict(config, device=args.device, model=args.model, batch=args.batch, tables=args.tables,
                       precision=args.precision)
        gmacs = gmacs_of(apply(create_model(args.model), config))  # random weights: MACs depend on the shapes only
        print(f"{pred.config} on {args.device} in {args.precision}: {pred.total_ms:.3f} ms predicted "
              f"(token selection {pred.selection_ms:.3f} ms, {100 * pred.selection_ms / pred.total_ms:.1f}%); "
              f"{gmacs:.4f} GMACs per image (matmuls)")
        for kind, ms in sorted(pred.by_kind().items(), key=lambda kv: -kv[1]):
            print(f"  {kind:<14} {ms:9.3f} ms")
        print_json({"config": str(pred.config), "device": args.device, "model": args.model, "batch": args.batch,
                    "precision": args.precision, "predicted_ms": pred.total_ms, "selection_ms": pred.selection_ms, "by_kind_ms": pred.by_kind(),
                    "gmacs": gmacs})
        return 0


def int8_data(args: argparse.Namespace, model: Any) -> Any:
    """The data an int8 export calibrates and is evaluated on (--dataset, or a built-in model's own), checked to
    hold enough training images before anything is exported."""
    from .data import load_dataset
    from .models import embedded_task
    from .quantized import check_calibration

    task = embedded_task(args.model)
    dataset = args.dataset or (task.name if task is not None else None)
    if dataset is None:
        raise VitsearchError(f"--precision int8 calibrates {args.model} on training images: name them with --dataset "
                             "(digits, clutter or an ImageFolder directory)")
    splits = load_dataset(dataset, model)
    check_calibration(splits)
    return splits


class ExportCommand(Command):
    name = "export"
    help = "export a pruned model to ONNX (static shapes) and check it against onnxruntime"

    def parents(self) -> list[argparse.ArgumentParser]:
        return [model_options(), checkpoint_options(), weights_options()]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        # A vitsearch checkpoint (finalize's model.pt, a search trial's) names its own model and config.
        parser.set_defaults(model=None)
        parser.add_argument("--config", type=prune_config, metavar="SPEC",
                            help="pruning config, e.g. 'spvit:3=0.7,6=0.7,9=0.7', 'evovit:4=0.5' (default: the "
                                 "checkpoint's own for a vitsearch checkpoint, else none)")
        parser.add_argument("--output", "-o", type=Path, required=True, metavar="PATH", help="ONNX file to write")
        parser.add_argument("--batch", type=positive_int, default=1, metavar="B", help="static batch size (default: 1)")
        parser.add_argument("--opset", type=positive_int, metavar="N", help="ONNX opset (default: vitsearch's, 18)")
        parser.add_argument("--dynamo", action="store_true",
                            help="use the torch.export-based exporter (slower) instead of the TorchScript one")
        parser.add_argument("--untrained-selectors", action="store_true",
                            help="export a config's selectors as initialised when the weights hold none (a graph to "
                                 "time; its accuracy means nothing). Default: refused")
        parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                            help="int8: also write OUTPUT-int8.onnx, quantized with calibration on --dataset's "
                                 "training images, its test accuracy and latency beside fp32's (default: fp32)")
        parser.add_argument("--dataset", metavar="DATA",
                            help="--precision int8: the data to calibrate and evaluate on: digits, clutter or an "
                                 "ImageFolder (default: a built-in model's own data)")

    def run(self, args: argparse.Namespace) -> int:
        from .export import check_output_path, export_model
        from .rebuild import check_trained, load_pruned
        from .flops import count_macs
        from .models import DIGITS, embedded_task, file_sha256
        from .pretrain import base_model, recipe
        from .pruning import PruneConfig, apply

        config = args.config  # a bad one failed at parsing, before a model is built; None: the checkpoint's own
        check_output_path(args.output)
        if args.checkpoint is not None:
            if args.pretrained:
                raise VitsearchError("give either --checkpoint or --pretrained, not both")
            model, record = load_pruned(args.checkpoint, model=args.model, config=config,
                                        num_classes=args.num_classes, untrained=args.untrained_selectors)
            args.model, classes = record["model"], record.get("classes")
        else:
            args.model = args.model or DIGITS
            base = model_from_args(args)
            task = embedded_task(args.model)
            classes = base_model(recipe(task.name))[1].get("classes") if task and not args.pretrained else None
            trained = base.state_dict().keys()
            model = apply(base, config or PruneConfig())
            check_trained(model, trained, source=f"the weights of {args.model}", untrained=args.untrained_selectors)
        meta: dict[str, Any] = {"model": args.model, **({"classes": classes} if classes else {})}
        if args.checkpoint is not None:
            meta["checkpoint"] = {"path": str(args.checkpoint.resolve()), "sha256": file_sha256(args.checkpoint)}
        splits = int8_data(args, model) if args.precision == "int8" else None  # bad data fails before exporting
        result = export_model(model, args.output, batch=args.batch, opset=args.opset, dynamo=args.dynamo,
                              metadata=meta)
        macs = count_macs(model, batch=args.batch)
        size_mb = result.path.stat().st_size / 1e6
        print(f"{args.model} [{model.prune_config}] -> {result.path} ({size_mb:.1f} MB, {result.provenance['exporter']}"
              f" opset {result.provenance['opset']}, exported in {result.export_seconds:.1f} s)")
        print(f"  input {'x'.join(map(str, result.input_shape))}, output {'x'.join(map(str, result.output_shape))}; "
              f"tokens per block {list(model.token_schedule.block_tokens)}")
        print(f"  {macs.gmacs:.4f} GMACs per image (matmuls; {macs.gmacs_all_ops:.4f} counting norms, softmax and "
              "selection too)")
        print(f"  onnxruntime matches PyTorch: max abs diff {result.max_abs_diff:.2e} (tolerance {result.tolerance:.1e})")
        record = {**result.to_dict(), "model": args.model, "config": str(model.prune_config),
                  "block_tokens": list(model.token_schedule.block_tokens), "gmacs": macs.gmacs,
                  "gmacs_all_ops": macs.gmacs_all_ops, "size_mb": round(size_mb, 3), "precision": args.precision}
        if splits is not None:
            from .quantized import int8_path_for, measure_both, quantize_exported

            q = quantize_exported(result.path, int8_path_for(result.path), splits)
            ms = measure_both(result.path, q.path)
            print(f"  int8 {q.path} ({q.path.stat().st_size / 1e6:.1f} MB): test accuracy {100 * q.accuracy:.2f}% vs "
                  f"fp32 {100 * q.accuracy_fp32_onnx:.2f}% (both run by onnxruntime on {splits.name}'s test split; "
                  f"{100 * q.top1_agreement:.1f}% same top-1); {ms['int8_ms']:.3f} ms vs fp32 {ms['fp32_ms']:.3f} ms "
                  f"measured on this CPU; calibrated on {q.calibration_images} training images, logits within "
                  f"{q.p99_rel_diff:.3f} of fp32's range on 99% of test images (tolerance {q.tolerance})")
            record["int8"] = {**q.to_dict(), "measured_ms": ms["int8_ms"], "fp32_measured_ms": ms["fp32_ms"]}
        print_json(record)
        return 0


class ReportCommand(Command):
    name = "report"
    help = "write a study's report (report.md and a self-contained report.html, figures as PNG and SVG)"

    def parents(self) -> list[argparse.ArgumentParser]:
        return [reports_options()]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("study", metavar="STUDY", help="study name under --reports, or a study folder's path")

    def run(self, args: argparse.Namespace) -> int:
        from .report import load_study, summary, write_report

        study = load_study(args.study, args.reports)
        files = write_report(study)
        print(f"report of {study.name}: {len(study.trials)} trials, {len(study.front)} on the Pareto front")
        for note in study.notes:
            print(f"  note: {note}")
        print(f"  {files.markdown}\n  {files.html}")
        for name, paths in files.figures.items():
            print(f"  {name}: {', '.join(str(p) for p in paths.values())}")
        print_json(summary(study, files))
        return 0


class PlotCommand(Command):
    name = "plot"
    help = "overlay several studies' accuracy-latency trials and Pareto fronts on one chart"

    def parents(self) -> list[argparse.ArgumentParser]:
        return [reports_options()]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("studies", nargs="+", metavar="STUDY",
                            help="study names under --reports, or study folders' paths")
        parser.add_argument("--output", "-o", type=Path, metavar="FILE",
                            help="chart to write: .png, .svg or .pdf; without a suffix both .png and .svg "
                                 "(default: the study's figures/overlay, or <reports>/overlay-<names>)")

    def run(self, args: argparse.Namespace) -> int:
        from .report import plot_overlay

        files, skipped = plot_overlay(args.studies, args.reports, args.output)
        for reason in skipped:
            print(f"  left out: {reason}")
        print(f"overlay of {len(args.studies) - len(skipped)} studies: {', '.join(str(p) for p in files.values())}")
        print_json({"files": {fmt: str(p) for fmt, p in files.items()}, "studies": args.studies, "skipped": skipped})
        return 0


class SearchCommand(Command):
    name = "search"
    help = "search selector placement and keep ratios under a latency budget (Optuna, accuracy vs latency)"

    def parents(self) -> list[argparse.ArgumentParser]:
        return [model_options(), checkpoint_options(), latency_options(), reports_options(), seed_options(),
                training_options()]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from .search.settings import BASELINES, SAMPLERS, STRATEGIES, SearchSettings
        from .training.settings import LossWeights, TrainSettings

        d, t, w = SearchSettings, TrainSettings, LossWeights  # the classes' defaults: no settings are made here
        parser.add_argument("--budget", type=budget, default=d.budget,
                            help="latency budget: 30ms, '30 ms', 0.03s, or a share of the unpruned model's latency "
                                 "on the device like 60%%")
        parser.add_argument("--headroom", type=headroom, default=d.headroom, metavar="auto|PCT",
                            help="what the search leaves under the budget for the latency table's error: auto (the "
                                 "table's validation says how far it under-predicts whole models; a table the search "
                                 "profiles is validated on 12 models) or a share such as 5%% (default: auto)")
        parser.add_argument("--dataset", default=None, metavar="DATA",
                            help="'digits' or 'clutter' (built in) or an ImageFolder directory (ImageNet layout) "
                                 "(default: a built-in model's own data)")
        parser.add_argument("--max-train", type=positive_int, metavar="N",
                            help="use a seeded subset of N training images")
        parser.add_argument("--max-val", type=positive_int, metavar="N",
                            help="use a seeded subset of N val images (val: what the search ranks and selects on)")
        parser.add_argument("--max-test", type=positive_int, metavar="N",
                            help="use a seeded subset of N test images (test: the accuracy results state)")
        add_threads_argument(parser, default=None)
        parser.add_argument("--study", metavar="NAME", help="study name (default: derived from model, device, budget)")
        parser.add_argument("--trials", type=positive_int, default=d.trials, metavar="N",
                            help=f"candidates to train; those over budget are rejected first and not counted "
                                 f"(default: {d.trials})")
        parser.add_argument("--space", metavar="TOML",
                            help="search-space file (default: the model family's built-in vitsearch/spaces/*.toml)")
        parser.add_argument("--strategy", choices=STRATEGIES, default=d.strategy,
                            help="brief: train each candidate; shared: weight sharing (default: %(default)s)")
        parser.add_argument("--sampler", choices=SAMPLERS, default=d.sampler,
                            help="Optuna sampler that proposes configs; only new models within the budget become "
                                 "trials (default: tpe)")
        parser.add_argument("--baselines", choices=BASELINES, default=d.baselines,
                            help="baselines evaluated beside the trials, each trained like a candidate: the unpruned "
                                 "model, the space's uniform keep ratios, all of them, or none (a quick smoke test) "
                                 "(default: %(default)s)")
        parser.add_argument("--steps", type=positive_int, default=t.steps,
                            help=f"training steps per candidate (default: {t.steps})")
        add_train_batch_argument(parser, t.batch_size)
        parser.add_argument("--lr", type=positive_float, default=t.lr,
                            help=f"backbone learning rate (default: {t.lr:g})")
        parser.add_argument("--selector-lr", type=positive_float, default=t.selector_lr,
                            help=f"selector learning rate (default: {t.selector_lr:g})")
        parser.add_argument("--ratio-weight", type=non_negative_float, default=w.ratio,
                            help="keep-ratio loss weight")
        parser.add_argument("--latency-weight", type=non_negative_float, default=w.latency,
                            help="latency loss weight")
        parser.add_argument("--distill-weight", type=non_negative_float, default=w.distill,
                            help="distillation weight")
        parser.add_argument("--shared-steps", type=positive_int, default=d.shared_steps,
                            help="supernet steps (shared strategy)")
        parser.add_argument("--shared-finetune-steps", type=non_negative_int, default=d.shared_finetune_steps,
                            help="extra steps per candidate after the supernet (shared strategy; 0: evaluate each "
                                 "candidate straight from the supernet)")
        parser.add_argument("--learned", action="store_true",
                            help="also learn SPViT's keep rates under the budget (computation-aware loss, "
                                 "layer-to-phase) and add the result to the study as one more trial")
        parser.add_argument("--learned-steps", type=positive_int, metavar="N",
                            help="training steps of the learned strategy (default: trials x steps, the trials' "
                                 "training compute)")
        parser.add_argument("--storage", metavar="URL",
                            help="Optuna storage for many workers, e.g. postgresql://user@host/db "
                                 "(default: a journal file in the study folder)")
        parser.add_argument("--resume", action="store_true",
                            help="continue an interrupted study (re-running the same study name does the same)")

    def run(self, args: argparse.Namespace) -> int:
        from .search import SearchSettings, run_search, summary
        from .training import LossWeights, TrainSettings

        route_optuna_logs()

        if args.learned_steps is not None and not args.learned:
            raise VitsearchError("--learned-steps sets the learned strategy's training: add --learned to run it")
        weights = LossWeights(ratio=args.ratio_weight, latency=args.latency_weight, distill=args.distill_weight)
        train = TrainSettings(steps=args.steps, batch_size=args.train_batch, lr=args.lr, selector_lr=args.selector_lr,
                              weights=weights, seed=args.seed)
        settings = SearchSettings(
            budget=str(args.budget), headroom=args.headroom, model=args.model,
            checkpoint=str(args.checkpoint) if args.checkpoint else None,
            dataset=args.dataset, device=args.device, batch=args.batch, precision=args.precision, threads=args.threads,
            study=args.study,
            trials=args.trials,
            space=args.space, strategy=args.strategy, train=train, shared_steps=args.shared_steps,
            shared_finetune_steps=args.shared_finetune_steps, learned=args.learned, learned_steps=args.learned_steps,
            storage=args.storage, sampler=args.sampler, baselines=args.baselines,
            seed=args.seed, max_train=args.max_train, max_val=args.max_val, max_test=args.max_test,
            workers=args.workers, reports=str(args.reports),
            tables=str(args.tables), train_device=args.train_device, amp=args.amp)
        # bars on a terminal, plain log lines elsewhere
        result = run_search(settings, progress=sys.stderr.isatty(), resume=args.resume)
        record = summary(result)
        unpruned = next((b for b in result.baselines if b.kind == "unpruned"), None)
        print(f"study {result.folder}: {record['trials']} trials, {record['trained']} trained, "
              f"{len(result.front)} on the Pareto front")
        print("  accuracy: on the test split, which no decision of the search reads; the front and the pick are "
              "chosen on val (val_accuracy)")
        limit = result.limit_ms if result.limit_ms is not None else result.budget_ms
        print(f"  budget {args.budget} = {result.budget_ms:.3f} ms on {args.device}"
              + (f" (searched under {limit:.3f} ms: the headroom for the table's error)" if limit < result.budget_ms
                 else "") + f"; unpruned {result.unpruned_ms:.3f} ms"
              + (f", accuracy {100 * unpruned.accuracy:.2f}% (val {100 * unpruned.val_accuracy:.2f}%)"
                 if unpruned and unpruned.accuracy is not None else ""))
        best = result.best
        if best is None:
            print("  no candidate met the budget: see trials.csv for how far over budget each one was")
        else:
            print(f"  best under budget (by val): trial {best.trial} {best.config}  accuracy {100 * best.accuracy:.2f}% "
                  f"(val {100 * best.val_accuracy:.2f}%)  "
                  f"{best.predicted_ms:.3f} ms ({result.unpruned_ms / best.predicted_ms:.2f}x faster)  "
                  f"{best.gmacs:.4f} GMACs  tokens per block {list(best.block_tokens)}")
        learned = next((c for c in result.trials if c.kind == "learned"), None)
        if learned is not None:
            print(f"  learned rates ({learned.status}): {learned.config}  accuracy {100 * learned.accuracy:.2f}% "
                  f"(val {100 * learned.val_accuracy:.2f}%)  "
                  f"{learned.predicted_ms:.3f} ms  trial {learned.trial}")
        for kind in ("uniform",):
            rows = [b for b in result.baselines if b.kind == kind and b.feasible]
            if rows:
                top = max(rows, key=lambda b: (b.val_accuracy, -b.predicted_ms))
                print(f"  best uniform baseline under budget (by val): {top.config}  accuracy "
                      f"{100 * top.accuracy:.2f}% (val {100 * top.val_accuracy:.2f}%)  "
                      f"{top.predicted_ms:.3f} ms")
        record["next"] = next_commands(settings.name(), settings.reports, None if best is None else best.trial)
        print("next:\n" + "".join(f"  {command}\n" for command in record["next"]), end="")
        print_json(record)
        return 0


def next_commands(study: str, reports: str | Path, trial: int | None) -> list[str]:
    """What to run after a search, with the user's own study and reports folder: its report, and finalize of the
    trial it picked (none when no trial met the budget)."""
    where = "" if Path(reports) == Path("reports") else f" --reports {shlex.quote(str(reports))}"
    commands = [f"vitsearch report {shlex.quote(study)}{where}"]
    if trial is not None:
        commands.append(f"vitsearch finalize {shlex.quote(study)}{where} --trial {trial}")
    return commands


class FinalizeCommand(Command):
    name = "finalize"
    help = ("train a chosen config of a study with its method's full schedule, export it to ONNX and measure it "
            "on the study's device (resumes an interrupted finalize)")

    def parents(self) -> list[argparse.ArgumentParser]:
        return [reports_options(), seed_options(), training_options()]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from .training.settings import SCHEDULES, FinalizeSettings, LossWeights

        d, w = FinalizeSettings, LossWeights  # the classes' defaults: no settings are made here
        parser.add_argument("study", metavar="STUDY", help="study name under --reports, or a study folder's path")
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--trial", type=non_negative_int, action="append", metavar="N",
                           help="trial number to finalize (repeat for several)")
        which.add_argument("--pareto", action="store_true", help="finalize every trial on the Pareto front")
        parser.add_argument("--steps", type=positive_int, default=d.steps, help=f"training steps (default: {d.steps})")
        parser.add_argument("--epochs", type=positive_float, metavar="E", help="train E epochs instead of --steps")
        add_train_batch_argument(parser, d.batch_size)
        parser.add_argument("--lr", type=positive_float, default=d.lr,
                            help=f"backbone learning rate (default: {d.lr:g})")
        parser.add_argument("--selector-lr", type=positive_float, default=d.selector_lr,
                            help=f"selector / aux head learning rate (default: {d.selector_lr:g})")
        parser.add_argument("--warmup-steps", type=non_negative_int, default=d.warmup_steps,
                            help="linear warm-up steps")
        parser.add_argument("--distill-weight", type=non_negative_float, default=w.distill,
                            help="distillation weight")
        parser.add_argument("--aux-weight", type=non_negative_float, default=w.aux,
                            help="Evo-ViT: share of the assisted head's loss (default: %(default)s, the paper's)")
        parser.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                            help="progressive: SPViT layer-to-phase / Evo-ViT layer-to-stage; plain: the whole "
                                 "config from the first step (default: %(default)s)")
        parser.add_argument("--switch", type=shares, metavar="S1,S2,...",
                            help="phase boundaries as shares of the steps (SPViT: one per selector phase after the "
                                 "first; Evo-ViT: one, the end of every-block selection); default: evenly spaced, "
                                 f"Evo-ViT {d.evo_switch:g}")
        parser.add_argument("--merge-tol", type=non_negative_float, default=d.merge_tol, metavar="T",
                            help="SPViT: neighbouring selectors whose keep ratios differ by at most T share a phase "
                                 "(default: 0, one selector per phase)")
        parser.add_argument("--checkpoint-every", type=positive_int, default=d.checkpoint_every, metavar="K",
                            help="save resumable training state every K steps (and at every phase boundary)")
        parser.add_argument("--measure-only", action="store_true",
                            help="only (re)measure already finalized models on the study's device")
        parser.add_argument("--restart", action="store_true", help="discard earlier finalize results and train afresh")
        parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                            help="int8: also quantize the exported model (calibrated on training images), evaluate it "
                                 "with onnxruntime on test and measure it, beside fp32 (default: fp32)")
        parser.set_defaults(seed=d.seed)
        export = parser.add_argument_group("export", "model.onnx is at the study's batch (what is measured); another "
                                           "--batch adds model_bB.onnx beside it")
        export.add_argument("--batch", type=positive_int, metavar="B",
                            help="static batch of an extra ONNX file (default: only the study's batch)")
        export.add_argument("--opset", type=positive_int, metavar="N", help="ONNX opset (default: vitsearch's, 18)")
        export.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                            help="torchscript (default, fast) or dynamo (torch.export-based)")

    def run(self, args: argparse.Namespace) -> int:
        from .finalize import ExportOptions, FinalizeSettings, finalize

        settings = FinalizeSettings(
            steps=args.steps, epochs=args.epochs, batch_size=args.train_batch, lr=args.lr, selector_lr=args.selector_lr,
            warmup_steps=args.warmup_steps, schedule=args.schedule, switch=args.switch,
            weights=dataclasses.replace(FinalizeSettings().weights, distill=args.distill_weight, aux=args.aux_weight),
            merge_tol=args.merge_tol, checkpoint_every=args.checkpoint_every, seed=args.seed)
        results = finalize(args.study, None if args.pareto else args.trial, settings, reports=args.reports,
                           measure_only=args.measure_only, restart=args.restart, workers=args.workers,
                           progress=sys.stderr.isatty(), precision=precision_of(args),
                           export=ExportOptions(args.batch, args.opset, args.exporter == "dynamo"),
                           onnx_precision=args.precision)
        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:.2f}%"

        for f in results:
            r = f.record
            measured = "not measured" if r["measured_ms"] is None else f"measured {r['measured_ms']:.3f} ms"
            if r.get("measured_at_table_speed_ms") is not None:
                measured += f" ({r['measured_at_table_speed_ms']:.3f} ms at the table's speed)"
            if r.get("within_budget") is not None:
                measured += ", within the budget" if r["within_budget"] else ", OVER the budget"
            print(f"trial {r['trial']} {r['config']}: test accuracy {pct(r['accuracy'])} (val "
                  f"{pct(r.get('val_accuracy'))}; brief {pct(r['accuracy_brief'])}, training-free "
                  f"{pct(r['accuracy_training_free'])}, both on test); {measured}, predicted "
                  f"{r['predicted_ms']:.3f} ms; {r['gmacs']:.4f} GMACs; {r['steps']} steps in {r['seconds']:.0f} s")
            print(f"  {r['schedule']} schedule: {r['phases']}")
            print(f"  ONNX {f.folder / 'model.onnx'} (onnxruntime vs PyTorch max diff {r['onnx_max_diff']:.2e})"
                  + "".join(f"; batch {b}: {f.folder.parent.parent / p}" for b, p in r.get("onnx_batches", {}).items()))
            q = r.get("int8")
            if q:
                int8_ms = "not measured" if q.get("measured_ms") is None else f"measured {q['measured_ms']:.3f} ms"
                fp32_ms = "-" if r["measured_ms"] is None else f"{r['measured_ms']:.3f}"
                print(f"  int8 {f.folder / 'model-int8.onnx'}: test accuracy {pct(q['accuracy'])} vs fp32 "
                      f"{pct(q['accuracy_fp32_onnx'])} (both run by onnxruntime; {100 * q['top1_agreement']:.1f}% same "
                      f"top-1), {int8_ms} vs fp32 {fp32_ms} ms; calibrated on {q['calibration_images']} training "
                      f"images, logits within {q['p99_rel_diff']:.3f} of fp32's range on 99% of test images (tolerance "
                      f"{q['tolerance']}; worst {q['max_rel_diff']:.3f})")
        errors = [f.measure_error for f in results if f.measure_error]
        if errors:
            raise RunFailure(" ".join(errors))
        # Every path printed opens from the working folder (finalized.json keeps them relative to the study's).
        def opened(f: Any) -> dict[str, Any]:
            study = f.folder.parent.parent
            row = {k: f.record.get(k) for k in ("trial", "config", "accuracy", "val_accuracy", "accuracy_brief",
                                                 "accuracy_training_free", "predicted_ms", "measured_ms",
                                                 "measured_at_table_speed_ms", "within_budget", "gmacs", "steps")}
            row["onnx"] = str(study / f.record["onnx"])
            row["checkpoint"] = str(study / f.record["checkpoint"])
            if f.record.get("onnx_batches"):
                row["onnx_batches"] = {b: str(study / p) for b, p in f.record["onnx_batches"].items()}
            if f.record.get("int8"):
                row["int8"] = {**f.record["int8"], "onnx": str(study / f.record["int8"]["onnx"])}
            return row

        print_json({"study": str(results[0].folder.parent.parent) if results else str(args.study),
                    "finalized": [opened(f) for f in results]})
        return 0


COMMANDS: list[type[Command]] = [PretrainCommand, InfoCommand, ProfileCommand, PredictCommand, ExportCommand,
                                 SearchCommand, ReportCommand, PlotCommand, FinalizeCommand]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default, unless its help says it in words already or there is none to show
    (a flag, an option that is unset unless given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or unset or not action.option_strings:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; imports no torch (``--help``, ``--version`` and a mistyped flag answer at once)."""
    parser = argparse.ArgumentParser(
        prog="vitsearch", description="Hardware-aware token-pruning search for Vision Transformers.",
        formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command_cls in COMMANDS:
        command = command_cls()
        command_parser = sub.add_parser(command.name, help=command.help, description=command.help,
                                        parents=command.parents(), formatter_class=HelpFormatter)
        command.add_arguments(command_parser)
        command_parser.set_defaults(handler=command, parser=command_parser)
    return parser


def disk_full_message(e: OSError) -> str:
    """The one line for a full disk, whichever writer hit it (writers name their file, see ``errors.naming``);
    what was written before stays, and an interrupted atomic write may leave a ``*.tmp`` file behind."""
    if e.filename is None:
        return "disk full (no space left on the device): free space and remove leftover *.tmp files, then run again"
    path = Path(e.filename)
    return (f"disk full writing {path}: free space and remove leftover *.tmp files in {path.parent}, "
            "then run the same command again")


# A path this process may not use: permissions, a read-only mount, an immutable folder, a file where a folder
# should be. The commands check their output folders before working; this names any other such path in one line.
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR)


def unwritable_message(e: OSError) -> str:
    where = f" {e.filename}" if e.filename is not None else ""
    return (f"cannot use{where}: {e.strerror or e}. Give a path in a folder you can write (--reports, --tables, "
            "-o), or set $VITSEARCH_CACHE to one for the cache")


def _setup_logging(args: argparse.Namespace) -> None:
    """One handler and one format for vitsearch's lines and Optuna's (:func:`route_optuna_logs`)."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(levelname)s %(asctime)s %(name)s] %(message)s", "%H:%M:%S"))
    for name in ("vitsearch", "optuna"):  # main() may run several times in one process (tests): never stack handlers
        logging.getLogger(name).handlers[:] = [handler]
    logger.setLevel(level)


def route_optuna_logs() -> None:
    """Optuna's lines through vitsearch's handler, in its format: Optuna's own handler (another format) is switched
    off once Optuna is imported. Called by the commands that run Optuna, so the others never import it."""
    import optuna

    optuna.logging.disable_default_handler()


def log_above_bars() -> Any:
    """Log lines printed above the progress bars (``tqdm.contrib.logging``), never onto a bar's line."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm(loggers=[logger, logging.getLogger("optuna")])


class _Terminated:
    """SIGTERM handled as Ctrl-C is: the KeyboardInterrupt paths re-queue the running trial, write the records and
    remove temporary files, then the CLI prints their one line. A second SIGTERM is ignored while that runs."""

    def __init__(self) -> None:
        self.received = False
        self.previous: Any = None

    def __enter__(self) -> "_Terminated":
        if threading.current_thread() is threading.main_thread():  # only the main thread may set a handler
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt("terminated")

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # named with the subcommand's usage, not the top level's
            args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as e:  # argparse exits on --help / --version (0) and on a bad command line (2)
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    _setup_logging(args)
    with _Terminated() as terminated:
        try:
            return _run(args)
        except KeyboardInterrupt as e:
            print(str(e) or "interrupted", file=sys.stderr)
            return EXIT_TERMINATED if terminated.received else EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    try:
        with log_above_bars():
            return args.handler.run(args)
    except (VitsearchError, FileNotFoundError, ValueError, ConnectionError, TimeoutError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE if isinstance(e, (RunFailure, ConnectionError, TimeoutError)) else EXIT_BAD_INPUT
    except OSError as e:
        if args.debug or e.errno not in (errno.ENOSPC, *UNWRITABLE):
            raise
        if e.errno == errno.ENOSPC:
            print(f"error: {disk_full_message(e)}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"error: {unwritable_message(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
