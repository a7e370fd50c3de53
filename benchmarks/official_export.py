"""The official ToMe and EViT DeiT-S, exported to ONNX with their token counts (issue 26's latency comparison).

Run by ``benchmarks/official_latency.py`` with the python of a separate environment that holds timm 0.4.12 (the
version both official repositories were written for); it imports no vitsearch module, only torch, timm and the two
repositories' own code:

    python benchmarks/official_export.py --tome ToMe --evit evit --out DIR [--batches 1 16]

Writes DIR/<name>-b<batch>.onnx for the official dense DeiT-S (timm 0.4.12), ToMe r=8 and r=13 (``tome.patch.timm``
on that model, proportional attention as its off-the-shelf evaluation), EViT's own dense model (keep rate 1) and
EViT 0.7 at blocks 3/6/9 with the inattentive tokens fused (its DeiT-S setting); prints one JSON line with each
model's per-block token counts (the attention's input and the MLP's input) at batch 1.

Two changes to how the official code is exported, none to what it computes (:func:`exportable`), each for a graph
the TorchScript exporter (torch 2.14, opset 18) writes and onnxruntime refuses to load: ToMe's merge calls
``scatter_reduce(reduce="sum")``, written with an ``If`` whose branches differ in rank, so during export it is
``scatter_add``, the same sum (``include_self`` is True in both); EViT's ``complement_idx`` permutes with a negative
dimension, written as a Transpose with ``perm`` -1, so during export ``permute`` gets the same dimensions counted
from 0. Each exported graph is checked against PyTorch (:func:`parity`).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import warnings
from pathlib import Path

import torch

OPSET = 18  # vitsearch's export opset (vitsearch/export.py DEFAULT_OPSET): both sides export alike


def build(name: str, tome_repo: Path, evit_repo: Path) -> torch.nn.Module:
    torch.manual_seed(0)  # random weights: latency and token counts do not depend on them
    if name.startswith("evit"):
        sys.path.insert(0, str(evit_repo))
        import evit  # the repository's evit.py: its own ViT with keep rates and token fusion

        if name == "evit-dense":
            return evit.deit_small_patch16_224()
        return evit.deit_small_patch16_shrink_base(base_keep_rate=0.7, drop_loc=(3, 6, 9), fuse_token=True)
    import timm

    model = timm.create_model("deit_small_patch16_224")
    if name.startswith("tome"):
        sys.path.insert(0, str(tome_repo))
        import tome

        tome.patch.timm(model)  # prop_attn=True: the off-the-shelf evaluation
        model.r = int(name.split("-r")[1])
    return model


@contextlib.contextmanager
def exportable():
    """``scatter_reduce(..., "sum")`` as ``scatter_add``, ``permute`` with non-negative dimensions (the module
    docstring): the same results, in graphs onnxruntime loads."""
    scatter_reduce, permute = torch.Tensor.scatter_reduce, torch.Tensor.permute

    def scatter_sum(self, dim, index, src, reduce, *, include_self=True):
        if reduce == "sum" and include_self:
            return self.scatter_add(dim, index, src)
        return scatter_reduce(self, dim, index, src, reduce, include_self=include_self)

    def permute_from_0(self, *dims):
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        return permute(self, *(d % self.dim() for d in dims))

    torch.Tensor.scatter_reduce, torch.Tensor.permute = scatter_sum, permute_from_0
    try:
        yield
    finally:
        torch.Tensor.scatter_reduce, torch.Tensor.permute = scatter_reduce, permute


def token_counts(model: torch.nn.Module) -> dict[str, list[int]]:
    """Tokens entering each block's attention and MLP, batch 1."""
    attn: list[int] = []
    mlp: list[int] = []
    hooks = [b.attn.register_forward_pre_hook(lambda m, a: attn.append(int(a[0].shape[1]))) for b in model.blocks]
    hooks += [b.mlp.register_forward_pre_hook(lambda m, a: mlp.append(int(a[0].shape[1]))) for b in model.blocks]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    return {"attn": attn, "mlp": mlp}


def parity(model: torch.nn.Module, path: Path) -> float:
    """Largest |onnxruntime - PyTorch| over the outputs of ``path`` on one random batch (refused above
    vitsearch's export tolerance, 1e-4 + 1e-4 x max|output|: the graph is not the model)."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    diff = float(np.abs(sess.run(None, {"input": x})[0] - ref).max())
    if diff > 1e-4 + 1e-4 * float(np.abs(ref).max()):
        raise SystemExit(f"{path.name}: onnxruntime differs from PyTorch by {diff:.3g}")
    return diff


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tome", type=Path, required=True, help="a checkout of facebookresearch/ToMe")
    ap.add_argument("--evit", type=Path, required=True, help="a checkout of youweiliang/evit")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()
    import timm

    args.out.mkdir(parents=True, exist_ok=True)
    record = {"timm": timm.__version__, "torch": torch.__version__, "models": {}}
    for name in ("dense", "tome-r8", "tome-r13", "evit-dense", "evit-0.7"):
        model = build(name, args.tome, args.evit).eval()
        record["models"][name] = {"tokens": token_counts(model), "files": {}}
        for batch in args.batches:
            path = args.out / f"{name}-b{batch}.onnx"
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), exportable():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (torch.randn(batch, 3, 224, 224),), str(path), dynamo=False,
                                  opset_version=OPSET, input_names=["input"], output_names=["output"],
                                  do_constant_folding=True)
            record["models"][name]["files"][batch] = str(path)
            record["models"][name].setdefault("onnx_max_abs_diff", {})[batch] = parity(model, path)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
