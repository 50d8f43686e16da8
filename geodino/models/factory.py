"""Building the encoder an architecture names: a timm ViT, a FusionViT, Panopticon or DOFA."""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geodino.models.backbones import build_backbone
from geodino.models.dofa import DOFA_ARCHS, DofaViT, build_dofa
from geodino.models.fusion import FusionViT
from geodino.models.panopticon import PANOPTICON_ARCHS, PanopticonViT, build_panopticon
from geodino.models.timm_adapter import TimmViTEncoder

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

#: The encoders geodino builds: ``nn.Module`` objects implementing
#: :class:`~geodino.models.encoder.Encoder` (for static typing, which has no intersection type).
EncoderModule = TimmViTEncoder | FusionViT | PanopticonViT | DofaViT


def create_encoder(
    model: str,
    in_chans: int,
    model_kwargs: Mapping[str, Any] | None = None,
    weights: "str | Path | WeightsEnum | None" = None,
    band_names: Sequence[str] | None = None,
) -> EncoderModule:
    """The encoder of an architecture: a timm ViT, a FusionViT, a Panopticon or a DOFA ViT.

    A :class:`~geodino.models.FusionViT` when the arguments name ``modalities``, a
    :class:`~geodino.models.PanopticonViT` when ``model`` is a Panopticon architecture
    (:data:`~geodino.models.panopticon.PANOPTICON_ARCHS`, any size through the timm
    arguments), a :class:`~geodino.models.DofaViT` for a DOFA architecture
    (:data:`~geodino.models.dofa.DOFA_ARCHS`), else a timm ViT
    (:func:`~geodino.models.build_backbone`).

    Args:
        model: timm architecture name (of the shared transformer, for a fusion model), or
            a Panopticon or DOFA architecture such as ``panopticon_vitb14`` or
            ``dofa_base_patch16_224``.
        in_chans: number of input bands (all modalities' bands stacked).
        model_kwargs: architecture arguments: ``timm.create_model`` ones, and for a fusion
            model ``modalities``, ``fusion`` and the other FusionViT arguments; for a
            Panopticon model ``sensors``, ``band_wavelengths``, ``band_ids``, ``attn_dim``,
            ``attn_heads`` (see
            :func:`~geodino.models.panopticon.build_panopticon`); for a DOFA model
            ``sensors``, ``band_wavelengths``, ``band_ids``, ``sar_wavelengths``
            (:func:`~geodino.models.dofa.build_dofa`).
        weights: initial weights (see :func:`~geodino.models.build_backbone`).
        band_names: names of the input bands, to adapt ``weights``.

    Returns:
        the encoder.
    """
    kwargs = dict(model_kwargs or {})
    if "modalities" in kwargs:
        return FusionViT(model, weights=weights, band_names=band_names, **kwargs)
    if model in PANOPTICON_ARCHS:
        return build_panopticon(model, in_chans, weights=weights, band_names=band_names, **kwargs)
    if model in DOFA_ARCHS:
        return build_dofa(model, in_chans, weights=weights, band_names=band_names, **kwargs)
    return build_backbone(model, in_chans, weights=weights, band_names=band_names, **kwargs)
