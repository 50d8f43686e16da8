"""The encoder interface: what tasks, export, segmentation and evaluation ask of a backbone.

Every backbone geodino builds implements :class:`Encoder`: a timm ViT through
:class:`~geodino.models.timm_adapter.TimmViTEncoder`, several modalities through
:class:`~geodino.models.fusion.FusionViT`. Code above the models asks this interface, never
which class it holds.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

#: Images an encoder takes: one (B, C, H, W) tensor, or (multimodal encoders) a dict of
#: modality images.
EncoderInput = Tensor | Mapping[str, Tensor]


@dataclass(frozen=True)
class EncoderArchitecture:
    """The shape facts of an encoder that export and fine-tuning need.

    Args:
        patch_size: side of a patch in pixels.
        grid_size: (rows, columns) of the stored position embedding.
        embed_dim: width of the tokens.
        num_prefix_tokens: class and register tokens before the patches.
        position_prefix: prefix positions in the stored position embedding (0 when the
            prefix tokens carry no position, as with timm's ``no_embed_class``).
        in_chans: number of input bands.
        depth: number of transformer blocks.
    """

    patch_size: int
    grid_size: tuple[int, int]
    embed_dim: int
    num_prefix_tokens: int
    position_prefix: int
    in_chans: int
    depth: int

    @property
    def img_size(self) -> tuple[int, int]:
        """The image size whose patches fill the stored position grid."""
        return self.grid_size[0] * self.patch_size, self.grid_size[1] * self.patch_size


@runtime_checkable
class Encoder(Protocol):
    """A ViT-style encoder: images in, normalised ``[CLS, registers..., patches...]`` out.

    Implementations are ``nn.Module`` objects whose state-dict keys follow timm's ViT
    (``cls_token``, ``pos_embed``, ``blocks.<i>.*``, ``norm.*``).
    """

    @property
    def patch_size(self) -> int:
        """Side of a patch in pixels."""
        ...

    @property
    def embed_dim(self) -> int:
        """Width of the tokens."""
        ...

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens before the patch tokens."""
        ...

    @property
    def in_chans(self) -> int:
        """Number of input bands (all modalities' bands stacked, for a multimodal encoder)."""
        ...

    @property
    def band_names(self) -> tuple[str, ...] | None:
        """Names of the input bands in channel order, None when unknown."""
        ...

    @property
    def modalities(self) -> Mapping[str, int] | None:
        """Band count of each modality in channel order; None for a single-modality encoder."""
        ...

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        ...

    def forward_tokens(
        self,
        images: EncoderInput,
        masks: Tensor | None = None,
        mask_token: Tensor | None = None,
        present: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Normalised tokens, masked patches replaced by ``mask_token`` (iBOT).

        Args:
            images: (B, C, H, W) images, or a dict of modality images (multimodal encoders).
            masks: (B, N) bool, True where a patch token is replaced by ``mask_token``.
            mask_token: (1, D) or (D,) learned token; required with ``masks``.
            present: per modality, (B,) bool telling which samples keep it (multimodal
                encoders only).

        Returns:
            (B, 1 + R + N, D) tokens after the final norm.
        """
        ...

    def split_tokens(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Split tokens into class token, registers and patch tokens.

        Args:
            tokens: (B, 1 + R + N, D) tokens of :meth:`forward_tokens`.

        Returns:
            (B, D) class token, (B, R, D) registers, (B, N, D) patches.
        """
        ...

    def block_maps(self, images: Tensor, indices: Sequence[int]) -> list[Tensor]:
        """Final-norm patch tokens of some blocks, as (B, D, h, w) maps.

        Args:
            images: (B, C, H, W), H and W multiples of the patch size.
            indices: block indices, each in ``0..depth - 1``.

        Returns:
            one map per index, in the order given.
        """
        ...

    def layer_id(self, name: str) -> int:
        """Layer of a parameter for layer-wise lr decay.

        Args:
            name: the parameter's name within the encoder.

        Returns:
            0 for embeddings (patch, position, prefix tokens and whatever precedes the
            blocks), ``i + 1`` for block ``i``, ``depth + 1`` for everything after.
        """
        ...

    def architecture(self) -> EncoderArchitecture:
        """The encoder's shape facts (patch, position grid, widths).

        Returns:
            the record.
        """
        ...


@runtime_checkable
class PackedEncoder(Encoder, Protocol):
    """An encoder that runs crops of several sizes through its blocks in one packed pass.

    The tokens of all crops are concatenated for every token-wise layer (norms, projections,
    MLPs) and attend only within their own crop: a block-diagonal attention, as the official
    DINOv2 runs global and local crops through xFormers.
    """

    def forward_tokens_packed(
        self,
        crops: Sequence[Tensor],
        masks: Sequence[Tensor | None],
        mask_token: Tensor | None = None,
    ) -> list[Tensor]:
        """Normalised tokens of each crop group, as :meth:`Encoder.forward_tokens` gives them.

        Args:
            crops: (B_i, C, H_i, W_i) images of each group (one size per group).
            masks: per group, (B_i, N_i) bool iBOT masks or None.
            mask_token: (1, D) or (D,) learned token; required with any masks.

        Returns:
            per group, (B_i, 1 + R + N_i, D) tokens after the final norm.
        """
        ...


def split_prefix(tokens: Tensor, num_prefix_tokens: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split ``[CLS, registers..., patches...]`` tokens.

    Args:
        tokens: (B, 1 + R + N, D).
        num_prefix_tokens: 1 + R.

    Returns:
        (B, D) class token, (B, R, D) registers, (B, N, D) patches.
    """
    return tokens[:, 0], tokens[:, 1:num_prefix_tokens], tokens[:, num_prefix_tokens:]


__all__ = ["Encoder", "EncoderArchitecture", "EncoderInput", "PackedEncoder", "split_prefix"]
