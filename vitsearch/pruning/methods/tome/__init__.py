"""ToMe (facebookresearch/ToMe): the algorithm (:mod:`.merge`) and its vitsearch adapter (:mod:`.method`)."""
from .method import ToMe

__all__ = ["ToMe"]
