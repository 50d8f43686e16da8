"""DOFA: a ViT whose patch-embedding weights are generated from each band's wavelength.

TorchGeo's :class:`torchgeo.models.dofa.DOFAEmbedding` turns each band's wavelength into the
weights of a patch projection (a small transformer over the wavelengths of the bands present
generates one kernel per band) and sums the projections of all bands, so every patch token
is a linear spectral-spatial projection of all its bands, as a fixed-band ViT's is, for any
set of bands. :class:`DofaViT` puts it in front of a timm ViT with the blocks, norms and
state-dict keys of :class:`torchgeo.models.DOFA`, so an export loads into TorchGeo's class.
"""

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor
from torchgeo.models.dofa import DOFAEmbedding

from geodino.bands import SAR_POLARISATIONS
from geodino.errors import ConfigError, DataError
from geodino.models.spectral_vit import (
    SpectralViT,
    create_trunk,
    default_band_ids,
    load_spectral_weights,
)

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

#: TorchGeo's DOFA architectures: name -> the timm ViT of the same blocks and widths.
DOFA_ARCHS: dict[str, str] = {
    "dofa_small_patch16_224": "vit_small_patch16_224",
    "dofa_base_patch16_224": "vit_base_patch16_224",
    "dofa_large_patch16_224": "vit_large_patch16_224",
    "dofa_huge_patch14_224": "vit_huge_patch14_224",
}

#: Wavelengths in µm that DOFA is given for SAR polarisations. DOFA's published weights saw
#: 3.75 for both VV and VH (a placeholder, not a physical wavelength); a generated kernel is a
#: function of the wavelength alone, so two polarisations at one value would be summed into
#: one band. geodino keeps VV at DOFA's 3.75 and gives the others values of their own.
DOFA_SAR_WAVELENGTHS: dict[str, float] = {"VV": 3.75, "VH": 3.85, "HH": 3.95, "HV": 4.05}


class DofaViT(SpectralViT):
    """A timm ViT with TorchGeo's DOFA patch embedding.

    Built by :func:`build_dofa`. Band identities are geodino's (nm, or SAR ids); the patch
    embedding is given DOFA's wavelengths in µm (SAR: :data:`DOFA_SAR_WAVELENGTHS`). A band
    hidden by a band mask contributes nothing to its sample's tokens, as if it were absent.
    """

    sar_wavelengths: tuple[float, ...]

    @property
    def patch_size(self) -> int:
        """Side of a patch in pixels."""
        return int(cast(DOFAEmbedding, self.patch_embed).kernel_size)

    @property
    def stored_grid(self) -> tuple[int, int]:
        """Patch grid of the stored position embedding."""
        if self.pos_embed is None:
            raise ConfigError("a DOFA backbone needs a position embedding (timm's default).")
        side = math.isqrt(int(self.pos_embed.shape[1]) - (0 if self.no_embed_class else 1))
        return side, side

    def dofa_wavelengths(self, band_ids: Tensor) -> Tensor:
        """DOFA's wavelengths (µm) of bands with geodino's identities.

        Args:
            band_ids: (C,) identities: nm, or SAR ids (-1 VV, -2 VH, -3 HH, -4 HV).

        Returns:
            (C,) wavelengths in µm.

        Raises:
            DataError: for an identity that is neither.
        """
        sar = torch.tensor(self.sar_wavelengths, dtype=band_ids.dtype, device=band_ids.device)
        index = (-band_ids - 1).round().long()
        unknown = (band_ids <= 0) & ((index < 0) | (index >= len(sar)))
        if unknown.any():
            raise DataError(
                f"band identities {band_ids[unknown].tolist()} are neither wavelengths in nm "
                f"nor SAR ids {sorted(SAR_POLARISATIONS.values())}; name the bands after a "
                "sensor's table or give their wavelengths (band_wavelengths)."
            )
        return torch.where(band_ids > 0, band_ids / 1000.0, sar[index.clamp(0, len(sar) - 1)])

    def patch_tokens(self, images: Tensor, band_ids: Tensor, band_mask: Tensor | None) -> Tensor:
        """Patch tokens: the sum of each band's projection by its generated kernel.

        Kernels are generated from the wavelengths of all bands given, once per distinct row
        of ``band_ids``; hidden bands are zeroed (their projection is left out).

        Args:
            images: (B, C, H, W).
            band_ids: (B, C) identities.
            band_mask: (B, C) bool, True for hidden bands.

        Returns:
            (B, h * w, D).
        """
        if band_mask is not None:
            images = images.masked_fill(band_mask[:, :, None, None], 0.0)
        embed = cast(DOFAEmbedding, self.patch_embed)
        if bool((band_ids == band_ids[:1]).all()):
            tokens: Tensor = embed(images, self.dofa_wavelengths(band_ids[0]))[0]
            return tokens
        rows, inverse = torch.unique(band_ids, dim=0, return_inverse=True)
        parts = [
            (inverse == i, embed(images[inverse == i], self.dofa_wavelengths(row))[0])
            for i, row in enumerate(rows)
        ]
        out: Tensor = parts[0][1].new_empty(images.shape[0], *parts[0][1].shape[1:])
        for where, part in parts:
            out[where] = part
        return out


def build_dofa(
    model: str = "dofa_base_patch16_224",
    in_chans: int | None = None,
    weights: "str | Path | WeightsEnum | None" = None,
    band_names: Sequence[str] | None = None,
    band_ids: Sequence[float] | None = None,
    sensors: str | Sequence[str] | None = None,
    band_wavelengths: Mapping[str, float] | None = None,
    sar_wavelengths: Mapping[str, float] | None = None,
    img_size: int = 224,
    **timm_kwargs: Any,
) -> DofaViT:
    """A DOFA backbone, with the blocks of :class:`torchgeo.models.DOFA`, at any size.

    Args:
        model: a key of :data:`DOFA_ARCHS`, or a timm ViT name to put the DOFA patch
            embedding in front of.
        in_chans: number of default bands (checked against ``band_ids``).
        weights: DOFA weights (e.g. ``DOFABase16_Weights.DOFA_MAE``, found in the local
            torch hub cache, never downloaded) or a file of a ``geodino export``.
        band_names: names of the default bands.
        band_ids: their identities; default: looked up by name in the tables of
            ``sensors`` and in ``band_wavelengths``.
        sensors: sensors whose tables name the default bands, in order of preference.
        band_wavelengths: more ``{band name: wavelength in nm}``.
        sar_wavelengths: DOFA's wavelength in µm of each SAR polarisation (default
            :data:`DOFA_SAR_WAVELENGTHS`).
        img_size: image size of the stored position grid.
        **timm_kwargs: more ``timm.create_model`` arguments (embed_dim, depth, num_heads,
            patch_size...); TorchGeo's DOFA has no LayerScale (``init_values``) and no
            registers.

    Returns:
        the encoder.

    Raises:
        ConfigError: for a timm name that is no ViT, default bands that do not agree, or an
            unknown polarisation.
    """
    trunk = DOFA_ARCHS.get(model, model)
    ids = default_band_ids(in_chans, band_names, band_ids, sensors, band_wavelengths)
    sar = {**DOFA_SAR_WAVELENGTHS, **{k.upper(): v for k, v in (sar_wavelengths or {}).items()}}
    if set(sar) != set(SAR_POLARISATIONS):
        raise ConfigError(
            f"sar_wavelengths names {sorted(set(sar) - set(SAR_POLARISATIONS))}, which are not "
            f"polarisations; give wavelengths for {sorted(SAR_POLARISATIONS)}."
        )
    vit = create_trunk(trunk, img_size, list(DOFA_ARCHS), **timm_kwargs)
    patch = int(vit.patch_embed.patch_size[0])
    vit.patch_embed = DOFAEmbedding(
        dynamic_embed_dim=128, kernel_size=patch, embed_dim=int(vit.embed_dim)
    )
    encoder = cast(DofaViT, DofaViT.adopt(vit, band_names))
    encoder.band_ids = ids
    encoder.in_chans = len(ids or ())
    order = sorted(SAR_POLARISATIONS, key=lambda name: -SAR_POLARISATIONS[name])
    encoder.sar_wavelengths = tuple(float(sar[name]) for name in order)
    if weights is not None:
        _load_weights(encoder, weights)
    return encoder


def _load_weights(encoder: DofaViT, weights: "str | Path | WeightsEnum") -> None:
    """Load DOFA weights or a geodino export of a DOFA backbone.

    DOFA's published (MAE) weights hold no final norm: TorchGeo builds ``fc_norm`` afresh, and
    the backbone keeps its freshly initialised ``norm``. A classifier head is left out.
    """
    from geodino.models.backbones import load_weights_file

    state, path, _ = load_weights_file(weights)
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm."))}
    if "norm.weight" not in state and "blocks.0.norm1.weight" in state:
        own = encoder.state_dict()
        state |= {"norm.weight": own["norm.weight"], "norm.bias": own["norm.bias"]}
    load_spectral_weights(encoder, path, state)


__all__ = ["DOFA_ARCHS", "DOFA_SAR_WAVELENGTHS", "DofaViT", "build_dofa"]
