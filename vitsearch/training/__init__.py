"""Training pruned candidates: the computation-aware loss, brief per-candidate fine-tuning, weight sharing."""
from .brief import (SoftLatency, TrainResult, TrainSettings, accuracy, candidate_loss, fresh_model,
                    train_candidate, train_supernet)
from .losses import LossWeights, PiecewiseLinear, keep_ratio_loss, latency_loss, soft_block_tokens

__all__ = ["TrainSettings", "TrainResult", "SoftLatency", "train_candidate", "train_supernet", "candidate_loss",
           "fresh_model", "accuracy", "LossWeights", "PiecewiseLinear", "keep_ratio_loss", "latency_loss", "soft_block_tokens"]
