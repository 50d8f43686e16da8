"""timm's VisionTransformer as an :class:`~geodino.models.encoder.Encoder`.

This module is the one place that knows how a timm ViT runs inside: the mask-token insertion
between the patch embedding and the position embedding, and the block loop after it (which
:class:`~geodino.models.fusion.FusionViT` reuses for its shared transformer).
"""

import math
from collections.abc import Mapping, Sequence
from typing import Protocol, cast

import torch
from timm.models import VisionTransformer, checkpoint_seq
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

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
        if masks is None:
            out: Tensor = self.forward_features(images)
            return out
        handle = self._insert_mask_token(masks, mask_token)
        try:
            out = self.forward_features(images)
        finally:
            handle.remove()
        return out

    def _insert_mask_token(self, masks: Tensor, mask_token: Tensor | None) -> RemovableHandle:
        """A hook replacing the masked patch embeddings, before timm adds positions."""

        def replace(_module: nn.Module, _args: object, x: Tensor) -> Tensor:
            # (B, H, W, D) with dynamic sizes, else (B, N, D)
            patches = math.prod(x.shape[1:-1])
            token = check_masks(masks, mask_token, x.shape[0], patches, x.shape[-1]).to(x.dtype)
            flat = x.reshape(x.shape[0], patches, x.shape[-1])
            flat = torch.where(masks.to(torch.bool).unsqueeze(-1), token, flat)
            return flat.reshape(x.shape)

        handle: RemovableHandle = self.patch_embed.register_forward_hook(replace)
        return handle

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


__all__ = ["EMBEDDING_PARAMETERS", "TimmViTEncoder", "ViTTrunk", "as_encoder", "run_blocks"]
