"""DOFA backbones: TorchGeo's model class, band identities, export and any band subset."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torchgeo.models import DOFA, DOFABase16_Weights

from geodino.errors import ConfigError, DataError, WeightsError
from geodino.export import load_backbone, read_export, write_export
from geodino.models import (
    DofaViT,
    Encoder,
    SpectralEncoder,
    build_dofa,
    create_encoder,
)
from geodino.models.dofa import DOFA_SAR_WAVELENGTHS
from geodino.transforms.normalize import BandStatistics

BANDS = ["B02", "B03", "B04", "B08", "VV", "VH"]
#: a DOFA small enough for the CPU (patch 14 as the DINOv2 ViTs)
SMALL = {"embed_dim": 48, "depth": 2, "num_heads": 2, "patch_size": 14}


def small(bands: list[str] = BANDS, **kwargs: object) -> DofaViT:
    torch.manual_seed(0)
    args = {**SMALL, "img_size": 56, "sensors": ["sentinel2", "sentinel1"], **kwargs}
    model = create_encoder("dofa_base_patch16_224", len(bands), args, band_names=bands)
    assert isinstance(model, DofaViT)
    return model.eval()


def test_encoder_interface_band_subsets_and_masks() -> None:
    model = small()
    assert isinstance(model, Encoder) and isinstance(model, SpectralEncoder)
    assert model.band_ids == (492.4, 559.8, 664.6, 832.8, -1.0, -2.0)
    ids = torch.tensor(model.band_ids)
    torch.testing.assert_close(
        model.dofa_wavelengths(ids),
        torch.tensor([0.4924, 0.5598, 0.6646, 0.8328, 3.75, 3.85]),
    )
    images = torch.randn(2, 6, 56, 56)
    tokens = model.forward_tokens(images)
    assert tokens.shape == (2, 1 + 16, 48)
    torch.testing.assert_close(model.forward_spectral(images, ids), tokens)
    assert model.forward_tokens(torch.randn(1, 6, 28, 28)).shape == (1, 5, 48)
    # a subset by name: kernels generated from the subset's wavelengths alone, as TorchGeo's
    # DOFA generates them for the bands it is given
    rgbn = model.select_bands(["B04", "B03", "B02", "B08"])
    assert rgbn.in_chans == 4 and rgbn.patch_embed is model.patch_embed
    subset = rgbn.forward_tokens(images[:, [2, 1, 0, 3]])
    torch.testing.assert_close(
        model.forward_spectral(images[:, [2, 1, 0, 3]], ids[[2, 1, 0, 3]]), subset
    )
    # a band mask leaves a hidden band out of its sample's tokens: its pixels do not matter
    hidden = torch.tensor([[False, False, False, False, True, True], [False] * 6])
    changed = images.clone()
    changed[0, 4:] = torch.randn(2, 56, 56) * 10
    masked = model.forward_spectral(images, ids, hidden)
    torch.testing.assert_close(model.forward_spectral(changed, ids, hidden)[0], masked[0])
    assert not torch.allclose(model.forward_spectral(changed, ids)[0], tokens[0])
    torch.testing.assert_close(masked[1], tokens[1])
    # per-sample identities: each row embedded with its own bands' kernels
    rows = torch.stack([ids, ids[[1, 0, 2, 3, 4, 5]]])
    mixed = model.forward_spectral(images, rows)
    torch.testing.assert_close(mixed[0], tokens[0])
    torch.testing.assert_close(
        mixed[1], model.forward_spectral(images[1:], ids[[1, 0, 2, 3, 4, 5]])[0]
    )
    maps = model.block_maps(images, [1])
    torch.testing.assert_close(maps[0].flatten(2).transpose(1, 2), tokens[:, 1:])


def test_polarisations_are_told_apart() -> None:
    """DOFA's published weights saw 3.75 µm for VV and VH alike; geodino's kernels differ."""
    model = small()
    sar = torch.randn(2, 2, 56, 56)
    ids = torch.tensor([-1.0, -2.0])
    swapped = model.forward_spectral(sar.flip(1), ids)
    assert not torch.allclose(model.forward_spectral(sar, ids), swapped, atol=1e-4)
    alike = small(sar_wavelengths={"vh": DOFA_SAR_WAVELENGTHS["VV"]})
    torch.testing.assert_close(
        alike.forward_spectral(sar, ids), alike.forward_spectral(sar.flip(1), ids)
    )
    with pytest.raises(DataError, match=r"\[-7.0\].*band_wavelengths"):
        model.forward_spectral(sar, torch.tensor([-1.0, -7.0]))
    with pytest.raises(ConfigError, match="'XX'"):
        small(sar_wavelengths={"xx": 4.0})
    with pytest.raises(ConfigError, match=r"'pan'.*band_wavelengths"):
        small(["B02", "pan"])


def test_gradients_reach_the_weight_generator_and_the_mask_token() -> None:
    model = small().train()
    images = torch.randn(2, 6, 56, 56)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[:, :5] = True
    token = torch.zeros(1, 48, requires_grad=True)
    out = model.forward_spectral(images, torch.tensor(model.band_ids), None, masks, token)
    out.sum().backward()
    assert token.grad is not None and token.grad.abs().sum() > 0
    grad = model.patch_embed.weight_generator.fc_weight.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_export_loads_into_torchgeo_dofa_with_every_tensor_equal(tmp_path: Path) -> None:
    """TorchGeo's own DOFA class (ViT-B/16, class token) takes the export unchanged."""
    torch.manual_seed(1)
    bands = ["B04", "B03", "B02", "VV"]
    model = build_dofa("dofa_base_patch16_224", 4, band_names=bands).eval()
    paths = write_export(
        model.state_dict(),
        tmp_path,
        "dofa_base_patch16_224",
        4,
        model_kwargs={"img_size": 224},
        bands=bands,
    )
    record = read_export(tmp_path)
    assert record.torchgeo_compatible and record.model == "dofa_base_patch16_224"
    theirs = DOFA(embed_dim=768, depth=12, num_heads=12, num_classes=0, global_pool=False).eval()
    theirs.load_state_dict(load_file(paths["safetensors"]), strict=True)
    ours = model.state_dict()
    assert theirs.state_dict().keys() == ours.keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(value, ours[key]), key
    wavelengths = model.dofa_wavelengths(torch.tensor(model.band_ids)).tolist()
    x = torch.randn(2, 4, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), theirs.forward_features(x, wavelengths))
        loaded = load_backbone(tmp_path)
        assert isinstance(loaded.model, DofaViT) and loaded.model.band_ids == model.band_ids
        torch.testing.assert_close(loaded.model(x), model(x))


def test_small_export_round_trip_and_band_subsets(tmp_path: Path) -> None:
    model = small()
    stats = BandStatistics(BANDS, [1000.0] * 6, [500.0] * 6)
    write_export(
        model.state_dict(),
        tmp_path,
        "dofa_base_patch16_224",
        6,
        model_kwargs={**SMALL, "img_size": 56, "sensors": ["sentinel2", "sentinel1"]},
        bands=BANDS,
        statistics={"band_names": BANDS, "mean": stats.mean, "std": stats.std},
    )
    assert not read_export(tmp_path).torchgeo_compatible
    backbone = load_backbone(tmp_path)
    assert isinstance(backbone.model, DofaViT)
    loaded = backbone.model.state_dict()
    # the position grid is stored at the architecture's default size (224 px), all else as is
    for key, value in model.state_dict().items():
        assert key == "pos_embed" or torch.equal(loaded[key], value), key
    images = torch.rand(2, 6, 56, 56) * 3000
    with torch.no_grad():
        torch.testing.assert_close(
            backbone.tokens(images), backbone.model.forward_tokens((images - 1000) / 500)
        )
        vv = backbone.for_bands(["VV"], 1, "VV chips")
        assert vv.tokens(images[:, [4]]).shape == (2, 17, 48)
    with pytest.raises(DataError, match="'B11'"):
        backbone.for_bands(["B11"], 1, "swir chips")


def test_dofa_weights_come_from_the_local_cache_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="not in the local cache"):
        build_dofa(weights=DOFABase16_Weights.DOFA_MAE)


def test_cached_dofa_weights_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file at the enum's cache path in the published layout (no final norm) is loaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(2)
    reference = DOFA(embed_dim=768, depth=12, num_heads=12)  # fc_norm, head: not published
    state = {
        k: v for k, v in reference.state_dict().items() if not k.startswith(("fc_norm", "head"))
    }
    name = Path(DOFABase16_Weights.DOFA_MAE.url).name
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / name)
    model = build_dofa(band_names=["B04"], weights=DOFABase16_Weights.DOFA_MAE)
    for key in ("blocks.0.attn.qkv.weight", "patch_embed.weight_generator.fc_weight.weight"):
        torch.testing.assert_close(model.state_dict()[key], state[key])
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "hub" / "checkpoints" / name)
    with pytest.raises(WeightsError, match=r"unexpected extra\.weight"):
        build_dofa(band_names=["B04"], weights=DOFABase16_Weights.DOFA_MAE)
