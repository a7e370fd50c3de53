"""The embedded models: small timm ViTs registered under their own names, each paired with a built-in data set
of the same name (``vitsearch.data``) and a pretraining recipe (``vitsearch.pretrain.recipe``).

``"digits"`` (timm name ``vit_digits``) is the default; ``"clutter"`` (``vit_clutter``) reads a digit among
fragments of others, where the tokens a pruning method keeps decide what it can read. :mod:`vitsearch.models`
re-exports these names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer

from .errors import VitsearchError

DIGITS = "digits"  # the embedded default model, an alias of DIGITS_ARCH
DIGITS_ARCH = "vit_digits"
CLUTTER = "clutter"  # the embedded cluttered-digits model, an alias of CLUTTER_ARCH
CLUTTER_ARCH = "vit_clutter"

# The digits ViT: 64x64 grey canvases in patches of 8 give 64 patch tokens, most of them background, which
# is what token pruning removes. Depth 12, like ViT/DeiT, so the same search space applies (no selector in the
# first three blocks) and pruning the other nine can reach 60% of the unpruned latency at batch 1 (lead's
# measurement: at depth 8 the three dense blocks and per-block runtime overhead kept the fastest config at ~62%).
DIGITS_MODEL_ARGS: dict[str, Any] = dict(
    img_size=64,
    patch_size=8,
    in_chans=1,
    num_classes=10,
    embed_dim=64,
    depth=12,
    num_heads=4,
    mlp_ratio=4.0,
    class_token=True,
    global_pool="token",
)

# The clutter ViT: 96x96 canvases (vitsearch.data.clutter) in patches of 8, 144 patch tokens, a digit covering 9
# of them among fragments of others. More tokens than digits' 64, so its latency follows the token count more
# than the runtime's per-op cost; narrower than the digits ViT (48 wide, MLP ratio 2) so that a brief candidate
# trains in about 20 s on two CPU cores. Measured on the shared 2-core machine: the digits width (64, ratio 4) was
# at chance after 340 pretraining steps with 12 fragments, this one learned faster
# (benchmarks/RESULTS.md#claim-clutter).
CLUTTER_MODEL_ARGS: dict[str, Any] = {**DIGITS_MODEL_ARGS, "img_size": 96, "embed_dim": 48, "mlp_ratio": 2.0}


@dataclass(frozen=True)
class EmbeddedTask:
    """A built-in model with its own data set of the same name, trained and cached by :mod:`vitsearch.pretrain`:
    ``--model NAME`` without a checkpoint means its cached base, ``--dataset NAME`` its data and
    ``vitsearch/spaces/NAME.toml`` its search space."""

    name: str  # what --model and --dataset take
    arch: str  # its timm registry name
    model_args: Mapping[str, Any]  # the architecture: timm VisionTransformer arguments

    @property
    def space_file(self) -> str:
        return f"{self.name}.toml"


EMBEDDED: dict[str, EmbeddedTask] = {t.name: t for t in (
    EmbeddedTask(DIGITS, DIGITS_ARCH, DIGITS_MODEL_ARGS),
    EmbeddedTask(CLUTTER, CLUTTER_ARCH, CLUTTER_MODEL_ARGS),
)}


def embedded_task(name: str) -> EmbeddedTask | None:
    """The embedded task a model name means (its alias or its timm name), or None for any other model."""
    return next((t for t in EMBEDDED.values() if name in (t.name, t.arch)), None)


def _input_cfg(task: EmbeddedTask) -> dict[str, Any]:
    # The data contract of an embedded model travels with it (model.pretrained_cfg), like every timm model's:
    # pixels in [0, 1] normalised to [-1, 1], one channel.
    size = task.model_args["img_size"]
    return dict(url="", num_classes=task.model_args["num_classes"], input_size=(1, size, size), pool_size=None,
                crop_pct=1.0, interpolation="bilinear", fixed_input_size=True, mean=(0.5,), std=(0.5,),
                first_conv="patch_embed.proj", classifier="head", license="apache-2.0")


default_cfgs = generate_default_cfgs({t.arch: _input_cfg(t) for t in EMBEDDED.values()})


def _build_embedded(task: EmbeddedTask, pretrained: bool, kwargs: Mapping[str, Any]) -> VisionTransformer:
    if pretrained:
        raise VitsearchError(f"the {task.name} model's trained weights come from its cache: use "
                             f"vitsearch.pretrain.base_model() (the CLI loads them for --model {task.name})")
    return build_model_with_cfg(VisionTransformer, task.arch, False, **{**task.model_args, **kwargs})


@register_model
def vit_digits(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """The embedded digits ViT (its architecture; the trained weights are :func:`vitsearch.pretrain.base_model`'s,
    which stands on this module, so the registry does not load them)."""
    return _build_embedded(EMBEDDED[DIGITS], pretrained, kwargs)


@register_model
def vit_clutter(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """The embedded cluttered-digits ViT (its architecture; the trained weights are
    :func:`vitsearch.pretrain.base_model`'s)."""
    return _build_embedded(EMBEDDED[CLUTTER], pretrained, kwargs)


