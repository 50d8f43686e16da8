"""From scratch, each head of a Panopticon patch embedding starts on a band of its own."""

import math

import torch

from geodino.bands import SENSOR_BANDS, band_identities
from geodino.models import PanopticonViT, create_encoder
from geodino.models.panopticon import head_targets, spectral_positions

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
MIXED = [*S2, "VV", "VH", *SENSOR_BANDS["worldview3"]]
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


def band_attention(model: PanopticonViT, images: torch.Tensor) -> torch.Tensor:
    """Each head's channel attention over the bands of each patch, (B, L, heads, C)."""
    pe = model.patch_embed
    ids = torch.tensor(model.band_ids).expand(images.shape[0], -1).clone()
    x, _, _ = pe.conv3d(images)  # (B, C, L, D)
    x = x + pe.chnfus.chnemb(ids).unsqueeze(2)
    attn = pe.chnfus.xattn
    heads, dim = attn.num_heads, x.shape[-1]
    keys = attn.inproj_k(x).unflatten(-1, (heads, dim // heads))  # (B, C, L, H, d)
    query = pe.chnfus.query.reshape(heads, dim // heads) * attn.scale
    return torch.einsum("bclhd,hd->blhc", keys, query).softmax(-1)


def band_attention_entropy(model: PanopticonViT, images: torch.Tensor) -> float:
    """Entropy over bands of each head's channel attention, as a fraction of log C."""
    weights = band_attention(model, images)
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1).mean()
    return float(entropy) / math.log(images.shape[1])


@torch.no_grad()
def test_channel_attention_starts_selective_and_sar_polarisations_apart() -> None:
    images = torch.randn(8, 13, 28, 28)
    ours = build()
    torchgeo = build(
        channel_query_std=1.0, sar_embedding_std=0.0, band_conv_scale=1.0, channel_query_logit=None
    )
    # TorchGeo's initialisation: nearly uniform attention, every patch the mean of its bands
    assert band_attention_entropy(torchgeo, images) > 0.9
    assert band_attention_entropy(ours, images) < 0.15
    sar = torch.tensor([[-1.0, -2.0]])
    vv, vh = torchgeo.patch_embed.chnfus.chnemb(sar.clone())[0]
    assert torch.equal(vv, vh)
    vv, vh = ours.patch_embed.chnfus.chnemb(sar.clone())[0]
    assert not torch.allclose(vv, vh)
    # an initialisation, not an architecture: the same tensors, loadable either way
    assert ours.state_dict().keys() == torchgeo.state_dict().keys()


@torch.no_grad()
def test_each_head_starts_on_a_band_of_its_own_whatever_the_pixels() -> None:
    """The heads are spread over the default bands; identities, not pixels, choose the band."""
    model = build()
    weights = band_attention(model, torch.randn(8, 13, 28, 28))  # (B, L, heads, C)
    # 4 heads over 13 bands sorted by wavelength: B01, B05, B8A, B12
    assert weights.mean((0, 1)).argmax(-1).tolist() == [0, 4, 8, 12]
    assert weights.amax(-1).mean() > 0.9
    other = band_attention(model, torch.randn(8, 13, 28, 28) * 3)
    assert (other.mean((0, 1)) - weights.mean((0, 1))).abs().max() < 0.1
    # with a random query and TorchGeo's band projection the pixels choose (the old init)
    drawn = build(band_conv_scale=1.0, channel_query_logit=None, channel_query_std=4.0)
    first = band_attention(drawn, torch.randn(8, 13, 28, 28)).flatten(0, 1)
    spread = 0.5 * (first[:, None] - first[None, :]).abs().sum(-1).mean()
    assert spread > 0.3  # total variation between the patches' attention


@torch.no_grad()
def test_each_head_starts_with_the_same_logit_on_its_band_at_any_width() -> None:
    """A query of fixed norm saturates the softmax at ViT-B's width; a fixed logit does not."""
    for kwargs in (
        {**SMALL, "attn_dim": 96, "attn_heads": 16},
        {"depth": 1, "sensors": "sentinel2"},
    ):
        torch.manual_seed(0)
        model = create_encoder("panopticon_vitb14", 13, kwargs, band_names=S2)
        assert isinstance(model, PanopticonViT)
        chnfus = model.patch_embed.chnfus
        heads = chnfus.xattn.num_heads
        embeddings = chnfus.chnemb(torch.tensor([model.band_ids]))[0]  # (C, D)
        keys = chnfus.xattn.inproj_k(embeddings).unflatten(-1, (heads, -1))  # (C, H, d)
        query = chnfus.query.reshape(heads, -1)
        logits = torch.einsum("chd,hd->hc", keys, query) * chnfus.xattn.scale
        targets = [round(h * 12 / (heads - 1)) for h in range(heads)]  # spread over 13 bands
        torch.testing.assert_close(logits[torch.arange(heads), targets], torch.full((heads,), 24.0))


def test_bands_two_sensors_share_are_one_spectral_position() -> None:
    """Sentinel-2 B03 (559.8 nm) and WorldView-3 green (547 nm) are one position."""
    ids = band_identities(MIXED, ["sentinel2", "sentinel1", "worldview3"])
    positions = spectral_positions(ids)
    assert [547.0, 559.8] in positions
    assert [-2.0] in positions and [-1.0] in positions  # SAR ids 1 apart stay apart
    assert len(positions) == 16  # 23 bands: 14 optical positions and two polarisations
    # the bands of one sensor are each a position
    assert len(spectral_positions(band_identities(S2, "sentinel2"))) == 13
    assert head_targets(ids, 16) == positions


@torch.no_grad()
def test_each_band_of_each_sensor_takes_a_head_in_a_mixed_model() -> None:
    """With narrow heads (6 dims) a head's query pointed at its band's key alone left 4 of
    Sentinel-2's 13 bands without a head in the mixed model; every band now has one."""
    torch.manual_seed(0)
    model = create_encoder(
        "panopticon_vitb14",
        len(MIXED),
        {
            **SMALL,
            "attn_dim": 96,
            "attn_heads": 16,
            "sensors": ["sentinel2", "sentinel1", "worldview3"],
        },
        band_names=MIXED,
    )
    assert isinstance(model, PanopticonViT)
    for bands in (S2, list(SENSOR_BANDS["worldview3"]), ["VV", "VH"]):
        weights = band_attention(model.select_bands(bands), torch.randn(4, len(bands), 28, 28))
        weights = weights.mean((0, 1))  # (heads, C)
        top = weights.amax(-1) > 0.9  # heads whose position this sensor has
        assert sorted(weights[top].argmax(-1).tolist()) == list(range(len(bands)))
        # a head whose position the sensor lacks starts uniform over its bands
        torch.testing.assert_close(
            weights[~top], torch.full_like(weights[~top], 1 / len(bands)), atol=0.05, rtol=0
        )
