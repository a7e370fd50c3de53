"""Training pruned candidates on one floor (:mod:`.loop`: seeded RNG, batches, learning-rate curve, step loop,
accuracy): the computation-aware loss (:mod:`.losses`), brief per-candidate fine-tuning and weight sharing
(:mod:`.brief`), where training runs and in which precision (:mod:`.device`), the progressive schedules finalize
trains the chosen config with (:mod:`.progressive`), and SPViT's keep rates learned under a budget (:mod:`.learned`,
``search --learned``). What each training is told lives in :mod:`.settings`, free of torch.

The names below are imported from their submodule on first use (PEP 562), so reading the settings (the CLI's
defaults) does not import torch.
"""
from __future__ import annotations

from ..lazy import lazy_names

_SUBMODULE = {
    **dict.fromkeys(("SoftLatency", "TrainResult", "candidate_loss", "fresh_model", "param_groups", "train_candidate",
                     "train_supernet"), ".brief"),
    **dict.fromkeys(("CPU", "TRAIN_DEVICES", "LossScaler", "Precision", "resolve_train_device"), ".device"),
    **dict.fromkeys(("TrainingDiverged", "accuracy", "batches", "lr_factor", "next_batch", "seeded", "set_lr",
                     "train_steps"), ".loop"),
    **dict.fromkeys(("keep_ratio_loss", "soft_block_tokens"), "..pruning.methods.spvit"),
    **dict.fromkeys(("PiecewiseLinear", "latency_loss"), ".losses"),
    **dict.fromkeys(("LossWeights", "TrainSettings"), ".settings"),
}

__all__ = sorted(_SUBMODULE)

__getattr__, __dir__ = lazy_names(__name__, _SUBMODULE)
