"""EViT (youweiliang/evit): the algorithm (:mod:`.fuse`) and its vitsearch adapter (:mod:`.method`)."""
from .method import EViT

__all__ = ["EViT"]
