"""Models: any timm ViT/DeiT by name, checkpoints loaded safely, and the geometry that keys latency tables.

Token pruning here patches timm's plain :class:`~timm.models.vision_transformer.VisionTransformer` (one token
sequence, class/prefix tokens in front), so :func:`create_model` refuses every other architecture up front.
The embedded models (:mod:`vitsearch.embedded`, re-exported here) pair a small ViT with a built-in data set of the
same name: ``"digits"`` (``vit_digits``, the default) and ``"clutter"`` (``vit_clutter``). Their trained weights
come from :mod:`vitsearch.pretrain`, which builds on this module.
"""
from __future__ import annotations

import difflib
import hashlib
import logging
import os
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from .embedded import (CLUTTER, CLUTTER_ARCH, CLUTTER_MODEL_ARGS, DIGITS, DIGITS_ARCH, DIGITS_MODEL_ARGS, EMBEDDED,
                       EmbeddedTask, embedded_task)
from .checkpoint_guard import quantized_entries, quantized_message, refuse_onnx
from .errors import RunFailure, VitsearchError

logger = logging.getLogger(__name__)

__all__ = ["CLUTTER", "CLUTTER_ARCH", "CLUTTER_MODEL_ARGS", "DIGITS", "DIGITS_ARCH", "DIGITS_MODEL_ARGS", "EMBEDDED",
           "EmbeddedTask", "ModelGeometry", "canonical_name", "check_model_name", "create_model", "embedded_task", "file_sha256",
           "geometry", "load_state_dict", "read_checkpoint", "read_checkpoint_record"]

def canonical_name(name: str) -> str:
    """The timm registry name of a model name (``"digits"`` is ``vit_digits``): two names are one model when
    their canonical names are equal."""
    task = embedded_task(name)
    return task.arch if task is not None else name


def _suggest(name: str) -> str:
    candidates = [*EMBEDDED, *timm.list_models(["*vit*", "*deit*"])]  # the ViT family, where a typo most likely came from
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    if close:
        return "did you mean " + ", ".join(close) + "?"
    return "list the ViT models with: python -c \"import timm; print(timm.list_models(['*vit*', '*deit*']))\""


def check_model_name(name: str) -> None:
    """Raise a VitsearchError unless ``name`` is a timm model built on the plain VisionTransformer.

    Builds the model on the meta device (no memory, no init compute, no download) to check its class.
    """
    arch = canonical_name(name)
    if not timm.is_model(arch):
        raise VitsearchError(f"unknown model {name!r}: {_suggest(name)}")
    with torch.device("meta"):
        probe = timm.create_model(arch, pretrained=False)
    if not isinstance(probe, VisionTransformer):
        raise VitsearchError(
            f"model {name!r} is a {type(probe).__name__}, not a plain ViT: token pruning here needs a timm "
            f"VisionTransformer (ViT / DeiT, e.g. deit_small_patch16_224, vit_tiny_patch16_224, {DIGITS})")


def offline() -> bool:
    """Whether the Hugging Face Hub is switched off (``HF_HUB_OFFLINE``): pretrained weights come from its cache."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def create_model(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    num_classes: int | None = None,
    **kwargs: Any,
) -> VisionTransformer:
    """A timm ViT/DeiT by name (``"digits"`` and ``"clutter"`` are the embedded ones), in eval mode.

    ``checkpoint`` loads a state_dict (``.safetensors``, or a PyTorch file read with ``weights_only=True``);
    when ``num_classes`` is not given it is read from the checkpoint's head, so a fine-tuned checkpoint
    just works. ``pretrained`` downloads timm's weights (the digits model's are :func:`vitsearch.pretrain.base_model`).
    Extra keyword arguments go to ``timm.create_model`` (e.g. ``img_size=32, patch_size=8``).
    """
    check_model_name(name)
    arch = canonical_name(name)
    state_dict = None
    if checkpoint is not None:
        if pretrained:
            raise VitsearchError("give either a checkpoint or pretrained weights, not both")
        state_dict = read_checkpoint(checkpoint)
        if num_classes is None:
            num_classes = _head_classes(state_dict)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained:  # the hub may retry for a minute when out of reach: say what is waited for
        logger.info("loading timm's pretrained weights for %s (the Hugging Face Hub, or its cache%s)", name,
                    "" if offline() else "; offline, HF_HUB_OFFLINE=1 reads the cache without retrying the hub")
    try:
        model = timm.create_model(arch, pretrained=pretrained, **kwargs)
    except VitsearchError:
        raise
    except TypeError as e:  # an architecture argument the model does not take
        raise VitsearchError(f"cannot build {name!r} with {kwargs}: {e}") from e
    except Exception as e:  # network, hub and cache failures all surface here; the user's fix is the same
        if not pretrained:
            raise
        hint = ("" if offline() else " If they are in the Hugging Face cache already, set HF_HUB_OFFLINE=1 to read "
                "them from there without retrying the hub.")
        raise RunFailure(
            f"could not load pretrained weights for {name!r}: {e}. Download them on a machine with access to "
            f"the Hugging Face Hub, or pass --checkpoint with a local file.{hint}") from e
    if state_dict is not None:
        load_state_dict(model, state_dict, source=str(checkpoint), name=name)
    model.eval()
    logger.debug("created %s (%s), checkpoint=%s, pretrained=%s", name, type(model).__name__, checkpoint, pretrained)
    return model


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a ``.safetensors`` file or a PyTorch file, without running pickled code.

    Accepts a raw state_dict or a dict holding it under ``model`` / ``state_dict`` / ``model_state``, and strips
    the ``module.`` (DistributedDataParallel) and ``_orig_mod.`` (torch.compile) prefixes.
    """
    return read_checkpoint_record(path)[0]


def read_checkpoint_record(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`read_checkpoint`'s state_dict and the entries saved beside it (a vitsearch checkpoint's
    ``config``, ``model``, ``geometry``...; empty for a raw state_dict or a safetensors file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise VitsearchError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise VitsearchError(f"checkpoint {str(path)!r} is empty (0 bytes): it was not saved completely; save or "
                             "copy it again")
    if path.suffix == ".onnx":
        refuse_onnx(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise VitsearchError(
                f"checkpoint {str(path)!r} is a .safetensors file but the safetensors package is not installed: "
                "pip install safetensors") from e
        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError for any malformed file
            raise VitsearchError(f"checkpoint {str(path)!r} is not a readable safetensors file: {e}") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # torch reports a disallowed class or function, a plain pickle.dump file and a file that is no
            # pickle at all as UnpicklingError; the first two are pickles its weights-only reader refused.
            names = re.findall(r"GLOBAL ([\w.]+)", str(e)) or pickle_globals(path)
            if "Weights only load failed" not in str(e) or not names:
                refuse_onnx(path)  # an exported model under another suffix
                raise VitsearchError(
                    f"checkpoint {str(path)!r} is not a PyTorch checkpoint (cannot unpickle it)") from e
            what = f" ({', '.join(dict.fromkeys(names))})"
            if any("quantiz" in n.lower() or n.startswith("torchao.") for n in names):  # torchao's int8 tensors
                raise VitsearchError(quantized_message(path, f"quantized tensors{what}")) from e
            raise VitsearchError(
                f"checkpoint {str(path)!r} holds code or Python objects{what} besides tensors, which vitsearch never "
                "loads (weights_only=True refuses them: unpickling them could run any code). If you trust the file, "
                "re-save just its weights as a plain state_dict, torch.save(model.state_dict(), 'weights.pt'), or "
                "as safetensors (safetensors.torch.save_file), and pass that") from e
        except (RuntimeError, EOFError, OSError) as e:
            # A cut-off zip archive (torch.save's format) or pickle: torch's own text names no file.
            reason = str(e).strip().split(". ")[0] or type(e).__name__
            raise VitsearchError(f"checkpoint {str(path)!r} is truncated or not a PyTorch checkpoint ({reason}): "
                                 "save or copy it again, or pass the right file") from e
    record: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state"):
            if isinstance(obj.get(key), Mapping):
                record = {k: v for k, v in obj.items() if k != key}
                obj = obj[key]
                break
    quantized = quantized_entries(obj) if isinstance(obj, Mapping) else []
    if quantized:
        more = f" and {len(quantized) - 2} more" if len(quantized) > 2 else ""
        raise VitsearchError(quantized_message(path, f"{', '.join(quantized[:2])}{more}"))
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VitsearchError(
            f"checkpoint {str(path)!r} is not a state_dict: expected a dict of tensors, or a dict with one "
            "under 'model', 'state_dict' or 'model_state'")
    bad = non_finite(obj)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise VitsearchError(
            f"checkpoint {str(path)!r} holds NaN or infinite weights (in {', '.join(bad[:3])}{more}): it was saved "
            "from a training that diverged. Pass an earlier checkpoint, or train again with a lower learning rate")
    return {_strip_prefixes(k): v for k, v in obj.items()}, record


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinity (weights of a training that diverged)."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def pickle_globals(path: str | Path) -> list[str]:
    """The ``module.name`` globals a pickle (or torch.save's zip of one) would import when unpickled, read with
    :mod:`pickletools` without unpickling anything: what a refused checkpoint holds, for its message."""
    import pickletools
    import zipfile

    found: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name else b""
        else:
            data = Path(path).read_bytes()
        pushed: list[Any] = []
        memo: dict[int, Any] = {}
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(pushed) >= 2:
                found.append(f"{pushed[-2]}.{pushed[-1]}")
            elif op.name == "MEMOIZE" and pushed:
                memo[len(memo)] = pushed[-1]
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                pushed.append(memo.get(int(arg)))
            elif isinstance(arg, str) and "UNICODE" in op.name:
                pushed.append(arg)
    except Exception:  # a damaged pickle: name what was read before the damage
        pass
    safe = ("torch._utils.", "torch.storage.", "collections.OrderedDict", "torch.FloatStorage", "torch.LongStorage")
    return [g for g in found if not g.startswith(safe)]


def _strip_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _head_classes(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    head = state_dict.get("head.weight")
    return int(head.shape[0]) if head is not None and head.ndim == 2 else None


def load_state_dict(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str, name: str | None = None,
    fix: str = "Pass the --model the checkpoint was trained as (and --num-classes if its head differs)",
) -> None:
    """Load strictly; on any mismatch raise one VitsearchError that lists what differs and ``fix``, what to do."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []  # one line, so the CLI's "error: ..." stays a single message
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise VitsearchError(
            f"checkpoint {source!r} does not fit model {name or type(model).__name__!r}: {'; '.join(parts)}. {fix}")
    model.load_state_dict(state_dict, strict=True)


def file_sha256(path: str | Path) -> str:
    """Content hash of a checkpoint, recorded in provenance so a study names exactly the weights it used."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelGeometry:
    """What latency and FLOPs depend on; :attr:`key` names the latency table measured for it."""

    embed_dim: int
    num_heads: int
    depth: int
    mlp_ratio: float  # hidden width of the MLP / embed_dim
    patch_size: tuple[int, int]  # (height, width)
    img_size: tuple[int, int]  # (height, width)
    in_chans: int
    num_prefix_tokens: int  # class (+ distillation / register) tokens, never pruned
    num_patches: int
    num_classes: int
    global_pool: str = "token"  # the stock model's pooling ("token": the head reads the class token only)

    @property
    def num_tokens(self) -> int:
        """Tokens entering the first block."""
        return self.num_prefix_tokens + self.num_patches

    @property
    def key(self) -> str:
        """Filesystem-safe id, e.g. ``d384-h6-l12-m4-p16-i224-c3``."""
        return (f"d{self.embed_dim}-h{self.num_heads}-l{self.depth}-m{self.mlp_ratio:g}"
                f"-p{_size(self.patch_size)}-i{_size(self.img_size)}-c{self.in_chans}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch_size"], d["img_size"] = list(self.patch_size), list(self.img_size)
        d["key"] = self.key
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelGeometry":
        fields = {k: v for k, v in d.items() if k != "key"}
        fields["patch_size"], fields["img_size"] = tuple(d["patch_size"]), tuple(d["img_size"])
        return cls(**fields)


def _size(hw: tuple[int, int]) -> str:
    return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def geometry(model: torch.nn.Module) -> ModelGeometry:
    """Read the geometry from a timm VisionTransformer's modules (not its constructor arguments)."""
    if not isinstance(model, VisionTransformer):
        raise VitsearchError(f"geometry needs a timm VisionTransformer, got {type(model).__name__}")
    try:
        block = model.blocks[0]
        pe = model.patch_embed
        embed_dim = int(model.embed_dim)
        return ModelGeometry(
            embed_dim=embed_dim,
            num_heads=int(block.attn.num_heads),
            depth=len(model.blocks),
            mlp_ratio=round(block.mlp.fc1.out_features / embed_dim, 4),
            patch_size=_pair(pe.patch_size),
            img_size=_pair(pe.img_size),
            in_chans=int(pe.proj.in_channels),
            num_prefix_tokens=int(model.num_prefix_tokens),
            num_patches=int(pe.num_patches),
            num_classes=int(model.num_classes),
            global_pool=str(getattr(model, "base_pool", model.global_pool)),
        )
    except (AttributeError, IndexError, TypeError) as e:
        raise VitsearchError(
            f"cannot read the geometry of this {type(model).__name__}: {e}. vitsearch supports timm ViTs built "
            f"from the standard Block/Attention/Mlp (tested with timm {timm.__version__})") from e
