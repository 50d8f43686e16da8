"""Segmentation models on timm ViT encoders: UPerNet-style multi-level and linear heads."""

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from torch import Tensor, nn

from geodino.errors import ConfigError
from geodino.models.encoder import Encoder


def default_layers(depth: int, decoder: Literal["upernet", "linear"]) -> list[int]:
    """Blocks whose outputs a decoder reads by default.

    Args:
        depth: number of blocks of the encoder.
        decoder: ``upernet`` (four blocks spread over the depth, as ViT UPerNets do) or
            ``linear`` (the last block, as DINOv2's linear segmentation probe).

    Returns:
        block indices, shallow to deep.
    """
    if decoder == "linear":
        return [depth - 1]
    return [max(round((i + 1) * depth / 4) - 1, 0) for i in range(4)]


class FeaturePyramid(nn.Module):
    """Four same-resolution ViT feature maps turned into strides 4, 8, 16, 32 of a patch grid.

    As in ViTDet and the BEiT/DINOv2 UPerNets: two transposed convolutions (x4), one (x2),
    identity and max-pooling (/2), so the first level has a quarter of the patch size.

    Args:
        dim: width of the encoder's tokens.
    """

    def __init__(self, dim: int) -> None:
        """Build the four rescaling branches."""
        super().__init__()
        self.levels = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(dim, dim, 2, stride=2),
                    nn.BatchNorm2d(dim),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim, dim, 2, stride=2),
                ),
                nn.ConvTranspose2d(dim, dim, 2, stride=2),
                nn.Identity(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
        )

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Rescale each level.

        Args:
            features: four (B, D, h, w) maps.

        Returns:
            (B, D, 4h, 4w), (B, D, 2h, 2w), (B, D, h, w), (B, D, h/2, w/2).
        """
        return [level(x) for level, x in zip(self.levels, features, strict=True)]


class UPerNetViTDecoder(nn.Module):
    """UPerNet (pyramid pooling + FPN, segmentation_models_pytorch's) on four ViT levels.

    Args:
        dim: width of the encoder's tokens.
        channels: width of the decoder.
    """

    def __init__(self, dim: int, channels: int = 256) -> None:
        """Build the feature pyramid and the UPerNet body."""
        super().__init__()
        self.pyramid = FeaturePyramid(dim)
        # smp's decoder skips the first two (stride 1 and 2) entries of an encoder's features
        self.upernet = UPerNetDecoder([0, 0, dim, dim, dim, dim], 5, channels)
        self.out_channels = channels

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Fuse the levels.

        Args:
            features: four (B, D, h, w) maps, shallow to deep.

        Returns:
            (B, channels, 4h, 4w) fused features.
        """
        levels = self.pyramid(features)
        out: Tensor = self.upernet([levels[0], levels[0], *levels])
        return out


class LinearDecoder(nn.Module):
    """DINOv2's linear segmentation probe: the chosen levels concatenated and batch-normed.

    Args:
        dim: width of the encoder's tokens.
        levels: number of levels concatenated.
    """

    def __init__(self, dim: int, levels: int = 1) -> None:
        """Build the batch norm."""
        super().__init__()
        self.out_channels = dim * levels
        self.norm = nn.BatchNorm2d(self.out_channels)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Concatenate and normalise.

        Args:
            features: (B, D, h, w) maps.

        Returns:
            (B, levels * D, h, w).
        """
        out: Tensor = self.norm(torch.cat(list(features), dim=1))
        return out


class ViTSegmentationModel(nn.Module):
    """A timm ViT encoder, a decoder over several of its blocks and a 1x1 classifier.

    Attribute names follow segmentation_models_pytorch (``encoder``, ``decoder``,
    ``segmentation_head``) so TorchGeo's freezing options apply unchanged.

    Args:
        encoder: the encoder (built with dynamic image size), an ``nn.Module`` implementing
            :class:`~geodino.models.encoder.Encoder`: a timm ViT or a multimodal
            :class:`~geodino.models.FusionViT` (stacked modality bands in).
        decoder: ``upernet`` or ``linear``.
        num_classes: output channels.
        layers: blocks whose (final-norm) outputs the decoder reads; None: the decoder's
            default (see :func:`default_layers`).
        decoder_channels: width of the UPerNet decoder.

    Raises:
        ConfigError: if the layers do not fit the encoder or the decoder.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: Literal["upernet", "linear"] = "upernet",
        num_classes: int = 2,
        layers: Sequence[int] | None = None,
        decoder_channels: int = 256,
    ) -> None:
        """Build the decoder and the classifier."""
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise ConfigError(f"the encoder must be an nn.Module, got {type(encoder).__name__}.")
        depth = encoder.depth
        layers = list(layers) if layers is not None else default_layers(depth, decoder)
        if any(not -depth <= i < depth for i in layers) or not layers:
            raise ConfigError(
                f"layers {layers} do not fit an encoder of {depth} blocks; give indices in "
                f"0..{depth - 1}."
            )
        self.layers = [i % depth for i in layers]
        self.encoder = encoder
        self.patch_size = encoder.patch_size
        dim = int(encoder.embed_dim)
        if decoder == "upernet":
            if len(self.layers) != 4:
                raise ConfigError(
                    f"the upernet decoder reads 4 blocks but layers is {layers}; give four "
                    "block indices (e.g. [2, 5, 8, 11]) or leave layers unset."
                )
            self.decoder: nn.Module = UPerNetViTDecoder(dim, decoder_channels)
        elif decoder == "linear":
            self.decoder = LinearDecoder(dim, len(self.layers))
        else:
            raise ConfigError(f"decoder must be 'upernet' or 'linear', got {decoder!r}.")
        self.segmentation_head = nn.Conv2d(self.decoder.out_channels, num_classes, 1)

    def features(self, images: Tensor) -> list[Tensor]:
        """Final-norm outputs of the chosen blocks as patch-grid maps.

        Args:
            images: (B, C, H, W), H and W multiples of the patch size.

        Returns:
            one (B, D, H / patch, W / patch) map per entry of ``layers``.

        Raises:
            ConfigError: if the image size is not a multiple of the patch size.
        """
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ConfigError(
                f"chips of {height}x{width} px do not divide into {self.patch_size}-px patches; "
                f"use a chip size that is a multiple of {self.patch_size} (e.g. "
                f"{self.patch_size * 8})."
            )
        unique = sorted(set(self.layers))
        maps = self.encoder.block_maps(images, unique)
        by_block = dict(zip(unique, maps, strict=True))
        return [by_block[i] for i in self.layers]

    def forward(self, images: Tensor) -> Tensor:
        """Class scores per pixel.

        Args:
            images: (B, C, H, W).

        Returns:
            (B, num_classes, H, W) logits.
        """
        logits = self.segmentation_head(self.decoder(self.features(images)))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
