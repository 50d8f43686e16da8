"""Multimodal ViT: per-modality patch embeddings fused into one shared timm DINOv2 transformer.

Each modality (e.g. Sentinel-1 ``s1`` with 2 bands, Sentinel-2 ``s2`` with 13) has its own patch
embedding and a learned modality embedding; the modalities' patch tokens, which lie on one
patch grid, are fused into one token per patch and go through the class/register tokens,
position embedding, blocks and final norm of a timm ViT, reused as timm builds them. Three
fusion modes:

- ``early``: channel stacking. A patch embedding of the stacked bands is the sum of one
  embedding per modality's bands (a convolution is linear in its input channels), so the fused
  token is the sum of the present modalities' embedded tokens; a missing modality is the same
  as its bands at their mean (0 after normalisation).
- ``linear``: each modality's tokens are embedded separately and the fused token is a learned
  linear map of their concatenation (``fuse.<modality>`` holds each modality's block of it,
  initialised to the identity), a missing modality contributing zeros.
- ``xattn``: each modality's token stream attends to the other modalities' tokens through
  ``xattn_layers`` pre-norm cross-attention blocks (position embeddings added to queries and
  keys), then the streams are averaged over the modalities present.

The output of :meth:`FusionViT.forward_features` has the single-modality backbone's shape and
order, ``[CLS, registers..., patches...]`` after the final norm, so heads, losses, k-NN and
probes treat both backbones alike. Any non-empty subset of the declared modalities can be
given (a model trained on S1+S2 embeds S2 alone on cloud-free days or S1 alone under clouds).

Time series: a modality may come as (B, T, C, H, W), T acquisitions of the same chip, with their
days of year (1-366) as a (B, T) entry ``<modality>_doy`` of the same dict (e.g. ``s2`` and
``s2_doy``, as :class:`~geodino.datasets.TimeSeries` returns ``image`` and ``doy``); a day of
year of 0 marks a missing acquisition (padding). Each acquisition is patch-embedded, its
day-of-year embedding (``doy_embedding``: ``sinusoidal``, harmonics of the annual cycle, or
``learned``, one vector per day, zero at first) is added, and the acquisitions are pooled per
patch (``temporal_pool``: ``mean`` over the valid acquisitions, or ``attention``, a learned
query scoring each acquisition, uniform at first) into one token per patch, before fusion. With
``temporal_layers``, the acquisitions of each patch first attend to each other through that
many pre-norm transformer layers (the day-of-year embedding is their position), so that the
pooled token can hold the patch's trajectory, not only a blend of its dates. A sample with no
valid acquisition of a modality lacks that modality, as under modality dropout. Single-date
(B, C, H, W) input is unchanged.
"""

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from timm.layers.mlp import Mlp
from timm.layers.pos_embed import resample_abs_pos_embed
from timm.layers.weight_init import trunc_normal_
from timm.models import named_apply
from timm.models.vision_transformer import init_weights_vit_timm
from torch import Tensor, nn

from geodino.errors import ConfigError, DataError
from geodino.models.backbones import build_backbone
from geodino.models.encoder import EncoderArchitecture, split_prefix
from geodino.models.timm_adapter import EMBEDDING_PARAMETERS, check_masks, run_blocks

#: Fusion modes of :class:`FusionViT`.
FUSION_MODES: tuple[str, ...] = ("early", "linear", "xattn")
#: Day-of-year embeddings of time-series input.
DOY_EMBEDDINGS: tuple[str, ...] = ("sinusoidal", "learned")
#: Pools over the acquisitions of time-series input.
TEMPORAL_POOLS: tuple[str, ...] = ("mean", "attention")
#: Suffix of the dict entry holding a time-series modality's days of year.
DOY_SUFFIX = "_doy"
#: Sentinel-1 VV/VH and the 13 Sentinel-2 bands.
DEFAULT_MODALITIES: dict[str, int] = {"s1": 2, "s2": 13}

ModalityBatch = Mapping[str, Tensor]


def check_modalities(modalities: Mapping[str, int]) -> dict[str, int]:
    """Validate a ``{name: band count}`` mapping.

    Args:
        modalities: modality names and their band counts, in channel order.

    Returns:
        the mapping as a plain dict.

    Raises:
        ConfigError: if it is empty, a name cannot key a submodule or a count is not >= 1.
    """
    if not modalities:
        raise ConfigError(
            "modalities is empty; declare each modality's band count, e.g. {'s1': 2, 's2': 13}."
        )
    out = {}
    for name, bands in modalities.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(
                f"modality name {name!r} must be an identifier such as 's1' or "
                "'s2' (it names the modality's submodules)."
            )
        if isinstance(bands, bool) or not isinstance(bands, int) or bands < 1:
            raise ConfigError(
                f"modality {name!r} has band count {bands!r}; give a whole number "
                ">= 1 (e.g. 2 for Sentinel-1 VV/VH, 13 for Sentinel-2 L1C)."
            )
        out[name] = bands
    return out


def split_modalities(images: Tensor, modalities: Mapping[str, int]) -> dict[str, Tensor]:
    """Split images whose bands are the modalities' bands stacked in order.

    Args:
        images: (B, C, H, W) with ``C = sum(modalities.values())``.
        modalities: names and band counts, in channel order.

    Returns:
        one (B, C_m, H, W) view per modality.

    Raises:
        DataError: if the band count differs from the modalities' total.
    """
    total = sum(modalities.values())
    if images.ndim != 4 or images.shape[1] != total:
        raise DataError(
            f"images of shape {tuple(images.shape)} cannot be split into modalities "
            f"{dict(modalities)}: expected (B, {total}, H, W), the modalities' bands stacked "
            "in that order. Check the data's band groups against the model's modalities."
        )
    parts = torch.split(images, list(modalities.values()), dim=1)
    return dict(zip(modalities, parts, strict=True))


def series_inputs(
    images: Tensor, doy: Tensor, modalities: Mapping[str, int] | None
) -> dict[str, Tensor]:
    """The :class:`FusionViT` input of stacked time series: one series per modality.

    Args:
        images: (n B, T, C, H, W) series whose bands are the modalities' bands stacked in
            order, e.g. n multi-crop views of a batch of B series, view-major.
        doy: (B, T) days of year (0 for padding), repeated for the n views.
        modalities: the model's modalities (None: a single-date backbone).

    Returns:
        ``{modality: (n B, T, C_m, H, W), f"{modality}_doy": (n B, T)}``.

    Raises:
        ConfigError: if the backbone takes no time series (no modalities).
        DataError: if the shapes do not fit together.
    """
    if modalities is None:
        raise ConfigError(
            "the data are time series (B, T, C, H, W) but the backbone is a single-date ViT; "
            "set model.init_args.modalities (e.g. {s2: 13}) for a FusionViT, which embeds "
            "each date and pools them (docs/time-series.md)."
        )
    if images.ndim != 5 or doy.ndim != 2 or images.shape[1] != doy.shape[1]:
        raise DataError(
            f"time series of shape {tuple(images.shape)} with days of year of shape "
            f"{tuple(doy.shape)}: expected (n B, T, C, H, W) and (B, T)."
        )
    views, rest = divmod(images.shape[0], max(doy.shape[0], 1))
    if rest or views < 1:
        raise DataError(
            f"{images.shape[0]} series cannot be views of the {doy.shape[0]} series whose "
            "days of year were given; give one (B, T) row per series."
        )
    days = doy.to(images.device).repeat(views, 1)
    total = sum(modalities.values())
    if images.shape[2] != total:
        raise DataError(
            f"time series of {images.shape[2]} bands cannot be split into the modalities "
            f"{dict(modalities)} ({total} bands); check the data's band groups."
        )
    parts = torch.split(images, list(modalities.values()), dim=2)
    out: dict[str, Tensor] = {}
    for name, part in zip(modalities, parts, strict=True):
        out[name] = part
        out[name + DOY_SUFFIX] = days
    return out


def sinusoidal_doy_embedding(doy: Tensor, dim: int) -> Tensor:
    """Fixed embedding of days of year: sines and cosines of harmonics of the annual cycle.

    Harmonics are whole numbers (1 = yearly up to 52 = weekly, spaced geometrically) so that
    31 December and 1 January lie close together.

    Args:
        doy: days of year (1-366), any shape, integer or fractional.
        dim: embedding width.

    Returns:
        ``doy.shape + (dim,)`` float32 values in [-1, 1] (a trailing 0 for an odd ``dim``).
    """
    pairs = dim // 2
    harmonics = torch.logspace(0, math.log10(52), max(pairs, 1), device=doy.device).round()
    angle = 2 * math.pi * (doy.float() - 1).unsqueeze(-1) / 365.25 * harmonics[:pairs]
    out = torch.cat([angle.sin(), angle.cos()], dim=-1)
    if dim % 2:
        out = torch.cat([out, out.new_zeros(*out.shape[:-1], 1)], dim=-1)
    return out


def draw_modality_dropout(
    batch_size: int,
    modalities: Sequence[str],
    probability: float,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Which modalities each sample keeps: each is dropped with ``probability``, never all.

    A sample whose draw dropped every modality keeps one of them, chosen uniformly.

    Args:
        batch_size: samples.
        modalities: the modalities given.
        probability: chance of dropping each modality of each sample.
        generator: CPU generator for reproducible draws.

    Returns:
        per modality, a (B,) bool tensor, True where the sample keeps it.

    Raises:
        ConfigError: if ``probability`` is not in [0, 1).
    """
    if not 0.0 <= probability < 1.0:
        raise ConfigError(f"modality dropout probability {probability} must lie in [0, 1).")
    m = len(modalities)
    keep = torch.rand(batch_size, m, generator=generator) >= probability
    rescue = torch.randint(m, (batch_size,), generator=generator)
    none = ~keep.any(1)
    keep[none, rescue[none]] = True
    return {name: keep[:, i] for i, name in enumerate(modalities)}


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention from one modality's tokens to other modalities', then an MLP.

    Position embeddings are added to queries and keys only (as in DETR), so values carry
    content and the shared transformer adds positions once.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        dropout: dropout of the attention weights and the MLP.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0
    ) -> None:
        """Build the norms, attention and MLP."""
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=dropout)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        context: Tensor,
        context_pos: Tensor,
        padding: Tensor | None = None,
        gate: Tensor | None = None,
    ) -> Tensor:
        """Update ``x`` with what it reads in ``context``.

        Args:
            x: (B, N, D) tokens of one modality.
            pos: (1, N, D) their position embeddings.
            context: (B, M, D) tokens of the other modalities.
            context_pos: (1, M, D) their position embeddings.
            padding: (B, M) True for context tokens of modalities a sample lacks.
            gate: (B, 1, 1) 0 for samples that have no other modality (nothing to read): the
                block leaves their tokens unchanged.

        Returns:
            (B, N, D) tokens.
        """
        q = self.norm_q(x)
        kv = self.norm_kv(context)
        out: Tensor = (
            x
            + self.attn(
                q + pos, kv + context_pos, kv, key_padding_mask=padding, need_weights=False
            )[0]
        )
        out = out + self.mlp(self.norm_mlp(out))
        if gate is not None:
            # the block is the identity for a sample with nothing to read, as when the
            # modality comes alone
            out = x + gate * (out - x)
        return out


class FusionViT(nn.Module):
    """A timm DINOv2-family ViT over several co-registered modalities.

    Args:
        arch: timm architecture of the shared transformer (e.g.
            ``vit_small_patch14_reg4_dinov2``).
        modalities: name and band count of each modality, in the channel order of stacked
            images (default ``{'s1': 2, 's2': 13}``).
        fusion: ``early``, ``linear`` or ``xattn`` (see the module docs).
        xattn_layers: cross-attention blocks per modality (``xattn`` only).
        xattn_heads: heads of the cross-attention (default: the transformer's).
        xattn_dropout: dropout in the cross-attention blocks.
        weights: initial weights of the shared transformer and patch embeddings (as for
            :func:`~geodino.models.build_backbone`, adapted to the stacked bands and split per
            modality).
        band_names: names of the stacked bands (modalities in order), to adapt ``weights``.
        doy_embedding: day-of-year embedding of time-series input, ``sinusoidal`` (no
            parameters) or ``learned`` (``doy_embed``, 367 x width, zero at first).
        temporal_pool: pool over the acquisitions of time-series input, ``mean`` over the
            valid ones or ``attention`` (``temporal_query`` and ``temporal_norm``, a mean at
            first).
        temporal_layers: transformer layers over the acquisitions of each patch before the
            temporal pool (``temporal_blocks``; 0: none, the pool alone sees the dates).
        **timm_kwargs: more ``timm.create_model`` arguments (img_size, depth, embed_dim, ...).

    Raises:
        ConfigError: for an unknown fusion mode, day-of-year embedding or temporal pool, bad
            modalities or timm arguments.
    """

    def __init__(
        self,
        arch: str = "vit_small_patch14_reg4_dinov2",
        modalities: Mapping[str, int] | None = None,
        fusion: str = "early",
        xattn_layers: int = 1,
        xattn_heads: int | None = None,
        xattn_dropout: float = 0.0,
        weights: Any = None,
        band_names: Sequence[str] | None = None,
        doy_embedding: str = "sinusoidal",
        temporal_pool: str = "mean",
        temporal_layers: int = 0,
        **timm_kwargs: Any,
    ) -> None:
        """Build the shared transformer with timm and the per-modality parts around it."""
        super().__init__()
        if fusion not in FUSION_MODES:
            raise ConfigError(
                f"fusion mode {fusion!r} does not exist; choose one of {list(FUSION_MODES)}."
            )
        if doy_embedding not in DOY_EMBEDDINGS:
            raise ConfigError(
                f"doy_embedding {doy_embedding!r} does not exist; choose one of "
                f"{list(DOY_EMBEDDINGS)}."
            )
        if temporal_pool not in TEMPORAL_POOLS:
            raise ConfigError(
                f"temporal_pool {temporal_pool!r} does not exist; choose one of "
                f"{list(TEMPORAL_POOLS)}."
            )
        self.modalities = check_modalities(DEFAULT_MODALITIES if modalities is None else modalities)
        if fusion == "xattn" and (isinstance(xattn_layers, bool) or xattn_layers < 1):
            raise ConfigError(
                f"xattn_layers={xattn_layers}: cross-attention fusion needs at least 1 layer."
            )
        if isinstance(temporal_layers, bool) or temporal_layers < 0:
            raise ConfigError(f"temporal_layers={temporal_layers} must be a whole number >= 0.")
        if not 0.0 <= xattn_dropout < 1.0:
            raise ConfigError(f"xattn_dropout={xattn_dropout} must lie in [0, 1).")
        self.fusion = fusion
        self.band_names = tuple(band_names) if band_names is not None else None
        self.xattn_layers = xattn_layers if fusion == "xattn" else 0
        vit = build_backbone(
            arch,
            sum(self.modalities.values()),
            weights=weights,
            band_names=band_names,
            **timm_kwargs,
        )
        self.arch = arch
        self.embed_dim = dim = vit.embed_dim
        self.num_features = vit.num_features
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.num_reg_tokens = vit.num_reg_tokens
        self.no_embed_class = vit.no_embed_class
        self.dynamic_img_size = vit.dynamic_img_size
        self.grid_size = tuple(vit.patch_embed.grid_size)
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.grad_checkpointing = False

        # per modality: a copy of timm's patch embedding with the modality's bands
        self.patch_embeds = nn.ModuleDict()
        stacked = cast(nn.Conv2d, vit.patch_embed.proj)
        weight, bias = stacked.weight, stacked.bias
        start = 0
        for name, bands in self.modalities.items():
            embed = _rechannel(vit.patch_embed, bands)
            if weights is not None:
                proj = cast(nn.Conv2d, embed.proj)
                with torch.no_grad():
                    proj.weight.copy_(weight[:, start : start + bands])
                    if bias is not None and proj.bias is not None:
                        # early fusion sums the embeddings: the stacked bias is shared out
                        share = len(self.modalities) if fusion == "early" else 1
                        proj.bias.copy_(bias / share)
            self.patch_embeds[name] = embed
            start += bands
        self.modality_embeds = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(1, 1, dim)) for name in self.modalities}
        )
        for param in self.modality_embeds.values():
            trunc_normal_(param, std=0.02)
        if fusion == "linear":
            self.fuse = nn.ModuleDict()
            for name in self.modalities:
                layer = nn.Linear(dim, dim, bias=False)
                nn.init.eye_(layer.weight)
                self.fuse[name] = layer
            self.fuse_bias = nn.Parameter(torch.zeros(dim))
        elif fusion == "xattn":
            attention = cast(nn.Module, vit.blocks[0].attn)
            heads = xattn_heads or cast(int, attention.num_heads)
            if dim % heads:
                raise ConfigError(
                    f"xattn_heads={heads} does not divide the width {dim}; pick a divisor."
                )
            self.xattn = nn.ModuleDict(
                {
                    name: nn.ModuleList(
                        CrossAttentionBlock(dim, heads, dropout=xattn_dropout)
                        for _ in range(xattn_layers)
                    )
                    for name in self.modalities
                }
            )

        # time series: parameters only where configured, so single-date models keep their
        # state dicts
        self.doy_embedding = doy_embedding
        self.temporal_pool = temporal_pool
        if doy_embedding == "learned":
            self.doy_embed = nn.Embedding(367, dim)
            nn.init.zeros_(self.doy_embed.weight)
        if temporal_pool == "attention":
            self.temporal_norm = nn.LayerNorm(dim, eps=1e-6)
            self.temporal_query = nn.Parameter(torch.zeros(dim))
        self.temporal_layers = temporal_layers
        if temporal_layers:
            heads = cast(int, cast(nn.Module, vit.blocks[0].attn).num_heads)
            self.temporal_blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(
                    dim,
                    heads,
                    dim_feedforward=4 * dim,
                    dropout=0.0,
                    activation="gelu",
                    layer_norm_eps=1e-6,
                    batch_first=True,
                    norm_first=True,
                )
                for _ in range(temporal_layers)
            )

        # the shared transformer, as timm built it (same parameter names as a timm ViT)
        self.cls_token = vit.cls_token
        self.reg_token = vit.reg_token
        self.pos_embed = vit.pos_embed
        self.pos_drop = vit.pos_drop
        self.patch_drop = vit.patch_drop
        self.norm_pre = vit.norm_pre
        self.blocks = vit.blocks
        self.norm = vit.norm

    def init_weights(self) -> None:
        """Draw every parameter afresh, as at construction (timm's ViT initialisation).

        The draws come from torch's global generator, as timm's; this gives the random-init
        twin of a trained backbone (:func:`~geodino.evaluation.baselines.random_init_twin`).
        """
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        # linear layers truncated normal, every other layer (norms, patch convolutions) reset
        named_apply(init_weights_vit_timm, self)
        for module in self.modules():
            if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
                nn.init.xavier_uniform_(module.in_proj_weight)
                if module.in_proj_bias is not None:
                    nn.init.zeros_(module.in_proj_bias)
        for param in self.modality_embeds.values():
            trunc_normal_(param, std=0.02)
        if self.fusion == "linear":
            for layer in self.fuse.values():
                nn.init.eye_(cast(nn.Linear, layer).weight)
            nn.init.zeros_(self.fuse_bias)
        if self.doy_embedding == "learned":
            nn.init.zeros_(self.doy_embed.weight)
        if self.temporal_pool == "attention":
            nn.init.zeros_(self.temporal_query)

    # --- inputs ------------------------------------------------------------------------
    def _inputs(self, batch: ModalityBatch | Tensor) -> dict[str, Tensor]:
        if isinstance(batch, Tensor):
            return split_modalities(batch, self.modalities)
        if not isinstance(batch, Mapping) or not batch:
            raise DataError(
                f"FusionViT takes a dict of modality images, a non-empty subset of "
                f"{list(self.modalities)}, or one image with their bands stacked; got "
                f"{type(batch).__name__ if not isinstance(batch, Mapping) else 'an empty dict'}."
            )
        unknown = sorted(set(batch) - set(self.modalities))
        if unknown:
            raise DataError(
                f"modalities {unknown} are not among the model's "
                f"{list(self.modalities)}; drop them or train a model with them."
            )
        shape = None
        for name, image in batch.items():
            if image.ndim not in (4, 5) or image.shape[-3] != self.modalities[name]:
                raise DataError(
                    f"modality {name!r} has shape {tuple(image.shape)} but the model expects "
                    f"(B, {self.modalities[name]}, H, W), or (B, T, {self.modalities[name]}, H, "
                    "W) for a time series; check its bands against the config's modalities."
                )
            if shape is not None and (image.shape[0], *image.shape[-2:]) != shape[1]:
                raise DataError(
                    f"modality {name!r} has {image.shape[0]} images of {tuple(image.shape[2:])} "
                    f"px but {shape[0]!r} has {shape[1][0]} of {shape[1][1:]}: modalities must "
                    "come in pairs on one pixel grid (resample them onto one grid per chip)."
                )
            shape = (name, (image.shape[0], *image.shape[-2:]))
        # the declared order, whatever the caller's
        return {name: batch[name] for name in self.modalities if name in batch}

    def _dates(
        self, batch: ModalityBatch | Tensor
    ) -> tuple[ModalityBatch | Tensor, dict[str, Tensor]]:
        """The batch without its ``<modality>_doy`` entries, and those days of year."""
        if not isinstance(batch, Mapping):
            return batch, {}
        doys = {
            k[: -len(DOY_SUFFIX)]: v
            for k, v in batch.items()
            if k.endswith(DOY_SUFFIX) and k not in self.modalities
        }
        images = {
            k: v
            for k, v in batch.items()
            if not (k.endswith(DOY_SUFFIX) and k not in self.modalities)
        }
        for name, doy in doys.items():
            image = images.get(name)
            if image is None or image.ndim != 5:
                raise DataError(
                    f"{name}{DOY_SUFFIX} gives days of year but {name!r} is "
                    f"{'missing' if image is None else f'of shape {tuple(image.shape)}'}; days "
                    f"of year go with a (B, T, C, H, W) time series of {name!r}."
                )
            if doy.shape != image.shape[:2]:
                raise DataError(
                    f"{name}{DOY_SUFFIX} has shape {tuple(doy.shape)} but {name!r} holds "
                    f"{tuple(image.shape[:2])} (B, T) acquisitions; give one day of year per "
                    "acquisition (0 for padding)."
                )
        for name, image in images.items():
            if image.ndim == 5 and name not in doys:
                raise DataError(
                    f"{name!r} is a time series of shape {tuple(image.shape)} but the batch has "
                    f"no {name}{DOY_SUFFIX}; give its (B, T) days of year (1-366, 0 for "
                    "padding)."
                )
        return images, doys

    def _embed_series(self, name: str, series: Tensor, doy: Tensor) -> tuple[Tensor, Tensor]:
        """Pool a (B, T, C, H, W) time series over its acquisitions.

        Returns (B, h, w, D) tokens and (B,) which samples have any valid acquisition.
        """
        b, t = series.shape[:2]
        x = self._embed(name, series.flatten(0, 1))
        x = x.reshape(b, t, *x.shape[1:])
        valid = doy > 0
        if self.doy_embedding == "learned":
            days = self.doy_embed(doy.round().long().clamp(0, 366))
        else:
            days = sinusoidal_doy_embedding(doy, x.shape[-1]).to(x.dtype)
        x = x + days.reshape(b, t, 1, 1, -1)
        # padded acquisitions (NaN images) must not reach the pool, not even times 0
        x = torch.where(valid.reshape(b, t, 1, 1, 1), x, 0.0)
        if self.temporal_layers:
            x = self._attend_dates(x, valid)
        if self.temporal_pool == "mean":
            weights = valid.to(x.dtype).reshape(b, t, 1, 1)
            weights = weights / weights.sum(1, keepdim=True).clamp_min(1)
        else:
            scores = self.temporal_norm(x) @ self.temporal_query / math.sqrt(x.shape[-1])
            scores = scores.masked_fill(~valid.reshape(b, t, 1, 1), -torch.inf)
            # a sample with no valid acquisition gets uniform weights (not NaN); it is dropped
            scores = torch.where(valid.any(1).reshape(b, 1, 1, 1), scores, 0.0)
            weights = scores.softmax(dim=1)
        return (weights.unsqueeze(-1) * x).sum(1), valid.any(1)

    def _attend_dates(self, x: Tensor, valid: Tensor) -> Tensor:
        """Run the temporal blocks over the acquisitions of each patch of (B, T, h, w, D) tokens.

        Padded acquisitions are keys of no query and come back as zeros.
        """
        b, t, h, w, d = x.shape
        sequences = x.permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)
        # a sample with no valid acquisition attends to everything (no all-masked rows, whose
        # softmax is NaN); it is dropped after the pool
        padding = ~valid & valid.any(1, keepdim=True)
        padding = padding.repeat_interleave(h * w, dim=0)
        for block in self.temporal_blocks:
            sequences = block(sequences, src_key_padding_mask=padding)
        x = sequences.reshape(b, h, w, t, d).permute(0, 3, 1, 2, 4)
        return torch.where(valid.reshape(b, t, 1, 1, 1), x, 0.0)

    def _embed(self, name: str, image: Tensor) -> Tensor:
        """(B, h, w, D) patch tokens of one modality, its modality embedding added."""
        x: Tensor = self.patch_embeds[name](image)
        if x.ndim == 3:  # models built without dynamic_img_size flatten the grid
            x = x.reshape(x.shape[0], *self.grid_size, x.shape[-1])
        embedding: Tensor = self.modality_embeds[name]
        return x + embedding.reshape(1, 1, 1, -1)

    def _patch_pos(self, grid: tuple[int, int]) -> Tensor:
        """(1, h * w, D) position embeddings of the patches (no prefix positions)."""
        prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        pos = self.pos_embed
        if pos is None:
            raise ConfigError(
                f"{self.arch} has no position embedding, which cross-attention fusion needs; "
                "use a ViT with position embeddings or another fusion mode."
            )
        if self.dynamic_img_size and tuple(grid) != self.grid_size:
            pos = resample_abs_pos_embed(
                pos, new_size=grid, old_size=self.grid_size, num_prefix_tokens=prefix
            )
        return pos[:, prefix:]

    def _pos_embed(self, x: Tensor) -> Tensor:
        """Prefix tokens and position embeddings of (B, h, w, D) patch tokens, as timm does."""
        b, h, w, d = x.shape
        to_cat = []
        if self.cls_token is not None:
            to_cat.append(self.cls_token.expand(b, -1, -1))
        if self.reg_token is not None:
            to_cat.append(self.reg_token.expand(b, -1, -1))
        x = x.reshape(b, h * w, d)
        if self.pos_embed is None:
            return torch.cat([*to_cat, x], dim=1)
        pos = self.pos_embed
        if self.dynamic_img_size:
            pos = resample_abs_pos_embed(
                pos,
                new_size=(h, w),
                old_size=self.grid_size,
                num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens,
            )
        if self.no_embed_class:
            x = torch.cat([*to_cat, x + pos], dim=1)
        else:
            x = torch.cat([*to_cat, x], dim=1) + pos
        out: Tensor = self.pos_drop(x)
        return out

    # --- fusion ------------------------------------------------------------------------
    def _fuse(
        self,
        tokens: dict[str, Tensor],
        weights: dict[str, Tensor],
        masks: Tensor | None,
        token: Tensor | None,
    ) -> Tensor:
        """One (B, h, w, D) token per patch from the modalities' tokens."""
        if self.fusion == "early":
            return _total(weights[m] * x for m, x in tokens.items())
        if self.fusion == "linear":
            return _total(weights[m] * self.fuse[m](x) for m, x in tokens.items()) + self.fuse_bias
        b, h, w, d = next(iter(tokens.values())).shape
        pos = self._patch_pos((h, w))
        streams = {m: x.reshape(b, h * w, d) for m, x in tokens.items()}
        if masks is not None and token is not None:
            # masked patches are hidden from the cross-attention too, or their content would
            # reach the fused tokens of unmasked patches
            streams = {
                m: torch.where(masks.unsqueeze(-1), token + self.modality_embeds[m], x)
                for m, x in streams.items()
            }
        present = {m: weights[m].reshape(b) > 0 for m in streams}
        for layer in range(self.xattn_layers):
            updated = {}
            for m, x in streams.items():
                others = [o for o in streams if o != m]
                if not others:
                    updated[m] = x
                    continue
                context = torch.cat([streams[o] for o in others], dim=1)
                context_pos = pos.repeat(1, len(others), 1)
                any_other = torch.stack([present[o] for o in others]).any(0)
                absent = torch.cat(
                    [(~present[o]).unsqueeze(1).expand(b, h * w) for o in others], dim=1
                )
                # a sample with no other modality attends to everything (no all-masked rows,
                # whose softmax is NaN) and the block is gated off for it
                padding = absent & any_other.unsqueeze(1)
                gate = any_other.to(x.dtype).reshape(b, 1, 1)
                updated[m] = cast(nn.ModuleList, self.xattn[m])[layer](
                    x, pos, context, context_pos, padding if padding.any() else None, gate
                )
            streams = updated
        total = sum(weights[m].reshape(b, 1, 1) * x for m, x in streams.items())
        count = sum(weights[m].reshape(b, 1, 1) for m in streams)
        fused = total / count.clamp_min(1)  # type: ignore[union-attr]
        return fused.reshape(b, h, w, d)

    def forward_features(
        self,
        batch: ModalityBatch | Tensor,
        masks: Tensor | None = None,
        mask_token: Tensor | None = None,
        present: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Normalised tokens [CLS, registers..., patches...] of the fused modalities.

        Args:
            batch: a dict of (B, C_m, H, W) images, any non-empty subset of the modalities,
                or one (B, C, H, W) image with every modality's bands stacked in order. A
                modality may be a (B, T, C_m, H, W) time series, its (B, T) days of year
                (1-366, 0 for a missing acquisition) in the entry ``<modality>_doy``.
            masks: (B, N) bool, True where the fused patch token is replaced by
                ``mask_token`` (iBOT), N patches in row-major order.
            mask_token: (1, D) or (D,) learned token; required with ``masks``.
            present: per modality, (B,) bool telling which samples keep it (modality
                dropout); a sample must keep at least one of the given modalities.

        Returns:
            (B, 1 + R + N, D) tokens after the final norm.

        Raises:
            DataError: for unknown modalities, wrong band counts, modalities on different
                grids, a time series without days of year, or a sample with nothing valid.
            ConfigError: if masks come without a token or do not fit the patch grid.
        """
        batch, doys = self._dates(batch)
        images = self._inputs(batch)
        tokens, observed = {}, {}
        for m, x in images.items():
            if m in doys:
                tokens[m], observed[m] = self._embed_series(m, x, doys[m])
            else:
                tokens[m] = self._embed(m, x)
        b, h, w, d = next(iter(tokens.values())).shape
        ones = next(iter(tokens.values())).new_ones(b, 1, 1, 1)
        weights = {m: ones for m in tokens}
        if present is not None:
            weights = {
                m: present[m].to(ones).reshape(b, 1, 1, 1) if m in present else ones for m in tokens
            }
        for m, seen in observed.items():
            weights[m] = weights[m] * seen.to(ones).reshape(b, 1, 1, 1)
        if present is not None or observed:
            kept = torch.stack(list(weights.values())).sum(0) > 0
            if not kept.all():
                raise DataError(
                    "a sample has no modality left (modality dropout, or no valid "
                    "acquisition in its time series: every day of year 0); keep "
                    "at least one per sample."
                )
        token = None
        if masks is not None:
            token = check_masks(masks, mask_token, b, h * w, d)
            token = token.to(next(iter(tokens.values())).dtype)
            masks = masks.to(torch.bool)
        x = self._fuse(tokens, weights, masks, token)
        if masks is not None and token is not None:
            flat = torch.where(masks.unsqueeze(-1), token, x.reshape(b, h * w, d))
            x = flat.reshape(b, h, w, d)
        return run_blocks(self, self._pos_embed(x))

    # --- the encoder interface ----------------------------------------------------------
    @property
    def in_chans(self) -> int:
        """Number of input bands: every modality's bands stacked."""
        return sum(self.modalities.values())

    @property
    def depth(self) -> int:
        """Number of blocks of the shared transformer."""
        return len(self.blocks)

    def forward_tokens(
        self,
        images: ModalityBatch | Tensor,
        masks: Tensor | None = None,
        mask_token: Tensor | None = None,
        present: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Normalised tokens of the fused modalities (see :meth:`forward_features`).

        Args:
            images: a dict of modality images or one image of their stacked bands.
            masks: (B, N) bool iBOT masks of the fused patch tokens.
            mask_token: (1, D) or (D,) learned token; required with ``masks``.
            present: per modality, (B,) bool telling which samples keep it.

        Returns:
            (B, 1 + R + N, D) tokens after the final norm.
        """
        return self.forward_features(images, masks, mask_token, present)

    def split_tokens(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Split tokens into class token, registers and patch tokens.

        Args:
            tokens: (B, 1 + R + N, D).

        Returns:
            (B, D) class token, (B, R, D) registers, (B, N, D) patches.
        """
        return split_prefix(tokens, self.num_prefix_tokens)

    def block_maps(self, images: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Final-norm patch tokens of some shared blocks, as (B, D, h, w) maps.

        Read from the blocks as the model runs (the fusion stages come before them).

        Args:
            images: (B, C, H, W) stacked modality bands.
            indices: distinct block indices.

        Returns:
            one map per index.
        """
        outputs: dict[int, Tensor] = {}
        handles = [
            self.blocks[i].register_forward_hook(
                lambda _module, _args, out, i=i: outputs.__setitem__(i, out)
            )
            for i in indices
        ]
        try:
            self.forward_features(images)
        finally:
            for handle in handles:
                handle.remove()
        b, _, height, width = images.shape
        h, w = height // self.patch_size, width // self.patch_size
        prefix = self.num_prefix_tokens
        return [
            self.norm(outputs[i])[:, prefix:].transpose(1, 2).reshape(b, -1, h, w) for i in indices
        ]

    def layer_id(self, name: str) -> int:
        """Layer of a parameter for layer-wise lr decay.

        Args:
            name: the parameter's name within the model.

        Returns:
            0 for embeddings, prefix tokens and the fusion layers before the shared blocks,
            ``i + 1`` for block ``i``, ``depth + 1`` for the rest.
        """
        if name.startswith((*EMBEDDING_PARAMETERS, "modality_embeds", "fuse", "xattn", "temporal")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1

    def architecture(self) -> EncoderArchitecture:
        """Patch, position grid and widths of the shared transformer.

        Returns:
            the record.
        """
        return EncoderArchitecture(
            patch_size=self.patch_size,
            grid_size=(int(self.grid_size[0]), int(self.grid_size[1])),
            embed_dim=int(self.embed_dim),
            num_prefix_tokens=int(self.num_prefix_tokens),
            position_prefix=0 if self.no_embed_class else int(self.num_prefix_tokens),
            in_chans=self.in_chans,
            depth=self.depth,
        )

    def forward(self, batch: ModalityBatch | Tensor) -> Tensor:
        """CLS features, as a timm ViT without classifier returns them.

        Args:
            batch: as for :meth:`forward_features`.

        Returns:
            (B, D) class tokens.
        """
        return self.forward_features(batch)[:, 0]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the shared blocks in the backward pass to save memory.

        Args:
            enable: on or off.
        """
        self.grad_checkpointing = enable

    def extra_repr(self) -> str:
        """Architecture, modalities and fusion mode, for printed models."""
        return (
            f"arch={self.arch}, modalities={self.modalities}, fusion={self.fusion}, "
            f"doy_embedding={self.doy_embedding}, temporal_pool={self.temporal_pool}, "
            f"temporal_layers={self.temporal_layers}"
        )


def _total(terms: Iterable[Tensor]) -> Tensor:
    """The sum of tensors, added in order (as the builtin ``sum`` would, without its 0)."""
    iterator = iter(terms)
    total = next(iterator)
    for term in iterator:
        total = total + term
    return total


def _rechannel(embed: nn.Module, bands: int) -> nn.Module:
    """A copy of a timm patch embedding that reads ``bands`` bands, freshly initialised."""
    proj = cast(nn.Conv2d, embed.proj)  # timm's PatchEmbed projects with a Conv2d
    out = copy.deepcopy(embed)
    out.proj = nn.Conv2d(
        bands,
        proj.out_channels,
        kernel_size=cast(tuple[int, int], proj.kernel_size),
        stride=cast(tuple[int, int], proj.stride),
        bias=proj.bias is not None,
    )
    return out


__all__ = [
    "DEFAULT_MODALITIES",
    "DOY_EMBEDDINGS",
    "DOY_SUFFIX",
    "FUSION_MODES",
    "TEMPORAL_POOLS",
    "CrossAttentionBlock",
    "FusionViT",
    "check_modalities",
    "draw_modality_dropout",
    "series_inputs",
    "sinusoidal_doy_embedding",
    "split_modalities",
]
