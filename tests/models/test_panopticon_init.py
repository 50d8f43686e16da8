"""From scratch, a Panopticon patch embedding starts attending to bands of its own."""

import math

import torch

from geodino.models import PanopticonViT, create_encoder

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
SMALL = {
    "img_size": 28,
    "embed_dim": 48,
    "depth": 1,
    "num_heads": 2,
    "attn_dim": 48,
    "sensors": "sentinel2",
}


def build(**kwargs: float) -> PanopticonViT:
    torch.manual_seed(0)
    model = create_encoder(
        "panopticon_vitb14", 13, {**SMALL, "attn_heads": 4, **kwargs}, band_names=S2
    )
    assert isinstance(model, PanopticonViT)
    return model


def band_attention_entropy(model: PanopticonViT, images: torch.Tensor) -> float:
    """Entropy over bands of each head's channel attention, as a fraction of log C."""
    pe = model.patch_embed
    ids = torch.tensor(model.band_ids).expand(images.shape[0], -1).clone()
    x, _, _ = pe.conv3d(images)  # (B, C, L, D)
    x = x + pe.chnfus.chnemb(ids).unsqueeze(2)
    attn = pe.chnfus.xattn
    heads, dim = attn.num_heads, x.shape[-1]
    keys = attn.inproj_k(x).unflatten(-1, (heads, dim // heads))  # (B, C, L, H, d)
    query = pe.chnfus.query.reshape(heads, dim // heads) * attn.scale
    weights = torch.einsum("bclhd,hd->blhc", keys, query).softmax(-1)
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1).mean()
    return float(entropy) / math.log(images.shape[1])


@torch.no_grad()
def test_channel_attention_starts_selective_and_sar_polarisations_apart() -> None:
    images = torch.randn(8, 13, 28, 28)
    ours, torchgeo = build(), build(channel_query_std=1.0, sar_embedding_std=0.0)
    # TorchGeo's initialisation: nearly uniform attention, every patch the mean of its bands
    assert band_attention_entropy(torchgeo, images) > 0.9
    assert band_attention_entropy(ours, images) < 0.75
    sar = torch.tensor([[-1.0, -2.0]])
    vv, vh = torchgeo.patch_embed.chnfus.chnemb(sar.clone())[0]
    assert torch.equal(vv, vh)
    vv, vh = ours.patch_embed.chnfus.chnemb(sar.clone())[0]
    assert not torch.allclose(vv, vh)
    # an initialisation, not an architecture: the same tensors, loadable either way
    assert ours.state_dict().keys() == torchgeo.state_dict().keys()
