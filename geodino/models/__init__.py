"""Encoders (timm ViTs, the multimodal FusionViT, the wavelength-aware Panopticon) and heads."""

from geodino.models.backbones import build_backbone, forward_tokens, patch_size, split_tokens
from geodino.models.encoder import Encoder, EncoderArchitecture, PackedEncoder
from geodino.models.factory import EncoderModule, create_encoder
from geodino.models.fusion import FusionViT
from geodino.models.heads import DINOHead
from geodino.models.panopticon import PanopticonViT, SpectralEncoder, build_panopticon
from geodino.models.timm_adapter import TimmViTEncoder, as_encoder

__all__ = [
    "DINOHead",
    "Encoder",
    "EncoderArchitecture",
    "EncoderModule",
    "FusionViT",
    "PackedEncoder",
    "PanopticonViT",
    "SpectralEncoder",
    "TimmViTEncoder",
    "as_encoder",
    "build_backbone",
    "build_panopticon",
    "create_encoder",
    "forward_tokens",
    "patch_size",
    "split_tokens",
]
