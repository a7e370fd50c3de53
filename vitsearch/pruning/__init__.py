"""Token pruning methods that patch a stock timm ViT in place, one folder each behind one contract
(:mod:`.methods`, whose registry lists them), and the config and token schedule every consumer reads
(:mod:`.config`)."""
from .attention import PrunableAttention, softmax_with_policy
from .config import PruneConfig, canonical_key, token_schedule
from .methods import METHODS, PruningMethod, method_of, pruning_methods
from .patch import PrunedViTMixin, apply, prune_state
from .schedule import SelectorStep, TokenSchedule, kept_tokens
from .state import PruneState

__all__ = ["apply", "prune_state", "PruneState", "PrunedViTMixin", "PrunableAttention",
           "softmax_with_policy", "PruneConfig", "token_schedule", "TokenSchedule", "SelectorStep", "kept_tokens",
           "canonical_key",
           "METHODS", "PruningMethod", "method_of", "pruning_methods"]
