"""``spvit``: SPViT soft token pruning with packaging (Kong et al., ECCV 2022), one folder: the algorithm as tensor
functions (:mod:`.algorithm`), the contract adapter (:mod:`.method`) and the latency component it charges
(:mod:`.latency`)."""
from .algorithm import (TRAIN_DRAWS, MultiHeadTokenSelector, draw_logodds, draw_topk, prune_hard, prune_soft,
                        prune_topk, rate_surrogate, select)
from .method import (SPViT, SPViTRecord, keep_ratio_loss, selection_noise, selector_groups, soft_block_tokens,
                     train_draw)

__all__ = ["SPViT", "SPViTRecord", "TRAIN_DRAWS", "MultiHeadTokenSelector", "draw_logodds", "draw_topk", "prune_hard",
           "prune_soft", "prune_topk", "rate_surrogate", "select", "keep_ratio_loss", "selection_noise",
           "selector_groups", "soft_block_tokens", "train_draw"]
