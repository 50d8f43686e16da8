"""timm's VisionTransformer as an :class:`~geodino.models.encoder.Encoder`.

This module is the one place that knows how a timm ViT runs inside: the mask-token insertion
between the patch embedding and the position embedding, and the block loop after it (which
:class:`~geodino.models.fusion.FusionViT` reuses for its shared transformer).
"""

import math
from collections.abc import Mapping, Sequence
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention
from timm.layers.pos_embed import resample_abs_pos_embed
from timm.models import VisionTransformer, checkpoint_seq
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from geodino.errors import ConfigError
from geodino.models.encoder import Encoder, EncoderArchitecture, EncoderInput, split_prefix

#: Parameters of a timm ViT that come before its blocks (layer 0 of layer-wise lr decay).
EMBEDDING_PARAMETERS = ("cls_token", "reg_token", "pos_embed", "patch_embed")


class ViTTrunk(Protocol):
    """The parts of a timm ViT's transformer that :func:`run_blocks` runs, under timm's names.

    timm's ``VisionTransformer`` and :class:`~geodino.models.FusionViT` both have them.
    """

    @property
    def patch_drop(self) -> nn.Module:
        """Patch dropout (identity unless configured)."""
        ...

    @property
    def norm_pre(self) -> nn.Module:
        """Norm before the blocks (identity unless configured)."""
        ...

    @property
    def blocks(self) -> nn.Sequential:
        """The transformer blocks."""
        ...

    @property
    def norm(self) -> nn.Module:
        """The final norm."""
        ...

    @property
    def grad_checkpointing(self) -> bool:
        """Whether the blocks are recomputed in the backward pass."""
        ...


def run_blocks(trunk: ViTTrunk, x: Tensor) -> Tensor:
    """Patch dropout, pre-norm, the blocks and the final norm, as timm's ViT runs them.

    Args:
        trunk: a timm ViT, or a module holding its shared transformer under timm's names.
        x: (B, 1 + R + N, D) tokens with positions added.

    Returns:
        (B, 1 + R + N', D) tokens after the final norm.
    """
    x = trunk.patch_drop(x)
    x = trunk.norm_pre(x)
    x = checkpoint_seq(trunk.blocks, x) if trunk.grad_checkpointing else trunk.blocks(x)
    out: Tensor = trunk.norm(x)
    return out


#: (crops, tokens per crop) of each group of equal-sized crops in a packed token sequence.
Segments = tuple[tuple[int, int], ...]


def packable(block: nn.Module) -> bool:
    """Whether :func:`packed_block` runs this block exactly as its own forward does.

    Args:
        block: a transformer block.

    Returns:
        True for timm's pre-norm ``Block`` with timm's ``Attention``.
    """
    return type(block) is Block and type(block.attn) is Attention


def packed_attention(attn: Attention, x: Tensor, segments: Segments) -> Tensor:
    """The attention of a timm ``Block`` over packed tokens, each crop attending to itself.

    The projections run once over all tokens; the attention runs once per group of
    equal-sized crops, so the block-diagonal mask costs neither padding nor masked scores.

    Args:
        attn: the block's attention module.
        x: (T, D) normed tokens of all crops, group after group, crop after crop.
        segments: (crops, tokens per crop) of each group; they sum to T tokens.

    Returns:
        (T, D) attention outputs after the projection.
    """
    heads, head_dim = attn.num_heads, attn.head_dim
    width = heads * head_dim
    # gated attention (recent timm) registers a gate module; without it, no gate
    gate = dict(attn.named_children()).get("gate")
    qkv = attn.qkv(x)
    outs: list[Tensor] = []
    start = 0
    for count, length in segments:
        end = start + count * length
        q, k, v = (
            qkv[start:end].reshape(count, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        ).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if attn.fused_attn:
            dropout = attn.attn_drop.p if attn.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            out = attn.attn_drop((q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
        outs.append(out.transpose(1, 2).reshape(count * length, width))
        start = end
    y = attn.norm(torch.cat(outs))
    if gate is not None:
        y = y * gate(x).sigmoid()
    out = attn.proj_drop(attn.proj(y))
    return cast(Tensor, out)


def _per_crop(module: nn.Module, x: Tensor, segments: Segments) -> Tensor:
    """A per-sample module (drop path) applied to each crop of packed tokens."""
    if isinstance(module, nn.Identity):
        return x
    parts = torch.split(x, [count * length for count, length in segments])
    out = [
        module(part.reshape(count, length, -1)).reshape(count * length, -1)
        for part, (count, length) in zip(parts, segments, strict=True)
    ]
    return torch.cat(out)


def packed_block(block: Block, x: Tensor, segments: Segments) -> Tensor:
    """A timm pre-norm ``Block`` over packed tokens (see :func:`packed_attention`).

    Args:
        block: a block for which :func:`packable` holds.
        x: (T, D) tokens of all crops.
        segments: (crops, tokens per crop) of each group.

    Returns:
        (T, D) tokens after the block.
    """
    attn = block.ls1(packed_attention(cast(Attention, block.attn), block.norm1(x), segments))
    x = x + _per_crop(block.drop_path1, attn, segments)
    mlp = block.ls2(block.mlp(block.norm2(x)))
    return x + _per_crop(block.drop_path2, mlp, segments)


def run_blocks_packed(trunk: ViTTrunk, tokens: Sequence[Tensor]) -> list[Tensor]:
    """:func:`run_blocks` over several groups of crops at once, in one packed pass per block.

    Tokens of all groups are concatenated for the token-wise layers, and each crop attends to
    itself only. Blocks other than timm's pre-norm ``Block`` run group by group instead.

    Args:
        trunk: a timm ViT, or a module holding its shared transformer under timm's names.
        tokens: per group, (B_i, 1 + R + N_i, D) tokens with positions added.

    Returns:
        per group, (B_i, 1 + R + N_i', D) tokens after the final norm.
    """
    if not all(packable(block) for block in trunk.blocks):
        return [run_blocks(trunk, group) for group in tokens]
    groups = [trunk.norm_pre(trunk.patch_drop(group)) for group in tokens]
    segments = tuple((group.shape[0], group.shape[1]) for group in groups)
    x = torch.cat([group.reshape(-1, group.shape[-1]) for group in groups])
    for block in trunk.blocks:
        if trunk.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(packed_block, cast(Block, block), x, segments, use_reentrant=False)
        else:
            x = packed_block(cast(Block, block), x, segments)
    x = trunk.norm(x)
    parts = torch.split(x, [count * length for count, length in segments])
    return [
        part.reshape(count, length, -1)
        for part, (count, length) in zip(parts, segments, strict=True)
    ]


def check_masks(
    masks: Tensor, mask_token: Tensor | None, batch: int, patches: int, dim: int
) -> Tensor:
    """The mask token as a (D,) vector, after checking masks and token fit the tokens.

    Args:
        masks: (B, N) bool masks.
        mask_token: (1, D) or (D,) token.
        batch: B of the tokens.
        patches: N of the tokens.
        dim: D of the tokens.

    Returns:
        the (D,) token.

    Raises:
        ConfigError: if the token is missing or the shapes disagree.
    """
    if mask_token is None:
        raise ConfigError("forward_tokens got masks but no mask_token; pass the iBOT mask token.")
    if masks.shape != (batch, patches):
        raise ConfigError(
            f"masks have shape {tuple(masks.shape)} but the images give {batch} x "
            f"{patches} patches; build masks for the patch grid of these images."
        )
    token = mask_token.reshape(-1)
    if token.numel() != dim:
        raise ConfigError(f"mask_token has {token.numel()} values but the model's width is {dim}.")
    return token


class TimmViTEncoder(VisionTransformer):
    """A timm ``VisionTransformer`` that implements :class:`~geodino.models.encoder.Encoder`.

    It is also a :class:`~geodino.models.encoder.PackedEncoder`: crops of several sizes can
    share one pass through the blocks.

    timm builds its registered architectures only as ``VisionTransformer``; :meth:`adopt`
    turns such a model into this subclass in place, which adds methods and no state, so the
    model keeps timm's state-dict keys and every timm method (``forward_features``,
    ``forward_intermediates``, ``get_classifier``...).
    """

    band_names: tuple[str, ...] | None

    @classmethod
    def adopt(
        cls, model: VisionTransformer, band_names: Sequence[str] | None = None
    ) -> "TimmViTEncoder":
        """Make a timm ViT an encoder, in place.

        Args:
            model: the timm model.
            band_names: names of its input bands, if known.

        Returns:
            the same object, now a :class:`TimmViTEncoder`.
        """
        if not isinstance(model, cls):
            # the subclass adds methods only, so the object is already a valid instance of it
            model.__class__ = cls
            cast(TimmViTEncoder, model).band_names = None
        encoder = cast(TimmViTEncoder, model)
        if band_names is not None:
            encoder.band_names = tuple(band_names)
        return encoder

    @property
    def patch_size(self) -> int:
        """Side of a patch in pixels."""
        patch = self.patch_embed.patch_size
        return int(patch[0] if isinstance(patch, tuple | list) else patch)

    @property
    def modalities(self) -> None:
        """None: a timm ViT takes one image of stacked bands."""
        return None

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return len(self.blocks)

    def forward_tokens(
        self,
        images: EncoderInput,
        masks: Tensor | None = None,
        mask_token: Tensor | None = None,
        present: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Normalised tokens [CLS, registers..., patches...], with iBOT masking.

        Masked patch embeddings are replaced by ``mask_token`` before position embeddings are
        added, as DINOv2's ``prepare_tokens_with_masks`` does.

        Args:
            images: (B, C, H, W).
            masks: (B, N) bool, True where a patch is masked (N patches in row-major order).
            mask_token: (1, D) or (D,) learned token; required with ``masks``.
            present: must be None (a timm ViT has one modality).

        Returns:
            (B, 1 + R + N, D) tokens after the final norm.

        Raises:
            ConfigError: for a dict of modalities, ``present``, or masks without a token or
                not fitting the patch grid.
        """
        if not isinstance(images, Tensor) or present is not None:
            raise ConfigError(
                f"{type(self).__name__} takes one image tensor, not modalities; use a FusionViT "
                "(model.init_args.modalities) for several modalities."
            )
        return run_blocks(self, self._embed(images, masks, mask_token))

    def forward_tokens_packed(
        self,
        crops: Sequence[Tensor],
        masks: Sequence[Tensor | None],
        mask_token: Tensor | None = None,
    ) -> list[Tensor]:
        """Tokens of several groups of crops in one packed pass per block.

        Equal to :meth:`forward_tokens` on each group, within float rounding (drop path
        draws its random numbers in another order).

        Args:
            crops: (B_i, C, H_i, W_i) images of each group.
            masks: per group, (B_i, N_i) bool iBOT masks or None.
            mask_token: (1, D) or (D,) learned token; required with any masks.

        Returns:
            per group, (B_i, 1 + R + N_i, D) tokens after the final norm.

        Raises:
            ConfigError: if crops and masks differ in number, or masks do not fit.
        """
        if len(masks) != len(crops):
            raise ConfigError(
                f"forward_tokens_packed got {len(crops)} crop groups but {len(masks)} masks; "
                "pass one mask (or None) per group."
            )
        tokens = [
            self._embed(group, group_masks, mask_token)
            for group, group_masks in zip(crops, masks, strict=True)
        ]
        return run_blocks_packed(self, tokens)

    def _embed(self, images: Tensor, masks: Tensor | None, mask_token: Tensor | None) -> Tensor:
        """Patch embeddings, masked ones replaced, then prefix tokens and positions.

        The mask token replaces patch embeddings before positions are added, as DINOv2's
        ``prepare_tokens_with_masks`` does; the rest is timm's ``_pos_embed`` through public
        attributes.
        """
        x: Tensor = self.patch_embed(images)
        if masks is not None:
            # (B, H, W, D) with dynamic sizes, else (B, N, D)
            patches = math.prod(x.shape[1:-1])
            token = check_masks(masks, mask_token, x.shape[0], patches, x.shape[-1]).to(x.dtype)
            flat = x.reshape(x.shape[0], patches, x.shape[-1])
            flat = torch.where(masks.to(torch.bool).unsqueeze(-1), token, flat)
            x = flat.reshape(x.shape)
        batch, dim = x.shape[0], x.shape[-1]
        prefix = [
            token.expand(batch, -1, -1)
            for token in (self.cls_token, self.reg_token)
            if token is not None
        ]
        pos: Tensor | None = self.pos_embed
        if pos is not None and self.dynamic_img_size:
            pos = resample_abs_pos_embed(
                pos,
                new_size=x.shape[1:3],
                old_size=self.patch_embed.grid_size,
                num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens,
            )
        x = x.reshape(batch, -1, dim)
        if pos is None:
            return torch.cat([*prefix, x], dim=1)
        if self.no_embed_class:
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos
        out: Tensor = self.pos_drop(x)
        return out

    def split_tokens(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Split tokens into class token, registers and patch tokens.

        Args:
            tokens: (B, 1 + R + N, D).

        Returns:
            (B, D) class token, (B, R, D) registers, (B, N, D) patches.
        """
        return split_prefix(tokens, self.num_prefix_tokens)

    def block_maps(self, images: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Final-norm patch tokens of some blocks, as (B, D, h, w) maps (timm's intermediates).

        Args:
            images: (B, C, H, W).
            indices: distinct block indices, ascending.

        Returns:
            one map per index.
        """
        maps = self.forward_intermediates(
            images, indices=list(indices), norm=True, output_fmt="NCHW", intermediates_only=True
        )
        # with intermediates_only, timm returns the list of maps
        return cast(list[Tensor], maps)

    def layer_id(self, name: str) -> int:
        """Layer of a parameter for layer-wise lr decay.

        Args:
            name: the parameter's name within the model.

        Returns:
            0 for embeddings and prefix tokens, ``i + 1`` for block ``i``, ``depth + 1`` else.
        """
        if name.startswith(EMBEDDING_PARAMETERS):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1

    def architecture(self) -> EncoderArchitecture:
        """Patch, position grid and widths.

        Returns:
            the record.
        """
        grid = self.patch_embed.grid_size
        return EncoderArchitecture(
            patch_size=self.patch_size,
            grid_size=(int(grid[0]), int(grid[1])),
            embed_dim=int(self.embed_dim),
            num_prefix_tokens=int(self.num_prefix_tokens),
            position_prefix=0 if self.no_embed_class else int(self.num_prefix_tokens),
            in_chans=int(self.patch_embed.proj.in_channels),
            depth=self.depth,
        )


def as_encoder(model: nn.Module) -> Encoder:
    """The encoder interface of a model: itself, or a timm ViT adopted in place.

    Args:
        model: an :class:`~geodino.models.encoder.Encoder` or a timm ``VisionTransformer``.

    Returns:
        the model as an encoder.

    Raises:
        ConfigError: if it is neither.
    """
    if isinstance(model, Encoder):
        return model
    if isinstance(model, VisionTransformer):
        return TimmViTEncoder.adopt(model)
    raise ConfigError(
        f"{type(model).__name__} is not an encoder; geodino takes timm VisionTransformers and "
        "geodino.models.FusionViT."
    )


__all__ = [
    "EMBEDDING_PARAMETERS",
    "Segments",
    "TimmViTEncoder",
    "ViTTrunk",
    "as_encoder",
    "packable",
    "packed_attention",
    "packed_block",
    "run_blocks",
    "run_blocks_packed",
]
