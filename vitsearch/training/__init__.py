"""Training pruned candidates on one floor (:mod:`.loop`: seeded RNG, batches, learning-rate curve, step loop,
accuracy): the computation-aware loss (:mod:`.losses`), brief per-candidate fine-tuning and weight sharing
(:mod:`.brief`), where training runs and in which precision (:mod:`.device`), the progressive schedules finalize
trains the chosen config with (:mod:`.progressive`), and SPViT's keep rates learned under a budget (:mod:`.learned`,
``search --learned``)."""
from .brief import (SoftLatency, TrainResult, TrainSettings, candidate_loss, fresh_model, param_groups,
                    train_candidate, train_supernet)
from .device import CPU, TRAIN_DEVICES, LossScaler, Precision, resolve_train_device
from .loop import TrainingDiverged, accuracy, batches, lr_factor, next_batch, seeded, set_lr, train_steps
from ..pruning.methods.spvit import keep_ratio_loss, soft_block_tokens
from .losses import LossWeights, PiecewiseLinear, latency_loss

__all__ = ["CPU", "TRAIN_DEVICES", "LossScaler", "Precision", "resolve_train_device", "TrainSettings", "TrainResult", "SoftLatency", "train_candidate", "train_supernet", "candidate_loss",
           "fresh_model", "param_groups", "accuracy", "batches", "lr_factor", "next_batch", "seeded", "set_lr",
           "train_steps", "TrainingDiverged",
           "LossWeights", "PiecewiseLinear", "keep_ratio_loss", "latency_loss", "soft_block_tokens"]
