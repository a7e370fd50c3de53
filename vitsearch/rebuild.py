"""Rebuild a pruned model from a checkpoint: the config, timm model and geometry a vitsearch checkpoint carries,
applied before its weights load, and selectors the weights do not hold refused (``vitsearch export``)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch.nn as nn

from .errors import VitsearchError

logger = logging.getLogger(__name__)


def load_pruned(checkpoint: str | os.PathLike[str], *, model: str | None = None, config: Any = None,
                num_classes: int | None = None, untrained: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a (pruned) timm ViT from ``checkpoint`` in eval mode, with the checkpoint's record.

    A vitsearch checkpoint (a search trial's, finalize's ``model.pt``) carries its config, timm model name and
    geometry (finalize's also its class names and preprocessing; a base's ``meta.json`` beside its ``model.pt``
    gives the record its ``classes``): ``model`` and ``config`` may be left out, and where given they must be the
    checkpoint's. A plain state_dict is loaded into ``model`` (default: digits) pruned by ``config`` (default:
    none). The config is applied before the weights are loaded, so a pruned model's own modules (SPViT's
    selectors) load too.

    A config whose method reads trained modules at inference (``inference_parameters``: SPViT's selectors) that
    the checkpoint lacks is refused: the export would run randomly initialised selectors. ``untrained=True``
    exports them anyway (for timing only) with a warning.
    """
    from .models import DIGITS, canonical_name, create_model, geometry, load_state_dict, read_checkpoint_record
    from .pruning import PruneConfig, apply, method_of

    path = Path(checkpoint).expanduser()
    state, record = read_checkpoint_record(path)
    given = None if config is None else PruneConfig.parse(config)
    stored = PruneConfig.parse(record["config"]) if isinstance(record.get("config"), Mapping) else None
    if given is not None and stored is not None and str(given) != str(stored):
        raise VitsearchError(f"--config {given} conflicts with checkpoint {str(path)!r}, which holds a model trained "
                             f"as {stored}: drop --config (the checkpoint's config is used)")
    saved_name = record.get("model") if isinstance(record.get("model"), str) else None
    if model is not None and saved_name is not None and canonical_name(model) != canonical_name(saved_name):
        raise VitsearchError(f"--model {model} conflicts with checkpoint {str(path)!r}, which holds a {saved_name}: "
                             "drop --model (the checkpoint's model is used)")
    name = model or saved_name or DIGITS
    saved_geometry = record.get("geometry") if isinstance(record.get("geometry"), Mapping) else None
    if num_classes is None and saved_geometry is not None:
        num_classes = int(saved_geometry["num_classes"])
    if num_classes is None:
        head = state.get("head.weight")
        num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else None
    config = given or stored or PruneConfig()
    method = method_of(config.method)
    built = apply(create_model(name, num_classes=num_classes), config)
    if saved_geometry is not None and geometry(built).to_dict() != dict(saved_geometry):
        raise VitsearchError(f"{name} builds as {geometry(built).key} here but checkpoint {str(path)!r} was saved "
                             f"from {saved_geometry.get('key')}: the timm version differs from the one that saved it; "
                             "export it with that version")
    # Modules the pruning method adds that the checkpoint lacks load as initialised (Evo-ViT's training-only head)
    fresh = {k: v for k, v in built.state_dict().items() if k not in state and k.startswith(method.new_parameters)}
    check_trained(built, state.keys(), source=f"checkpoint {str(path)!r}", untrained=untrained)
    load_state_dict(built, {**fresh, **state}, source=str(path), name=f"{name} [{config}]",
                    fix="Pass the --model the checkpoint was trained as (and --num-classes if its head differs)")
    built.eval()
    classes = record.get("classes")
    beside = path.with_name("meta.json")  # a cached or fitted base (vitsearch pretrain) records its classes there
    if classes is None and path.name == "model.pt" and beside.is_file():
        try:
            classes = json.loads(beside.read_text()).get("classes")
        except (OSError, ValueError, AttributeError):
            logger.warning("cannot read the class names in %s: the ONNX file will carry none", beside)
    return built, {**record, "model": name, "config": str(config), "classes": classes}


def check_trained(model: nn.Module, trained: Iterable[str], *, source: str, untrained: bool = False) -> None:
    """Refuse a pruned ``model`` whose inference reads modules (``inference_parameters``: SPViT's selectors) that
    are not among the ``trained`` state_dict keys ``source`` gave: its ONNX would rank tokens at random.
    ``untrained=True`` lets it through with a warning (a graph to time, whose accuracy means nothing)."""
    from .pruning import method_of

    config = model.prune_config
    prefixes = method_of(config.method).inference_parameters
    keys = set(trained)
    missing = [k for k in model.state_dict() if prefixes and k.startswith(prefixes) and k not in keys]
    if not missing:
        return
    what = f"{' or '.join(p.rstrip('.') for p in prefixes)} for {config}"
    if not untrained:
        raise VitsearchError(
            f"{source} holds no trained {what} ({len(missing)} tensors missing): the ONNX file would rank tokens "
            "with randomly initialised weights. Export the model finalize trained (--checkpoint "
            "reports/STUDY/finalized/trial_N/model.pt), or pass --untrained-selectors to export it for timing only")
    logger.warning("exporting %s untrained, as initialised (--untrained-selectors): time it, its accuracy means "
                   "nothing", what)
