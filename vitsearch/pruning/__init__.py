"""Token pruning methods that patch a stock timm ViT in place: SPViT soft pruning and Evo-ViT slow-fast."""
from .attention import PrunableAttention, softmax_with_policy
from .patch import PrunedViTMixin, apply, prune_state
from .spvit import MultiHeadTokenSelector
from .state import PruneState

__all__ = ["apply", "prune_state", "PruneState", "PrunedViTMixin", "PrunableAttention", "MultiHeadTokenSelector",
           "softmax_with_policy"]
