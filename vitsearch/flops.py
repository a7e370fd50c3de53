"""Multiply-accumulate counts of (pruned) ViTs with fvcore, without silent gaps, and the analytic ViT formula.

fvcore traces the model with ``torch.jit.trace`` and counts only the ops it has a handle for: it warns about
some ops (add, softmax, ``scaled_dot_product_attention`` ...) and *silently* drops others (gather, clamp ...).
Here every op in the trace either has a handle with a documented cost or sits in :data:`ZERO_COST_OPS`, an
explicit list of ops that do no arithmetic; anything else is reported as uncounted and, by default, is an error.

Convention (:data:`CONVENTION`): the unit is the multiply-accumulate (MAC), fvcore's "one fused multiply-add is
one flop", which is what papers quote as "GMACs" or, loosely, "GFLOPs" (DeiT-S: 4.6). FLOPs in the
2-per-MAC sense (``torch.utils.flop_counter``) are twice the matmul part. Ops that are not multiply-adds are
counted as one MAC-equivalent per elementary operation:

- matmul-like (``linear``, ``matmul``, ``einsum``, conv, ``scaled_dot_product_attention``): multiply-adds;
  fused attention counts QK^T and AV, ``2 * B * H * Nq * Nk * hd``, like the unfused path's two matmuls;
- layer/group/batch norm: fvcore's handles (5 per element with affine);
- elementwise arithmetic and activations (add, mul, div, gelu, sigmoid, exp, comparisons ...): 1 per output
  element; softmax / log_softmax: 3 per element (exp, sum, normalise); reductions (sum, mean, amax): 1 per
  input element;
- fused attention also counts the softmax and scaling it performs inside (3 per attention score, 1 per query
  element), so fused and unfused attention give the same total;
- sort / argsort: ``n * ceil(log2 n)`` comparisons per sorted row; topk: ``n * max(1, ceil(log2 k))`` per row
  (heap selection);
- indexed data movement (gather, scatter, index, index_select): 1 per element moved. It does no arithmetic
  but its cost is data dependent and it is exactly the work a token selector adds, so it is never 0.
"""
from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from .errors import VitsearchError

logger = logging.getLogger(__name__)

CONVENTION = (
    "MACs: one multiply-accumulate = 1 (fvcore's flop, the papers' GMACs; FLOPs = 2 x matmul MACs). "
    "Non-MAC ops as 1 per elementary op: elementwise 1/output element, softmax 3/element, reductions 1/input "
    "element, norms 5/element, sort n*ceil(log2 n), topk n*ceil(log2 k), gather/scatter 1/element moved; "
    "layout ops (view, reshape, permute, slice, cat, expand, ...) 0"
)

# The one meaning of "GMACs" in every vitsearch figure (study, CSVs, reports, predict, info, export, finalize): the
# multiply-adds papers quote (DeiT-S 4.6). The total with norms, softmax and selection is ``gmacs_all_ops``.
GMACS = "GMACs: 10^9 multiply-accumulates per image in matmuls (linear layers, attention products, patch conv)"

# Ops that do no arithmetic and are deliberately counted as 0. Everything else needs a handle below; an op in
# neither list is "uncounted" (fvcore's own silent list is replaced by this one).
ZERO_COST_OPS: frozenset[str] = frozenset({
    # Shape and dtype metadata, scalar conversion: no tensor data is touched.
    "aten::Int", "aten::ScalarImplicit", "aten::size", "aten::numel", "aten::dim",
    # Views and layout: free, or a contiguous copy a runtime folds into the next kernel.
    "aten::view", "aten::reshape", "aten::flatten", "aten::unflatten", "aten::permute", "aten::transpose",
    "aten::t", "aten::contiguous", "aten::expand", "aten::expand_as", "aten::squeeze", "aten::unsqueeze",
    "aten::unsqueeze_", "aten::select", "aten::slice", "aten::narrow", "aten::unbind", "aten::split",
    "aten::split_with_sizes", "aten::chunk", "aten::alias", "aten::clone", "aten::copy_", "aten::detach",
    # Contiguous concatenation (class token + patches, kept tokens + package): a memory copy, no arithmetic.
    "aten::cat", "aten::stack",
    # Casts, and dropout, which is the identity in eval mode (the only mode counted).
    "aten::to", "aten::type_as", "aten::dropout", "aten::feature_dropout",
    # Constant fills: no arithmetic, and hoisted out of the per-image work by every runtime.
    "aten::zeros", "aten::zeros_like", "aten::ones", "aten::ones_like", "aten::full", "aten::full_like",
    "aten::empty", "aten::empty_like", "aten::new_zeros", "aten::new_ones", "aten::new_full", "aten::new_empty",
    "aten::arange", "aten::eye",
})

# fvcore's names for its matmul-like handles plus ours: the part of the total that is true multiply-adds.
MATMUL_OPS: frozenset[str] = frozenset({
    "linear", "matmul", "mm", "bmm", "addmm", "einsum", "conv", "scaled_dot_product_attention"})

_ELEMENTWISE = (
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg", "abs", "pow", "sqrt", "rsqrt",
    "reciprocal", "exp", "log", "erf", "tanh", "sigmoid", "gelu", "silu", "relu", "relu_", "clamp", "clamp_",
    "clamp_min", "clamp_max", "maximum", "minimum", "where", "masked_fill", "masked_fill_", "floor", "ceil",
    "round", "eq", "ne", "gt", "ge", "lt", "le", "logical_and", "logical_or", "logical_not", "bitwise_not",
    "__and__", "__or__", "remainder", "floor_divide",
)
_REDUCTIONS = ("sum", "mean", "amax", "amin", "max", "min", "prod", "cumsum", "norm", "linalg_vector_norm", "var",
               "std")
SOFTMAX_COST = 3  # exp, sum, normalise per element
Handle = Callable[[list, list], Any]


def _shape(value: Any) -> list[int]:
    if not value.isCompleteTensor():
        raise VitsearchError(f"fvcore could not infer the shape of a {value.node().kind()} operand")
    return list(value.type().sizes())


def _numel(value: Any) -> int:
    return math.prod(_shape(value))


def _const(node: Any, name: str) -> Any:
    return node.namedInput(name).toIValue()


def _per_output(cost: float = 1) -> Handle:
    def handle(inputs: list, outputs: list) -> float:
        return cost * _numel(outputs[0])
    return handle


def _per_input(cost: float = 1) -> Handle:
    def handle(inputs: list, outputs: list) -> float:
        return cost * _numel(inputs[0])
    return handle


def _sdpa(inputs: list, outputs: list) -> Counter:
    """q (..., Nq, E), k (..., Nk, E), v (..., Nk, Ev): QK^T + AV multiply-adds, plus the softmax and scaling
    done inside, booked under the same names as the unfused path's ops."""
    q, k, v = (_shape(t) for t in inputs[:3])
    batch_heads, nq, e = math.prod(q[:-2]), q[-2], q[-1]
    nk, ev = k[-2], v[-1]
    scores = batch_heads * nq * nk
    counts = Counter({"scaled_dot_product_attention": scores * (e + ev), "softmax": SOFTMAX_COST * scores,
                      "mul": batch_heads * nq * e})
    if inputs[3].type().kind() == "TensorType":  # an additive attention mask: one add per score
        counts["add"] = scores
    return counts


def _einsum(inputs: list, outputs: list) -> float:
    """Exact multiply-adds of an einsum, contracted pairwise in numpy's optimal order. (fvcore's handle parses
    numpy's printed FLOP count, which is rounded to 4 significant digits.)"""
    import numpy as np

    equation = inputs[0].toIValue().replace(" ", "")
    shapes = [_shape(v) for v in inputs[1].node().inputs()]
    lhs, _, out = equation.partition("->")
    terms = lhs.split(",")
    if "..." in equation or "->" not in equation:
        from fvcore.nn.jit_handles import einsum_flop_jit  # implicit output or ellipsis: fvcore's estimate

        return einsum_flop_jit(inputs, outputs)
    sizes = {c: n for term, shape in zip(terms, shapes) for c, n in zip(term, shape)}
    path = np.einsum_path(equation, *[np.broadcast_to(np.float32(0), s) for s in shapes], optimize="optimal")[0][1:]
    macs = 0
    for step in path:  # each step contracts some operands into one, appended at the end
        picked = [terms[i] for i in step]
        terms = [t for i, t in enumerate(terms) if i not in step]
        letters = set("".join(picked))
        keep = "".join(sorted(c for c in letters if c in out or any(c in t for t in terms)))
        macs += math.prod(sizes[c] for c in letters)  # every combination of the involved indices: one MAC
        terms.append(keep)
    return macs


def _sort(inputs: list, outputs: list) -> float:
    shape = _shape(inputs[0])
    n = shape[_const(outputs[0].node(), "dim")] if shape else 1
    return math.prod(shape) * max(1, math.ceil(math.log2(max(n, 2))))


def _topk(inputs: list, outputs: list) -> float:
    k = _const(outputs[0].node(), "k")
    return _numel(inputs[0]) * max(1, math.ceil(math.log2(max(k, 2))))


def _scatter(inputs: list, outputs: list) -> float:
    return _numel(outputs[0].node().namedInput("index"))  # elements written


def _index_put(inputs: list, outputs: list) -> float:
    return _numel(outputs[0].node().namedInput("values"))


def op_handles() -> dict[str, Handle]:
    """Every handle count_macs installs on top of fvcore's defaults (which cover matmuls, conv and norms)."""
    handles: dict[str, Handle] = {f"aten::{op}": _per_output(1) for op in _ELEMENTWISE}
    handles.update({f"aten::{op}": _per_input(1) for op in _REDUCTIONS})
    handles.update({"aten::softmax": _per_input(SOFTMAX_COST), "aten::log_softmax": _per_input(SOFTMAX_COST),
                    "aten::_softmax": _per_input(SOFTMAX_COST)})
    handles["aten::scaled_dot_product_attention"] = _sdpa
    handles["aten::einsum"] = _einsum
    handles.update({"aten::sort": _sort, "aten::argsort": _sort, "aten::topk": _topk})
    handles.update({"aten::gather": _per_output(1), "aten::index": _per_output(1),
                    "aten::index_select": _per_output(1), "aten::take_along_dim": _per_output(1),
                    "aten::scatter": _scatter, "aten::scatter_": _scatter, "aten::scatter_add": _scatter,
                    "aten::scatter_add_": _scatter, "aten::index_put": _index_put, "aten::index_put_": _index_put})
    return handles


@dataclass(frozen=True)
class MacCount:
    """What :func:`count_macs` measured. Counts are for the whole batch."""

    total: int  # every counted op, in MACs and MAC-equivalents (see ``convention``)
    by_operator: dict[str, int]  # op name -> count, e.g. {"linear": ..., "scaled_dot_product_attention": ...}
    by_module: dict[str, int]  # module name ("" = whole model, "blocks.3", "token_selectors.3") -> count
    matmul_by_module: dict[str, int]  # the multiply-add part of by_module
    batch: int
    input_size: tuple[int, ...]  # (C, H, W) of one image
    convention: str = CONVENTION
    unsupported: dict[str, int] = field(default_factory=dict)  # ops with no handle and not in ZERO_COST_OPS
    config: str | None = None  # the pruning config, for a patched model
    block_tokens: tuple[int, ...] | None = None  # tokens each block computed on in the traced forward

    @property
    def matmul(self) -> int:
        """Only true multiply-adds (linear, matmul, einsum, conv, attention): what papers call GMACs."""
        return sum(v for k, v in self.by_operator.items() if k in MATMUL_OPS)

    @property
    def gmacs(self) -> float:
        """vitsearch's one GMACs figure (:data:`GMACS`): 10^9 multiply-adds in matmuls, per image."""
        return self.matmul / self.batch / 1e9

    @property
    def gmacs_all_ops(self) -> float:
        """Per image, every counted op in 10^9 (norms, softmax, elementwise and selection as MAC-equivalents)."""
        return self.total / self.batch / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "gmacs": self.gmacs, "gmacs_all_ops": self.gmacs_all_ops, "matmul": self.matmul,
                "batch": self.batch,
                "input_size": list(self.input_size), "config": self.config,
                "block_tokens": list(self.block_tokens) if self.block_tokens is not None else None,
                "by_operator": dict(self.by_operator), "unsupported": dict(self.unsupported),
                "convention": self.convention}


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) a timm ViT was built for, read from its patch embedding."""
    pe = getattr(model, "patch_embed", None)
    img_size = getattr(pe, "img_size", None)
    proj = getattr(pe, "proj", None)
    if img_size is None or not isinstance(proj, nn.Conv2d):
        raise VitsearchError(
            f"cannot tell the input size of this {type(model).__name__}: pass input_size=(C, H, W)")
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    return int(proj.in_channels), int(h), int(w)


def count_macs(
    model: nn.Module, *, batch: int = 1, input_size: Sequence[int] | None = None, strict: bool = True,
) -> MacCount:
    """MACs of one eval-mode forward of ``model`` on a ``(batch, *input_size)`` input (see the module docstring).

    The model is traced in eval mode (the inference graph: SPViT prunes for real, dropout is off) and put
    back in its previous mode. ``strict`` raises when an op is neither counted nor in :data:`ZERO_COST_OPS`;
    with ``strict=False`` such ops are listed in :attr:`MacCount.unsupported` and logged.
    """
    with warnings.catch_warnings():  # deferred import; fvcore scripts a loss at import, which torch deprecates
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    if batch < 1:
        raise VitsearchError(f"batch must be a positive integer, got {batch}")
    size = tuple(int(s) for s in (input_size if input_size is not None else default_input_size(model)))
    param = next(model.parameters(), None)
    x = torch.randn(batch, *size, device=param.device if param is not None else None,
                    dtype=param.dtype if param is not None else None)
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, (x,))
        if not isinstance(getattr(analysis, "_ignored_ops", None), set):
            raise VitsearchError("this fvcore version changed its ignored-op list; vitsearch was tested with fvcore 0.1.5")
        analysis._ignored_ops = set(ZERO_COST_OPS)  # replace fvcore's silent list with ours (documented above)
        analysis.set_op_handle(**op_handles())
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with warnings.catch_warnings(), torch.no_grad():
            # TorchScript's deprecation notice and tracer warnings about shape asserts are noise here.
            warnings.simplefilter("ignore")
            by_module = analysis.by_module()
            by_operator = analysis.by_operator()
            unsupported = dict(analysis.unsupported_ops())
            matmul_by_module = {name: int(sum(v for k, v in ops.items() if k in MATMUL_OPS))
                                for name, ops in analysis.by_module_and_operator().items()}
    finally:
        model.train(was_training)
    if unsupported:
        msg = ("ops with no MAC handle (add a handle in vitsearch/flops.py or, if they do no arithmetic, list "
               f"them in ZERO_COST_OPS): {unsupported}")
        if strict:
            raise VitsearchError(msg)
        logger.warning(msg)
    schedule, cfg = getattr(model, "token_schedule", None), getattr(model, "prune_config", None)
    state = getattr(model, "_vitsearch", None)
    return MacCount(
        total=int(by_module[""]),
        by_operator={k: int(v) for k, v in by_operator.items()},
        by_module={k: int(v) for k, v in by_module.items()},
        matmul_by_module=matmul_by_module,
        batch=batch,
        input_size=size,
        unsupported=unsupported,
        config=str(cfg) if cfg is not None else None,
        # Recorded during the trace, where x.shape[1] is a traced 0-d tensor.
        block_tokens=tuple(int(n) for n in state.block_tokens) if state is not None and schedule is not None else None,
    )


# Analytic formula ------------------------------------------------------------------------------------------

def gmacs(model: nn.Module) -> float:
    """Matmul GMACs of one forward at batch 1: the figure studies record beside latency."""
    return count_macs(model).matmul / 1e9


def block_macs(n: int, embed_dim: int, mlp_hidden: int) -> int:
    """Multiply-adds of one pre-norm ViT block on n tokens of width D:
    qkv 3nD^2 + proj nD^2 + MLP 2nD*hidden + attention QK^T and AV 2n^2 D (= 12nD^2 + 2n^2 D at ratio 4)."""
    d = embed_dim
    return 4 * n * d * d + 2 * n * d * mlp_hidden + 2 * n * n * d


def analytic_vit_macs(geometry: Any, block_tokens: Sequence[int], *, batch: int = 1,
                      mlp_tokens: Sequence[int] | None = None) -> int:
    """Multiply-adds of a ViT forward: patch embedding + every block at its token count + the classifier head.

    ``geometry`` is a :class:`vitsearch.models.ModelGeometry` (or anything with its fields);
    ``block_tokens`` comes from :func:`vitsearch.pruning.token_schedule`. Norms, elementwise ops and token
    selectors are excluded: this is the papers' GMAC formula, which :func:`count_macs` must match up to them.
    ``mlp_tokens``: each block's MLP count where a method reduces tokens inside the block
    (``TokenSchedule.mlp_tokens``); None: the block's.
    """
    g = geometry
    if len(block_tokens) != g.depth:
        raise VitsearchError(f"{len(block_tokens)} block token counts for a model of depth {g.depth}")
    d = int(g.embed_dim)
    hidden = round(d * float(g.mlp_ratio))  # timm: fc1.out_features = int(dim * mlp_ratio)
    ph, pw = (g.patch_size, g.patch_size) if isinstance(g.patch_size, int) else g.patch_size
    patch_embed = g.num_patches * d * g.in_chans * ph * pw  # a stride-p conv is one linear map per patch
    head = d * g.num_classes  # on the pooled token only
    blocks = sum(block_macs(n, d, hidden) for n in block_tokens)
    if mlp_tokens is not None:  # the MLP at its own count: 2 n D hidden per block
        blocks += sum(2 * d * hidden * (m - n) for n, m in zip(block_tokens, mlp_tokens, strict=True))
    return batch * (patch_embed + blocks + head)


def analytic_model_macs(model: nn.Module, *, batch: int = 1) -> int:
    """:func:`analytic_vit_macs` for a timm ViT, at its token schedule if it is patched (dense otherwise)."""
    from .models import geometry as model_geometry  # deferred: models imports timm's registry

    g = model_geometry(model)
    schedule = getattr(model, "token_schedule", None)
    tokens = schedule.block_tokens if schedule is not None else (g.num_tokens,) * g.depth
    return analytic_vit_macs(g, tokens, batch=batch, mlp_tokens=schedule.mlp_tokens if schedule is not None else None)


def count_by_block(count: MacCount, depth: int, *, matmul_only: bool = False) -> list[int]:
    """Per-block counts (``blocks.0`` ... ``blocks.{depth-1}``) from a :class:`MacCount`."""
    source: Mapping[str, int] = count.matmul_by_module if matmul_only else count.by_module
    return [int(source.get(f"blocks.{i}", 0)) for i in range(depth)]
