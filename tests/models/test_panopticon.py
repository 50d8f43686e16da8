"""Panopticon backbones: TorchGeo's model class, band identities, export and any band subset."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torchgeo.models import Panopticon, Panopticon_Weights

from geodino.bands import SENSOR_BANDS, band_identities
from geodino.errors import ConfigError, DataError, WeightsError
from geodino.export import load_backbone, read_export, write_export
from geodino.models import (
    Encoder,
    PackedEncoder,
    PanopticonViT,
    SpectralEncoder,
    TimmViTEncoder,
    build_panopticon,
    create_encoder,
)
from geodino.transforms.normalize import BandStatistics

S2 = ["B02", "B03", "B04", "B08", "B11"]
#: a Panopticon small enough for the CPU
SMALL = {"embed_dim": 48, "depth": 2, "num_heads": 2, "attn_dim": 48, "attn_heads": 4}


def small(bands: list[str] = S2, **kwargs: object) -> PanopticonViT:
    torch.manual_seed(0)
    args = {**SMALL, "img_size": 56, "sensors": ["sentinel2", "sentinel1"], **kwargs}
    model = create_encoder("panopticon_vitb14", len(bands), args, band_names=bands)
    assert isinstance(model, PanopticonViT)
    return model.eval()


def test_band_identities_of_sensors() -> None:
    assert band_identities(["B02", "b8a", "VV"]) == [492.4, 864.7, -1.0]
    assert band_identities(["SR_B5"], "landsat9") == [864.7]
    # the first sensor that has a name wins: Sentinel-2's B11 is SWIR, Landsat's thermal
    assert band_identities(["B11", "nir1"], ["sentinel2", "worldview3"]) == [1613.7, 833.0]
    assert band_identities(["red"], extra={"RED": 600.0}) == [600.0]
    assert set(SENSOR_BANDS) >= {"sentinel2", "sentinel1", "landsat8", "superdove", "worldview3"}


@pytest.mark.parametrize(
    ("names", "sensor", "message"),
    [
        (["B02", "thermal"], None, "band 'thermal' of the data is not in any sensor"),
        (["B8"], None, "'B8' of the data means different bands"),
        (["red"], "sentinel2", "band 'red' of the data is not in the tables of ['sentinel2']"),
        (["B02"], "sentinel3", "sensor 'sentinel3' of the data is unknown"),
    ],
)
def test_unknown_or_ambiguous_band_names_the_band_and_the_fix(
    names: list[str], sensor: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match="band_wavelengths") as error:
        band_identities(names, sensor)
    assert message in str(error.value)


def test_unknown_band_of_a_backbone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'pan'.*band_wavelengths"):
        small(["B02", "pan"])


def test_encoder_interface_and_any_band_subset() -> None:
    model = small()
    assert isinstance(model, Encoder) and isinstance(model, SpectralEncoder)
    assert isinstance(model, PackedEncoder)
    assert model.band_ids == (492.4, 559.8, 664.6, 832.8, 1613.7)
    images = torch.randn(2, 5, 56, 56)
    tokens = model.forward_tokens(images)
    assert tokens.shape == (2, 1 + 16, 48)
    ids = torch.tensor(model.band_ids)
    torch.testing.assert_close(model.forward_spectral(images, ids), tokens)
    # other sizes resample the position grid
    assert model.forward_tokens(torch.randn(1, 5, 28, 28)).shape == (1, 5, 48)
    # a subset of bands: selected by name, or hidden by a band mask, gives the same tokens
    rgbn = model.select_bands(["B04", "B03", "B02", "B08"])
    assert rgbn.in_chans == 4 and model.in_chans == 5
    subset = rgbn.forward_tokens(images[:, [2, 1, 0, 3]])
    hidden = torch.tensor([[False, False, False, False, True]] * 2)
    torch.testing.assert_close(model.forward_spectral(images, ids, hidden), subset)
    assert rgbn.patch_embed is model.patch_embed  # shared weights
    # SAR and 8-band commercial bands in one model
    sar = model.forward_spectral(torch.randn(2, 2, 56, 56), torch.tensor([-1.0, -2.0]))
    assert torch.isfinite(sar).all()
    with pytest.raises(DataError, match="default bands"):
        model.forward_tokens(torch.randn(1, 3, 56, 56))
    with pytest.raises(DataError, match="at least one band"):
        model.forward_spectral(images, ids, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(DataError, match="'VV'"):
        model.select_bands(["VV"])
    maps = model.block_maps(images, [0, 1])
    assert [m.shape for m in maps] == [(2, 48, 4, 4)] * 2
    torch.testing.assert_close(maps[1].flatten(2).transpose(1, 2), tokens[:, 1:])


def test_masked_tokens_and_gradients() -> None:
    model = small().train()
    images = torch.randn(2, 5, 56, 56)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[:, :5] = True
    token = torch.zeros(1, 48, requires_grad=True)
    out = model.forward_spectral(images, torch.tensor(model.band_ids), None, masks, token)
    out.sum().backward()
    assert token.grad is not None and token.grad.abs().sum() > 0
    conv = model.patch_embed.conv3d.conv3d.weight.grad
    assert conv is not None and conv.abs().sum() > 0


def test_export_loads_into_torchgeo_panopticon_with_every_tensor_equal(tmp_path: Path) -> None:
    """TorchGeo's own Panopticon class (ViT-B/14) takes the export unchanged."""
    torch.manual_seed(1)
    bands = ["B04", "B03", "B02", "VV"]
    model = build_panopticon("panopticon_vitb14", 4, band_names=bands).eval()
    paths = write_export(
        model.state_dict(),
        tmp_path,
        "panopticon_vitb14",
        4,
        model_kwargs={"img_size": 224},
        bands=bands,
    )
    record = read_export(tmp_path)
    assert record.torchgeo_compatible and record.model == "panopticon_vitb14"
    theirs = Panopticon().eval()
    state = load_file(paths["safetensors"])
    theirs.model.load_state_dict(state, strict=True)
    ours = model.state_dict()
    assert theirs.model.state_dict().keys() == ours.keys()
    for key, value in theirs.model.state_dict().items():
        assert torch.equal(value, ours[key]), key
    images = torch.randn(2, 4, 56, 56)
    ids = torch.tensor([band_identities(bands)] * 2)
    with torch.no_grad():
        expected = theirs({"imgs": torch.randn(1, 4, 224, 224), "chn_ids": ids[:1].clone()})
    assert expected.shape == (1, 768)
    with torch.no_grad():
        x = torch.randn(1, 4, 224, 224)
        torch.testing.assert_close(model(x), theirs({"imgs": x, "chn_ids": ids[:1].clone()}))
        # geodino reads the export back, with its band identities
        loaded = load_backbone(tmp_path)
        assert isinstance(loaded.model, PanopticonViT)
        assert loaded.model.band_ids == model.band_ids
        torch.testing.assert_close(
            loaded.model.forward_tokens(images), model.forward_tokens(images)
        )


def test_small_export_round_trip_and_band_subsets(tmp_path: Path) -> None:
    model = small()
    stats = BandStatistics(S2, [1000.0] * 5, [500.0] * 5)
    write_export(
        model.state_dict(),
        tmp_path,
        "panopticon_vitb14",
        5,
        model_kwargs={**SMALL, "img_size": 56, "sensors": ["sentinel2"]},
        bands=S2,
        statistics={"band_names": S2, "mean": stats.mean, "std": stats.std},
    )
    assert not read_export(tmp_path).torchgeo_compatible
    backbone = load_backbone(tmp_path)
    assert isinstance(backbone.model, PanopticonViT)
    loaded = backbone.model.state_dict()
    # the position grid is stored at the architecture's default size (224 px), all else as is
    for key, value in model.state_dict().items():
        assert key == "pos_embed" or torch.equal(loaded[key], value), key
    images = torch.rand(2, 5, 56, 56) * 3000
    with torch.no_grad():
        torch.testing.assert_close(
            backbone.tokens(images), backbone.model.forward_tokens((images - 1000) / 500)
        )
    rgb = backbone.for_bands(["B04", "B03", "B02"], 3, "rgb chips")
    assert rgb.in_chans == 3 and rgb.band_names == ["B04", "B03", "B02"]
    assert rgb.tokens(images[:, [2, 1, 0]]).shape == (2, 17, 48)
    with pytest.raises(DataError, match="'VV'"):
        backbone.for_bands(["VV"], 1, "sar chips")
    with pytest.raises(DataError, match="does not name its 3 bands"):
        backbone.for_bands(None, 3, "unnamed chips")


def test_fixed_band_backbones_still_refuse_other_bands(tmp_path: Path) -> None:
    from tests.conftest import TINY_BANDS, write_tiny_export

    backbone = load_backbone(write_tiny_export(tmp_path))
    assert isinstance(backbone.model, TimmViTEncoder)
    assert backbone.for_bands(TINY_BANDS, 4, "same bands") is backbone
    with pytest.raises(DataError, match="has 3 bands"):
        backbone.for_bands(TINY_BANDS[:3], 3, "subset")


def test_panopticon_weights_come_from_the_local_cache_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="not in the local cache"):
        build_panopticon("panopticon_vitb14", weights=Panopticon_Weights.VIT_BASE14)


def test_cached_panopticon_weights_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file at the enum's cache path (here a stand-in of the same layout) is loaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(2)
    reference = Panopticon(img_size=518).model
    state = {**reference.state_dict(), "mask_token": torch.zeros(1, 768)}
    name = Path(Panopticon_Weights.VIT_BASE14.url).name
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / name)
    model = build_panopticon(
        "panopticon_vitb14", band_names=["B04"], weights=Panopticon_Weights.VIT_BASE14
    )
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)
    assert model.pos_embed.shape == (1, 1 + 16 * 16, 768)
