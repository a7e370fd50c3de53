"""``evovit``: Evo-ViT slow-fast token evolution (Xu et al., AAAI 2022), one folder: the algorithm as tensor
functions (:mod:`.algorithm`), the contract adapter (:mod:`.method`) and the latency components it charges
(:mod:`.latency`)."""
from .algorithm import (ALPHA_AFTER, ALPHA_BEFORE, EvoStage, after_block, class_attention_score, enter, enter_stage,
                        leave, leave_stage, scored_block, slow_step, slow_tokens)
from .method import EvoViTRecord, EvoViT

__all__ = ["EvoViT", "EvoViTRecord", "EvoStage", "ALPHA_BEFORE", "ALPHA_AFTER", "class_attention_score", "enter_stage",
           "leave_stage", "slow_tokens", "after_block", "scored_block", "enter", "leave", "slow_step"]
