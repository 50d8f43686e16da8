"""Wavelength-aware ViTs: a timm ViT whose patch embedding is told each band's identity.

:class:`SpectralViT` is what TorchGeo's Panopticon and DOFA share once their patch embeddings
are put in front of a timm ViT: default bands with identities (centre wavelength in nm, or a
negative id for a SAR polarisation: :func:`geodino.bands.band_identities`), any other bands
through :meth:`SpectralViT.forward_spectral`, a subset of its own through
:meth:`SpectralViT.select_bands`. Subclasses say only how bands become patch tokens
(:class:`~geodino.models.panopticon.PanopticonViT`, :class:`~geodino.models.dofa.DofaViT`).
"""

import copy
import math
from abc import ABCMeta, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import timm
import torch
from timm.layers.pos_embed import resample_abs_pos_embed
from timm.models import VisionTransformer
from torch import Tensor

from geodino.errors import ConfigError, DataError, WeightsError
from geodino.models.encoder import Encoder, EncoderArchitecture, EncoderInput
from geodino.models.timm_adapter import TimmViTEncoder, check_masks, run_blocks

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum


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


class SpectralViT(TimmViTEncoder, metaclass=ABCMeta):
    """A timm ViT whose patch embedding takes each band's identity.

    ``band_names`` and ``band_ids`` are the bands :meth:`forward_tokens` takes (the encoder
    interface has no place for band identities; ``in_chans`` counts them);
    :meth:`forward_spectral` takes any bands with their identities. Subclasses implement
    :meth:`patch_tokens`, :attr:`patch_size` and :attr:`stored_grid`.
    """

    band_ids: tuple[float, ...] | None

    @property
    @abstractmethod
    def stored_grid(self) -> tuple[int, int]:
        """Patch grid of the stored position embedding."""

    @abstractmethod
    def patch_tokens(self, images: Tensor, band_ids: Tensor, band_mask: Tensor | None) -> Tensor:
        """Patch tokens of images whose bands have these identities, before positions.

        Args:
            images: (B, C, H, W).
            band_ids: (B, C) identities, the caller's copy (may be changed in place).
            band_mask: (B, C) bool, True for hidden bands; checked.

        Returns:
            (B, h * w, D).
        """

    def _band_tensor(self, images: Tensor) -> Tensor:
        """The default bands' identities, checked against the images."""
        if self.band_ids is None or len(self.band_ids) != images.shape[1]:
            raise DataError(
                f"images have {images.shape[1]} bands but this wavelength-aware backbone's "
                f"default bands are {list(self.band_names or ())}; give each band's identity "
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
        if band_mask is not None:
            if band_mask.shape != (b, c) or band_mask.all(1).any():
                raise DataError(
                    f"band_mask of shape {tuple(band_mask.shape)} must be (B, C) = ({b}, {c}) "
                    "and keep at least one band of every sample."
                )
            band_mask = band_mask.to(images.device, torch.bool)
        x = self.patch_tokens(images, ids.expand(b, c).clone(), band_mask)
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
            raise ConfigError(
                "a wavelength-aware backbone needs a position embedding (timm's default)."
            )
        if grid != self.stored_grid:
            pos = resample_abs_pos_embed(
                pos,
                new_size=list(grid),
                old_size=list(self.stored_grid),
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
                "a wavelength-aware backbone takes one image tensor: any bands, with their "
                "identities."
            )
        return run_blocks(self, self._embed(images, masks, mask_token))

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        """Class tokens of images of the default bands, as TorchGeo's models return them.

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
            raise ConfigError("a wavelength-aware backbone attends over all its tokens.")
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

    def select_bands(self, band_names: Sequence[str]) -> "SpectralViT":
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
        return EncoderArchitecture(
            patch_size=self.patch_size,
            grid_size=self.stored_grid,
            embed_dim=int(self.embed_dim),
            num_prefix_tokens=int(self.num_prefix_tokens),
            position_prefix=0 if self.no_embed_class else int(self.num_prefix_tokens),
            in_chans=self.in_chans,
            depth=self.depth,
        )


def create_trunk(
    trunk: str, img_size: int, architectures: Sequence[str], **timm_kwargs: Any
) -> VisionTransformer:
    """The timm ViT a wavelength-aware patch embedding is put in front of.

    Args:
        trunk: timm architecture name.
        img_size: image size of the stored position grid.
        architectures: the wavelength-aware architecture names, for the error message.
        **timm_kwargs: more ``timm.create_model`` arguments (``dynamic_img_size`` is dropped:
            positions are resampled for any size).

    Returns:
        the ViT, without classifier.

    Raises:
        ConfigError: if timm cannot build it or it is no ViT.
    """
    timm_kwargs.pop("dynamic_img_size", None)
    try:
        vit = timm.create_model(
            trunk, pretrained=False, num_classes=0, img_size=img_size, **timm_kwargs
        )
    except (RuntimeError, TypeError, ValueError, AssertionError) as error:
        raise ConfigError(
            f"timm cannot build {trunk!r} with {timm_kwargs} ({type(error).__name__}: {error}); "
            f"use one of {sorted(architectures)} or a timm ViT name."
        ) from None
    if not isinstance(vit, VisionTransformer):
        raise ConfigError(f"{trunk!r} is a {type(vit).__name__}, not a timm VisionTransformer.")
    return vit


def default_band_ids(
    in_chans: int | None,
    band_names: Sequence[str] | None,
    band_ids: Sequence[float] | None,
    sensors: str | Sequence[str] | None,
    band_wavelengths: Mapping[str, float] | None,
) -> tuple[float, ...] | None:
    """The identities of a backbone's default bands, looked up by name where not given.

    Args:
        in_chans: number of default bands, if given.
        band_names: their names.
        band_ids: their identities, if given.
        sensors: sensors whose tables name the bands, in order of preference.
        band_wavelengths: more ``{band name: wavelength in nm}``.

    Returns:
        the identities, None without names or identities.

    Raises:
        ConfigError: for an unknown band or counts that do not agree.
    """
    from geodino.bands import band_identities

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
    return tuple(float(v) for v in band_ids) if band_ids is not None else None


def load_spectral_weights(
    encoder: SpectralViT,
    weights: "str | Path | WeightsEnum",
    state: Mapping[str, Tensor] | None = None,
) -> None:
    """Load weights into a wavelength-aware backbone, its position grid resampled.

    Args:
        encoder: the backbone.
        weights: a weights file or TorchGeo enum (read unless ``state`` is given).
        state: the tensors, already read and renamed to the backbone's keys.

    Raises:
        WeightsError: for a tensor that does not fit, or one missing or left over.
    """
    from geodino.models.backbones import load_weights_file

    path: Path | str | WeightsEnum = weights
    if state is None:
        state, path, _ = load_weights_file(weights)
    tensors = {k: v for k, v in state.items() if k != "mask_token"}
    target = encoder.state_dict()
    pos = tensors.get("pos_embed")
    if pos is not None and pos.shape != target["pos_embed"].shape:
        prefix = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
        side = math.isqrt(pos.shape[1] - prefix)
        tensors["pos_embed"] = resample_abs_pos_embed(
            pos,
            new_size=list(encoder.stored_grid),
            old_size=[side, side],
            num_prefix_tokens=prefix,
        )
    bad = [
        f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in tensors.items()
        if k in target and v.shape != target[k].shape
    ]
    missing = sorted(set(target) - set(tensors))
    unexpected = sorted(set(tensors) - set(target))
    if bad or missing or unexpected:
        raise WeightsError(
            f"{path} does not fit this {type(encoder).__name__} backbone: "
            + "; ".join(bad + [f"missing {m}" for m in missing[:5]])
            + "; ".join(f" unexpected {u}" for u in unexpected[:5])
            + ". Build the architecture the weights were trained with."
        )
    encoder.load_state_dict(tensors)


__all__ = [
    "SpectralEncoder",
    "SpectralViT",
    "create_trunk",
    "default_band_ids",
    "load_spectral_weights",
]
