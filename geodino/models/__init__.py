"""Backbones and heads."""

from geodino.models.backbones import build_backbone, forward_tokens, patch_size, split_tokens
from geodino.models.fusion import FusionViT
from geodino.models.heads import DINOHead

__all__ = [
    "DINOHead",
    "FusionViT",
    "build_backbone",
    "forward_tokens",
    "patch_size",
    "split_tokens",
]
