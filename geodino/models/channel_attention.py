"""Panopticon's patch embedding, computed without a token per band.

TorchGeo's :class:`~torchgeo.models.PanopticonPE` projects every patch of every band to the
channel attention's width (2,304 for ViT-B), then projects each of those tokens again to keys
and values, so that a 13-band patch costs ~144 M multiply-adds before the ViT's first block
(whose tokens cost ~85 M each through all twelve). Everything between the pixels and the
attention's output is linear but the softmax over bands, and the query is one learned vector,
so the same output follows from far less:

- each head's logit of a band is a dot product of the band's pixels with one vector per head
  (the band projection's transpose applied to the head's query, seen through its key
  projection), plus the same for the band's identity embedding;
- each head's output is its value projection of the attention-weighted *pixels* (the band
  projection is linear and the weights sum to 1), plus the attention-weighted values of the
  identity embeddings.

:func:`channel_attention_tokens` computes that: the same function of the same parameters
(TorchGeo's module and state dict are unchanged; tested equal in values and gradients), with
one projection to the attention's width per patch instead of three per band and patch.
"""

import torch
import torch.nn.functional as F
from torch import Tensor
from torchgeo.models.panopticon import PanopticonPE


def channel_attention_tokens(
    patch_embed: PanopticonPE, images: Tensor, band_ids: Tensor, band_mask: Tensor | None = None
) -> Tensor:
    """What ``patch_embed({"imgs": images, "chn_ids": band_ids, "spec_masks": band_mask})`` gives.

    Args:
        patch_embed: TorchGeo's Panopticon patch embedding.
        images: (B, C, H, W); pixels beyond the last whole patch are dropped, as TorchGeo's
            strided convolution drops them.
        band_ids: (B, C) band identities; optical ones are floored in place, as TorchGeo does.
        band_mask: (B, C) bool, True for bands left out of the attention.

    Returns:
        (B, L, D) patch tokens, L the number of whole patches.
    """
    conv = patch_embed.conv3d.conv3d
    chnfus = patch_embed.chnfus
    attention = chnfus.xattn
    heads = int(attention.num_heads)
    batch, bands, height, width = images.shape
    size = int(conv.kernel_size[-1])
    rows, cols = height // size, width // size
    # (B, C, L, p * p) in the order of the convolution's kernel
    pixels = (
        images[:, :, : rows * size, : cols * size]
        .reshape(batch, bands, rows, size, cols, size)
        .transpose(3, 4)
        .reshape(batch, bands, rows * cols, size * size)
    )
    kernel = conv.weight.reshape(conv.out_channels, size * size)  # (A, p * p)
    dim = kernel.shape[0] // heads
    # what each band adds to every patch token besides its pixels: its identity and the bias
    offset = chnfus.chnemb(band_ids)  # (B, C, A)
    if conv.bias is not None:
        offset = offset + conv.bias
    # each head's query seen through its key projection: logit = <token, reading>
    query = chnfus.query.reshape(heads, dim) * attention.scale
    key_weight = attention.inproj_k.weight.reshape(heads, dim, -1)  # (H, d, A)
    reading = torch.einsum("hd,hda->ha", query, key_weight)  # (H, A)
    logits = torch.einsum("bclp,hp->bclh", pixels, reading @ kernel)
    logits = logits + torch.einsum("bca,ha->bch", offset, reading)[:, :, None]
    if attention.inproj_k.bias is not None:
        logits = logits + torch.einsum(
            "hd,hd->h", query, attention.inproj_k.bias.reshape(heads, dim)
        )
    if band_mask is not None:
        logits = logits.masked_fill(band_mask[:, :, None, None], float("-inf"))
    weights = logits.softmax(dim=1)  # (B, C, L, H) over the bands
    value_weight = attention.inproj_v.weight.reshape(heads, dim, -1)  # (H, d, A)
    pixel_values = torch.einsum("hda,ap->hdp", value_weight, kernel)  # (H, d, p * p)
    mixed = torch.einsum("bclh,bclp->blhp", weights, pixels)
    tokens = torch.einsum("blhp,hdp->blhd", mixed, pixel_values)
    offset_values = torch.einsum("bca,hda->bchd", offset, value_weight)
    tokens = tokens + torch.einsum("bclh,bchd->blhd", weights, offset_values)
    tokens = tokens.flatten(2)  # (B, L, A), heads in TorchGeo's order
    if attention.inproj_v.bias is not None:
        tokens = tokens + attention.inproj_v.bias
    if hasattr(chnfus, "layer_norm"):  # TorchGeo's own probe of its optional norm
        tokens = chnfus.layer_norm(tokens)
    return F.linear(tokens, patch_embed.proj.weight, patch_embed.proj.bias)


__all__ = ["channel_attention_tokens"]
