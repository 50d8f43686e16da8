"""Building the encoder an architecture names: a timm ViT, or a FusionViT over modalities."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geodino.models.backbones import build_backbone
from geodino.models.fusion import FusionViT
from geodino.models.timm_adapter import TimmViTEncoder

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

#: The encoders geodino builds: ``nn.Module`` objects implementing
#: :class:`~geodino.models.encoder.Encoder` (for static typing, which has no intersection type).
EncoderModule = TimmViTEncoder | FusionViT


def create_encoder(
    model: str,
    in_chans: int,
    model_kwargs: Mapping[str, Any] | None = None,
    weights: "str | Path | WeightsEnum | None" = None,
    band_names: Sequence[str] | None = None,
) -> EncoderModule:
    """The encoder of an architecture, a timm ViT or a FusionViT.

    A :class:`~geodino.models.FusionViT` when the arguments name ``modalities``, else a timm
    ViT (:func:`~geodino.models.build_backbone`).

    Args:
        model: timm architecture name (of the shared transformer, for a fusion model).
        in_chans: number of input bands (all modalities' bands stacked).
        model_kwargs: architecture arguments: ``timm.create_model`` ones, and for a fusion
            model ``modalities``, ``fusion`` and the other FusionViT arguments.
        weights: initial weights (see :func:`~geodino.models.build_backbone`).
        band_names: names of the input bands, to adapt ``weights``.

    Returns:
        the encoder.
    """
    kwargs = dict(model_kwargs or {})
    if "modalities" in kwargs:
        return FusionViT(model, weights=weights, band_names=band_names, **kwargs)
    return build_backbone(model, in_chans, weights=weights, band_names=band_names, **kwargs)
