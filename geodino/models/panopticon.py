"""Panopticon: a DINOv2 ViT whose patch embedding attends over bands identified by wavelength.

TorchGeo's :class:`torchgeo.models.PanopticonPE` embeds each band's patches on its own, adds an
embedding of the band's identity (its centre wavelength in nm, or a negative id for a SAR
polarisation: :func:`geodino.bands.band_identities`) and reduces any number of bands to one
token per patch by cross-attention from a learned query. :class:`PanopticonViT` puts it in
front of a timm DINOv2 ViT exactly as :class:`torchgeo.models.Panopticon` does (same modules,
same state-dict keys), so one backbone takes Sentinel-2, Sentinel-1, Landsat or an 8-band
commercial scene, or any subset of their bands, and its weights load into TorchGeo's class.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor
from torchgeo.models.panopticon import PanopticonPE

from geodino.bands import SAME_BAND_NM
from geodino.models.channel_attention import channel_attention_tokens
from geodino.models.spectral_vit import (
    SpectralEncoder,
    SpectralViT,
    create_trunk,
    default_band_ids,
    load_spectral_weights,
)

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

#: Architectures of TorchGeo's Panopticon: name -> (timm trunk, channel-attention width,
#: channel-attention heads), as :class:`torchgeo.models.Panopticon` builds them.
PANOPTICON_ARCHS: dict[str, tuple[str, int, int]] = {
    "panopticon_vitb14": ("vit_base_patch14_dinov2", 2304, 16),
}


class PanopticonViT(SpectralViT):
    """A timm DINOv2 ViT with TorchGeo's Panopticon patch embedding.

    Built by :func:`build_panopticon`: each band's patches are embedded on their own with an
    embedding of the band's identity, and a cross-attention from a learned query reduces the
    bands to one token per patch (TorchGeo's :class:`~torchgeo.models.PanopticonPE`).
    """

    @property
    def patch_size(self) -> int:
        """Side of a patch in pixels."""
        return int(cast(PanopticonPE, self.patch_embed).patch_size[0])

    @property
    def stored_grid(self) -> tuple[int, int]:
        """Patch grid of the stored position embedding."""
        grid = cast(PanopticonPE, self.patch_embed).grid_size
        return int(grid[0]), int(grid[1])

    def patch_tokens(self, images: Tensor, band_ids: Tensor, band_mask: Tensor | None) -> Tensor:
        """Patch tokens: the bands of each patch attended over by the channel attention.

        TorchGeo's :class:`~torchgeo.models.PanopticonPE` forward, computed without a token
        per band (:func:`~geodino.models.channel_attention.channel_attention_tokens`).

        Args:
            images: (B, C, H, W).
            band_ids: (B, C) identities; TorchGeo floors optical ids in place.
            band_mask: (B, C) bool, True for bands left out of the attention.

        Returns:
            (B, h * w, D).
        """
        return channel_attention_tokens(
            cast(PanopticonPE, self.patch_embed), images, band_ids, band_mask
        )


def spectral_positions(identities: Sequence[float]) -> list[list[float]]:
    """The distinct spectral positions of some bands, in increasing order.

    Optical identities closer than :data:`geodino.bands.SAME_BAND_NM` to the first of their
    run are one position, so that a band two sensors share takes one head of the channel
    attention, not two; each SAR identity is a position.

    Args:
        identities: band identities (nm, or negative SAR ids).

    Returns:
        the positions, each the list of identities it holds.
    """
    positions: list[list[float]] = []
    for identity in sorted(set(identities)):
        first = positions[-1][0] if positions else -1.0
        if first > 0 and identity - first < SAME_BAND_NM:
            positions[-1].append(identity)
        else:
            positions.append([identity])
    return positions


def head_targets(identities: Sequence[float], heads: int) -> list[list[float]]:
    """The spectral positions the channel attention's heads start on, spread evenly.

    Args:
        identities: the default bands' identities (nm, or negative SAR ids).
        heads: number of heads.

    Returns:
        for each head, the identities of its position (:func:`spectral_positions`), in
        increasing order, repeated where there are fewer positions than heads.
    """
    positions = spectral_positions(identities)
    last = len(positions) - 1
    return [positions[round(h * last / max(heads - 1, 1))] for h in range(heads)]


def init_channel_attention(
    patch_embed: PanopticonPE,
    query_std: float = 1.0,
    sar_std: float = 0.0,
    conv_scale: float = 1.0,
    spread_over: Sequence[float] | None = None,
    target_logit: float = 24.0,
) -> None:
    """Re-draw the channel attention's query, the SAR embeddings and the band projection.

    TorchGeo draws the query from N(0, 1) and zeroes the SAR embeddings. From scratch that
    leaves the attention over bands nearly uniform (its logits have a std of ~0.5 at any
    width), so every patch token starts as the projection of the *mean* of its bands and
    VV cannot be told from VH by identity; a larger query makes each head attend to bands
    of its own from the first step. A smaller band projection lets the band identities, not
    the pixels, decide which bands a head takes.

    Args:
        patch_embed: the Panopticon patch embedding.
        query_std: std of the query (TorchGeo: 1.0).
        sar_std: std of the transmit, receive and orbit embeddings of SAR bands (TorchGeo:
            0, all polarisations alike).
        conv_scale: factor on TorchGeo's initial weights of the per-band patch projection.
        spread_over: band identities to spread the heads over: head h's query points at
            the key of the h-th of their spectral positions in evenly spaced order
            (:func:`head_targets`); None draws the query at random.
        target_logit: with ``spread_over``, the attention logit of each head's own band (0
            on the other default bands):
            the same sharpness at any width (a query of fixed norm gives logits that grow
            with the width: ~17 at 96 wide, ~75 at ViT-B's 2304, where the softmax is
            saturated and the query learns nothing).
    """
    chnfus = patch_embed.chnfus
    with torch.no_grad():
        chnfus.query.normal_(0.0, query_std)
        embedding = chnfus.chnemb
        for table in (embedding.embed_transmit, embedding.embed_receive, embedding.embed_orbit):
            if sar_std > 0:
                table.normal_(0.0, sar_std)
            else:
                table.zero_()
        patch_embed.conv3d.conv3d.weight.mul_(conv_scale)
        if spread_over:
            _aim_heads(patch_embed, spread_over, target_logit)


def _aim_heads(patch_embed: PanopticonPE, identities: Sequence[float], logit: float) -> None:
    """Give each head of the channel attention ``logit`` on its position's bands, 0 on others.

    Pointing a head's query at its band's key is not enough with narrow heads (6 dimensions
    at 96 wide with 16 heads): another band's key can project further on the query and take
    the head. So the key projection of each head is corrected, by a rank-one update along its
    query, to give exactly the wanted logits on the identity embeddings of every default band.
    """
    chnfus = patch_embed.chnfus
    attention = chnfus.xattn
    heads = int(attention.num_heads)
    ids = sorted(set(identities))
    embeddings = chnfus.chnemb(torch.tensor([ids]))[0]  # (N, D); floors optical ids in place
    weight = attention.inproj_k.weight.view(heads, -1, embeddings.shape[-1])  # (H, d, D)
    queries = []
    for head, position in enumerate(head_targets(identities, heads)):
        wanted = torch.tensor([logit if i in position else 0.0 for i in ids])
        # the smallest key direction that gives the wanted logits on every default band
        direction = torch.linalg.lstsq(embeddings, wanted[:, None], driver="gelsd").solution[:, 0]
        rows = weight[head]
        key = rows @ embeddings[ids.index(position[0])]
        query = key * logit / (key.square().sum() * attention.scale)
        scaled = query * attention.scale
        rows += torch.outer(scaled, direction - rows.T @ scaled) / scaled.square().sum()
        queries.append(query)
    chnfus.query.copy_(torch.cat(queries).reshape(1, 1, -1))


def build_panopticon(
    model: str = "panopticon_vitb14",
    in_chans: int | None = None,
    weights: "str | Path | WeightsEnum | None" = None,
    band_names: Sequence[str] | None = None,
    band_ids: Sequence[float] | None = None,
    sensors: str | Sequence[str] | None = None,
    band_wavelengths: Mapping[str, float] | None = None,
    attn_dim: int | None = None,
    attn_heads: int | None = None,
    img_size: int = 224,
    channel_query_std: float = 16.0,
    sar_embedding_std: float = 0.5,
    band_conv_scale: float = 0.05,
    channel_query_logit: float | None = 24.0,
    **timm_kwargs: Any,
) -> PanopticonViT:
    """A Panopticon backbone, as :class:`torchgeo.models.Panopticon` builds it, at any size.

    Args:
        model: a key of :data:`PANOPTICON_ARCHS`, or a timm DINOv2 ViT name to put the
            Panopticon patch embedding in front of.
        in_chans: number of default bands (checked against ``band_ids``; any band count
            can be given to :meth:`PanopticonViT.forward_spectral`).
        weights: Panopticon weights (e.g. ``Panopticon_Weights.VIT_BASE14``, found in the
            local torch hub cache, never downloaded) or a file of a ``geodino export``.
        band_names: names of the default bands.
        band_ids: their identities; default: looked up by name in the tables of
            ``sensors`` and in ``band_wavelengths`` (:func:`geodino.bands.band_identities`).
        sensors: sensors whose tables name the default bands, in order of preference.
        band_wavelengths: more ``{band name: wavelength in nm}``.
        attn_dim: width of the channel attention (default: the architecture's, else 3 x
            the embedding width, as Panopticon's 2304 for 768).
        attn_heads: heads of the channel attention (default: the architecture's, else 4).
        img_size: image size of the stored position grid.
        channel_query_std: std of the channel attention's query when it is drawn at random
            (``channel_query_logit`` None, or no default bands; TorchGeo's 1.0 starts nearly
            uniform over bands).
        sar_embedding_std: std of the SAR polarisations' embeddings at initialisation
            (TorchGeo's 0 starts VV and VH alike).
        band_conv_scale: factor on the initial weights of the per-band patch projection
            (TorchGeo's: 1); smaller lets the band identities, not the pixels, decide which
            bands each head of the channel attention takes.
        channel_query_logit: start each head of the channel attention on its own band
            among the default bands, spread evenly over their identities, with this logit
            (:func:`init_channel_attention`); None draws the query at random.
        **timm_kwargs: more ``timm.create_model`` arguments (embed_dim, depth, num_heads...).

    Returns:
        the encoder.

    Raises:
        ConfigError: for a timm name that is no ViT, or default bands that do not agree.
        WeightsError: if the weights do not fit.
    """
    trunk, default_attn, default_heads = PANOPTICON_ARCHS.get(model, (model, 0, 4))
    ids = default_band_ids(in_chans, band_names, band_ids, sensors, band_wavelengths)
    vit = create_trunk(trunk, img_size, list(PANOPTICON_ARCHS), **timm_kwargs)
    dim = int(vit.embed_dim)
    width = attn_dim or default_attn or 3 * dim
    patch = vit.patch_embed.patch_size
    vit.patch_embed = PanopticonPE(
        attn_dim=width,
        embed_dim=dim,
        patch_size=int(patch[0]),
        img_size=img_size,
        chnfus_cfg={"attn_cfg": {"num_heads": attn_heads or default_heads}},
    )
    init_channel_attention(
        vit.patch_embed,
        channel_query_std,
        sar_embedding_std,
        band_conv_scale,
        ids if channel_query_logit is not None else None,
        channel_query_logit or 0.0,
    )
    encoder = cast(PanopticonViT, PanopticonViT.adopt(vit, band_names))
    encoder.band_ids = ids
    encoder.in_chans = len(ids or ())
    if weights is not None:
        load_spectral_weights(encoder, weights)
    return encoder


__all__ = [
    "PANOPTICON_ARCHS",
    "PanopticonViT",
    "SpectralEncoder",
    "build_panopticon",
    "head_targets",
    "init_channel_attention",
    "spectral_positions",
]
