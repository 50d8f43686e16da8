"""Encoders (timm ViTs and the multimodal FusionViT) and heads."""

from geodino.models.backbones import build_backbone, forward_tokens, patch_size, split_tokens
from geodino.models.encoder import Encoder, EncoderArchitecture, PackedEncoder
from geodino.models.factory import EncoderModule, create_encoder
from geodino.models.fusion import FusionViT
from geodino.models.heads import DINOHead
from geodino.models.timm_adapter import TimmViTEncoder, as_encoder

__all__ = [
    "DINOHead",
    "Encoder",
    "EncoderArchitecture",
    "EncoderModule",
    "FusionViT",
    "PackedEncoder",
    "TimmViTEncoder",
    "as_encoder",
    "build_backbone",
    "create_encoder",
    "forward_tokens",
    "patch_size",
    "split_tokens",
]
