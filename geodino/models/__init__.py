"""Encoders (timm ViTs, the multimodal FusionViT, wavelength-aware Panopticon and DOFA), heads."""

from geodino.models.backbones import build_backbone, forward_tokens, patch_size, split_tokens
from geodino.models.dofa import DofaViT, build_dofa
from geodino.models.encoder import Encoder, EncoderArchitecture, PackedEncoder
from geodino.models.factory import EncoderModule, create_encoder
from geodino.models.fusion import FusionViT
from geodino.models.heads import DINOHead
from geodino.models.panopticon import PanopticonViT, build_panopticon
from geodino.models.spectral_vit import SpectralEncoder, SpectralViT
from geodino.models.timm_adapter import TimmViTEncoder, as_encoder

__all__ = [
    "DINOHead",
    "DofaViT",
    "Encoder",
    "EncoderArchitecture",
    "EncoderModule",
    "FusionViT",
    "PackedEncoder",
    "PanopticonViT",
    "SpectralEncoder",
    "SpectralViT",
    "TimmViTEncoder",
    "as_encoder",
    "build_backbone",
    "build_dofa",
    "build_panopticon",
    "create_encoder",
    "forward_tokens",
    "patch_size",
    "split_tokens",
]
