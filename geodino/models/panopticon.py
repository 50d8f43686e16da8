"""Panopticon: a DINOv2 ViT whose patch embedding attends over bands identified by wavelength.

TorchGeo's :class:`torchgeo.models.PanopticonPE` embeds each band's patches on its own, adds an
embedding of the band's identity (its centre wavelength in nm, or a negative id for a SAR
polarisation: :func:`geodino.bands.band_identities`) and reduces any number of bands to one
token per patch by cross-attention from a learned query. :class:`PanopticonViT` puts it in
front of a timm DINOv2 ViT exactly as :class:`torchgeo.models.Panopticon` does (same modules,
same state-dict keys), so one backbone takes Sentinel-2, Sentinel-1, Landsat or an 8-band
commercial scene, or any subset of their bands, and its weights load into TorchGeo's class.
"""

import copy
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import timm
import torch
from timm.layers.pos_embed import resample_abs_pos_embed
from timm.models import VisionTransformer
from torch import Tensor
from torchgeo.models.panopticon import PanopticonPE

from geodino.bands import band_identities
from geodino.errors import ConfigError, DataError, WeightsError
from geodino.models.encoder import Encoder, EncoderArchitecture, EncoderInput
from geodino.models.timm_adapter import TimmViTEncoder, check_masks, run_blocks

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

#: Architectures of TorchGeo's Panopticon: name -> (timm trunk, channel-attention width,
#: channel-attention heads), as :class:`torchgeo.models.Panopticon` builds them.
PANOPTICON_ARCHS: dict[str, tuple[str, int, int]] = {
    "panopticon_vitb14": ("vit_base_patch14_dinov2", 2304, 16),
}


@runtime_checkable
class SpectralEncoder(Encoder, Protocol):
    """An encoder told the identity of each input band, so it takes any set of bands."""

    @property
    def band_ids(self) -> tuple[float, ...] | None:
        """Identities of the default bands (those of ``band_names``), None when unset."""
        ...

    def forward_spectral(
        self,
        images: Tensor,
        band_ids: Tensor,
        band_mask: Tensor | None = None,
        masks: Tensor | None = None,
        mask_token: Tensor | None = None,
    ) -> Tensor:
        """Normalised tokens of images whose bands have the given identities.

        Args:
            images: (B, C, H, W).
            band_ids: (C,) or (B, C) identities (nm, or SAR ids) of the bands.
            band_mask: (B, C) bool, True for bands hidden from a sample; at least one band
                of every sample must stay.
            masks: (B, N) bool iBOT masks of the patch tokens.
            mask_token: (1, D) or (D,) learned token; required with ``masks``.

        Returns:
            (B, 1 + R + N, D) tokens after the final norm.
        """
        ...

    def select_bands(self, band_names: Sequence[str]) -> "SpectralEncoder":
        """The same encoder (shared parameters) whose default bands are a subset of its own.

        Args:
            band_names: names among ``band_names``, in the order of the data.

        Returns:
            the encoder for those bands.
        """
        ...


class PanopticonViT(TimmViTEncoder):
    """A timm DINOv2 ViT with TorchGeo's Panopticon patch embedding.

    Built by :func:`build_panopticon`. ``band_names`` and ``band_ids`` are the bands
    :meth:`forward_tokens` takes (the encoder interface has no place for band identities;
    ``in_chans`` counts them); :meth:`forward_spectral` takes any bands with their
    identities.
    """

    band_ids: tuple[float, ...] | None

    @property
    def patch_size(self) -> int:
        """Side of a patch in pixels."""
        return int(cast(PanopticonPE, self.patch_embed).patch_size[0])

    def _band_tensor(self, images: Tensor) -> Tensor:
        """The default bands' identities, checked against the images."""
        if self.band_ids is None or len(self.band_ids) != images.shape[1]:
            raise DataError(
                f"images have {images.shape[1]} bands but this Panopticon backbone's default "
                f"bands are {list(self.band_names or ())}; give each band's identity "
                "(forward_spectral) or select the backbone's bands for the data "
                "(select_bands)."
            )
        return torch.tensor(self.band_ids, dtype=torch.float32, device=images.device)

    def _embed(self, images: Tensor, masks: Tensor | None, mask_token: Tensor | None) -> Tensor:
        """Tokens with positions of the default bands (what :meth:`forward_tokens` embeds)."""
        return self._embed_spectral(images, self._band_tensor(images), None, masks, mask_token)

    def _embed_spectral(
        self,
        images: Tensor,
        band_ids: Tensor,
        band_mask: Tensor | None,
        masks: Tensor | None,
        mask_token: Tensor | None,
    ) -> Tensor:
        b, c, height, width = images.shape
        ids = band_ids.to(images.device, torch.float32)
        if ids.shape not in ((c,), (b, c)):
            raise DataError(
                f"band_ids of shape {tuple(ids.shape)} do not fit images with {c} bands; give "
                "one identity per band, (C,) or (B, C)."
            )
        # TorchGeo's channel embedding floors optical ids in place: it gets its own copy
        ids = ids.expand(b, c).clone()
        inputs = {"imgs": images, "chn_ids": ids}
        if band_mask is not None:
            if band_mask.shape != (b, c) or band_mask.all(1).any():
                raise DataError(
                    f"band_mask of shape {tuple(band_mask.shape)} must be (B, C) = ({b}, {c}) "
                    "and keep at least one band of every sample."
                )
            inputs["spec_masks"] = band_mask.to(images.device, torch.bool)
        x: Tensor = self.patch_embed(inputs)  # (B, h * w, D)
        p = self.patch_size
        grid = (height // p, width // p)
        if masks is not None:
            token = check_masks(masks, mask_token, b, x.shape[1], x.shape[-1]).to(x.dtype)
            x = torch.where(masks.to(torch.bool).unsqueeze(-1), token, x)
        prefix = [
            token.expand(b, -1, -1)
            for token in (self.cls_token, self.reg_token)
            if token is not None
        ]
        pos = self.pos_embed
        if pos is None:
            raise ConfigError("a Panopticon backbone needs a position embedding (timm's default).")
        stored = tuple(cast(PanopticonPE, self.patch_embed).grid_size)
        if grid != stored:
            pos = resample_abs_pos_embed(
                pos,
                new_size=list(grid),
                old_size=list(stored),
                num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens,
            )
        if self.no_embed_class:
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos
        out: Tensor = self.pos_drop(x)
        return out

    def forward_spectral(
        self,
        images: Tensor,
        band_ids: Tensor,
        band_mask: Tensor | None = None,
        masks: Tensor | None = None,
        mask_token: Tensor | None = None,
    ) -> Tensor:
        """Normalised tokens of images whose bands have the given identities.

        Args:
            images: (B, C, H, W), H and W multiples of the patch size.
            band_ids: (C,) or (B, C) identities (nm, or SAR ids) of the bands.
            band_mask: (B, C) bool, True for bands hidden from a sample (spectral
                multi-crop, or bands a sample lacks); at least one band must stay.
            masks: (B, N) bool iBOT masks of the patch tokens.
            mask_token: (1, D) or (D,) learned token; required with ``masks``.

        Returns:
            (B, 1 + R + N, D) tokens after the final norm.
        """
        return run_blocks(
            self, self._embed_spectral(images, band_ids, band_mask, masks, mask_token)
        )

    def forward_tokens(
        self,
        images: EncoderInput,
        masks: Tensor | None = None,
        mask_token: Tensor | None = None,
        present: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Normalised tokens of images of the default bands (see :meth:`forward_spectral`).

        Args:
            images: (B, C, H, W) of the ``band_names`` bands.
            masks: (B, N) bool iBOT masks.
            mask_token: (1, D) or (D,) learned token; required with ``masks``.
            present: must be None.

        Returns:
            (B, 1 + R + N, D) tokens after the final norm.

        Raises:
            ConfigError: for a dict of modalities or ``present``.
        """
        if not isinstance(images, Tensor) or present is not None:
            raise ConfigError(
                "a Panopticon backbone takes one image tensor: any bands, with their identities."
            )
        return run_blocks(self, self._embed(images, masks, mask_token))

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        """Class tokens of images of the default bands, as TorchGeo's Panopticon returns them.

        Args:
            x: (B, C, H, W).
            attn_mask: must be None (timm's argument).
            is_causal: must be False (timm's argument).

        Returns:
            (B, D).

        Raises:
            ConfigError: for an attention mask or causal attention.
        """
        if attn_mask is not None or is_causal:
            raise ConfigError("a Panopticon backbone attends over all its tokens.")
        return self.forward_tokens(x)[:, 0]

    def block_maps(self, images: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Final-norm patch tokens of some blocks, as (B, D, h, w) maps (default bands).

        Args:
            images: (B, C, H, W).
            indices: block indices.

        Returns:
            one map per index.
        """
        x = self.norm_pre(self.patch_drop(self._embed(images, None, None)))
        b, h, w = (
            images.shape[0],
            images.shape[2] // self.patch_size,
            images.shape[3] // self.patch_size,
        )
        wanted = set(indices)
        maps: dict[int, Tensor] = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in wanted:
                patches = self.norm(x)[:, self.num_prefix_tokens :]
                maps[i] = patches.transpose(1, 2).reshape(b, -1, h, w)
        return [maps[i] for i in indices]

    def select_bands(self, band_names: Sequence[str]) -> "PanopticonViT":
        """The same encoder (shared parameters) whose default bands are some of its own.

        Args:
            band_names: names among ``band_names``.

        Returns:
            a shallow copy taking those bands.

        Raises:
            DataError: for a band the backbone does not know.
        """
        known = list(self.band_names or ())
        unknown = [name for name in band_names if name not in known]
        if unknown or self.band_ids is None:
            raise DataError(
                f"bands {unknown or list(band_names)} are not among this backbone's bands "
                f"{list(self.band_names or ())}: it has no statistics or identity for them. "
                "Give data with a subset of its bands, or pretrain with a source that has them."
            )
        index = [known.index(name) for name in band_names]
        out = copy.copy(self)  # parameters and modules stay shared
        out.band_names = tuple(band_names)
        out.band_ids = tuple(self.band_ids[i] for i in index)
        out.in_chans = len(index)
        return out

    def architecture(self) -> EncoderArchitecture:
        """Patch, position grid and widths.

        Returns:
            the record (``in_chans``: the default bands).
        """
        grid = cast(PanopticonPE, self.patch_embed).grid_size
        return EncoderArchitecture(
            patch_size=self.patch_size,
            grid_size=(int(grid[0]), int(grid[1])),
            embed_dim=int(self.embed_dim),
            num_prefix_tokens=int(self.num_prefix_tokens),
            position_prefix=0 if self.no_embed_class else int(self.num_prefix_tokens),
            in_chans=self.in_chans,
            depth=self.depth,
        )


def init_channel_attention(
    patch_embed: PanopticonPE, query_std: float = 1.0, sar_std: float = 0.0
) -> None:
    """Re-draw the channel attention's query and the SAR polarisations' embeddings.

    TorchGeo draws the query from N(0, 1) and zeroes the SAR embeddings. From scratch that
    leaves the attention over bands nearly uniform (its logits have a std of ~0.5 at any
    width), so every patch token starts as the projection of the *mean* of its bands and
    VV cannot be told from VH by identity; a larger query makes each head attend to bands
    of its own from the first step.

    Args:
        patch_embed: the Panopticon patch embedding.
        query_std: std of the query (TorchGeo: 1.0).
        sar_std: std of the transmit, receive and orbit embeddings of SAR bands (TorchGeo:
            0, all polarisations alike).
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
    channel_query_std: float = 4.0,
    sar_embedding_std: float = 0.5,
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
        channel_query_std: std of the channel attention's query at initialisation
            (:func:`init_channel_attention`; TorchGeo's 1.0 starts nearly uniform over bands).
        sar_embedding_std: std of the SAR polarisations' embeddings at initialisation
            (TorchGeo's 0 starts VV and VH alike).
        **timm_kwargs: more ``timm.create_model`` arguments (embed_dim, depth, num_heads...).

    Returns:
        the encoder.

    Raises:
        ConfigError: for a timm name that is no ViT, or default bands that do not agree.
        WeightsError: if the weights do not fit.
    """
    trunk, default_attn, default_heads = PANOPTICON_ARCHS.get(model, (model, 0, 4))
    if band_ids is None and band_names is not None:
        try:
            band_ids = band_identities(band_names, sensors, band_wavelengths, "the backbone")
        except ValueError as error:
            raise ConfigError(str(error)) from None
    if band_ids is not None and len(band_ids) != len(band_names or band_ids):
        raise ConfigError(
            f"band_ids has {len(band_ids)} values for bands {list(band_names or ())}; give one "
            "identity per band."
        )
    if in_chans is not None and band_ids is not None and in_chans != len(band_ids):
        raise ConfigError(
            f"in_chans={in_chans} but {len(band_ids)} band identities are given; set in_chans "
            "to the number of bands the backbone knows."
        )
    timm_kwargs.pop("dynamic_img_size", None)  # the Panopticon embedding takes any size
    try:
        vit = timm.create_model(
            trunk, pretrained=False, num_classes=0, img_size=img_size, **timm_kwargs
        )
    except (RuntimeError, TypeError, ValueError, AssertionError) as error:
        raise ConfigError(
            f"timm cannot build {trunk!r} with {timm_kwargs} ({type(error).__name__}: {error}); "
            f"use one of {sorted(PANOPTICON_ARCHS)} or a timm DINOv2 ViT name."
        ) from None
    if not isinstance(vit, VisionTransformer):
        raise ConfigError(f"{trunk!r} is a {type(vit).__name__}, not a timm VisionTransformer.")
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
    init_channel_attention(vit.patch_embed, channel_query_std, sar_embedding_std)
    encoder = cast(PanopticonViT, PanopticonViT.adopt(vit, band_names))
    encoder.band_ids = tuple(float(v) for v in band_ids) if band_ids is not None else None
    encoder.in_chans = len(encoder.band_ids or ())
    if weights is not None:
        _load_weights(encoder, weights)
    return encoder


def _load_weights(encoder: PanopticonViT, weights: "str | Path | WeightsEnum") -> None:
    """Load Panopticon weights (their position grid resampled), refusing any other tensor."""
    from geodino.models.backbones import load_weights_file

    state, path, _ = load_weights_file(weights)
    state = {k: v for k, v in state.items() if k != "mask_token"}
    target = encoder.state_dict()
    pos = state.get("pos_embed")
    if pos is not None and pos.shape != target["pos_embed"].shape:
        prefix = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
        side = math.isqrt(pos.shape[1] - prefix)
        state["pos_embed"] = resample_abs_pos_embed(
            pos,
            new_size=list(encoder.architecture().grid_size),
            old_size=[side, side],
            num_prefix_tokens=prefix,
        )
    bad = [
        f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if bad or missing or unexpected:
        raise WeightsError(
            f"{path} does not fit this Panopticon backbone: "
            + "; ".join(bad + [f"missing {m}" for m in missing[:5]])
            + "; ".join(f" unexpected {u}" for u in unexpected[:5])
            + ". Build the architecture the weights were trained with."
        )
    encoder.load_state_dict(state)


__all__ = [
    "PANOPTICON_ARCHS",
    "PanopticonViT",
    "SpectralEncoder",
    "build_panopticon",
    "init_channel_attention",
]
