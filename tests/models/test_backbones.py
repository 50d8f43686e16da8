"""Backbones: official DINOv2 weights reproduce the reference; TorchGeo, geodino, bands."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from geodino.errors import ConfigError, WeightsError
from geodino.models import build_backbone, forward_tokens, split_tokens
from geodino.models.backbones import adapt_patch_embed, convert_official_state_dict, load_mask_token

REG4 = "vit_small_patch14_reg4_dinov2"
TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def ref(dinov2_reference: dict) -> dict:
    return dinov2_reference["backbone"]


def _size(ref: dict) -> dict:
    """timm arguments of the reference's small official backbone."""
    return {k: ref["config"][k] for k in ("depth", "embed_dim", "num_heads")}


def _check(
    model: torch.nn.Module,
    ref: dict,
    masks: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> None:
    with torch.no_grad():
        tokens = forward_tokens(model.eval(), ref["input"], masks, mask_token)
    cls, regs, patches = split_tokens(model, tokens)
    expected = ref if masks is None else ref["masked"]
    torch.testing.assert_close(cls, expected["x_norm_clstoken"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(regs, expected["x_norm_regtokens"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(patches, expected["x_norm_patchtokens"], rtol=1e-5, atol=1e-5)


def test_official_training_format_reproduces_the_reference(ref: dict, tmp_path: Path) -> None:
    assert ref["config"]["interpolate_offset"] == 0.0 and ref["config"]["interpolate_antialias"]
    path = tmp_path / "teacher_checkpoint.pth"
    state = {f"backbone.{k}": v for k, v in ref["state_dict"].items()}
    torch.save({"teacher": state}, path)
    model = build_backbone(REG4, 13, weights=path, **_size(ref))
    grid = ref["config"]["img_size"] // 14
    assert ref["input"].shape[-1] // 14 < grid  # the input makes the model resample
    assert model.patch_embed.grid_size == (grid, grid)  # the weights' own, resampled per input
    _check(model, ref)
    mask_token = load_mask_token(path)
    assert mask_token is not None
    torch.testing.assert_close(mask_token, ref["state_dict"]["mask_token"].reshape(1, -1))
    # the official mask token replaces the masked patches as the official forward does
    _check(model, ref, ref["masked"]["masks"], mask_token)
    # the whole official training checkpoint (student and teacher of SSLMetaArch)
    full = tmp_path / "model_final.pth"
    torch.save(
        {
            "model": {f"teacher.backbone.{k}": v for k, v in ref["state_dict"].items()}
            | {"student.backbone.norm.weight": torch.zeros(ref["config"]["embed_dim"])},
            "iteration": 9,
        },
        full,
    )
    _check(build_backbone(REG4, 13, weights=full, **_size(ref)), ref)


def test_resampling_at_load_matches_the_official_interpolation(ref: dict, tmp_path: Path) -> None:
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in ref["state_dict"].items()}}, path)
    size = ref["input"].shape[-1]
    n, width = (size // 14) ** 2, ref["config"]["embed_dim"]
    model = build_backbone(REG4, 13, weights=path, img_size=size, **_size(ref))
    assert model.pos_embed.shape == (1, n, width)
    _check(model, ref)
    _check(model, ref, ref["masked"]["masks"], load_mask_token(path))
    # a timm model whose position embedding covers the class and register tokens
    with_prefix = build_backbone(
        "vit_small_patch14_dinov2", 13, weights=path, reg_tokens=4, img_size=size, **_size(ref)
    )
    assert with_prefix.pos_embed.shape == (1, 5 + n, width)
    _check(with_prefix, ref)


def test_official_hub_format_and_timm_round_trip(ref: dict, tmp_path: Path) -> None:
    hub = {k.replace("blocks.0.", "blocks."): v for k, v in ref["state_dict"].items()}
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(hub, path)
    model = build_backbone(REG4, 13, weights=path, **_size(ref))
    _check(model, ref)
    timm_file = tmp_path / "timm.safetensors"
    save_file(model.state_dict(), str(timm_file))
    _check(build_backbone(REG4, 13, weights=timm_file, **_size(ref)), ref)
    converted = convert_official_state_dict(hub, model)
    assert "mask_token" not in converted
    assert converted["reg_token"].shape == (1, 4, ref["config"]["embed_dim"])


def test_masked_tokens_follow_dinov2(ref: dict) -> None:
    size, width = ref["input"].shape[-1], ref["config"]["embed_dim"]
    n = (size // 14) ** 2
    model = build_backbone(REG4, 13, depth=1, img_size=size, embed_dim=width, num_heads=4).eval()
    x = ref["input"][:1]
    token = torch.randn(1, width)
    inputs: list[torch.Tensor] = []
    model.blocks[0].register_forward_pre_hook(lambda _, args: inputs.append(args[0].clone()))
    none = torch.zeros(1, n, dtype=torch.bool)
    with torch.no_grad():
        plain = forward_tokens(model, x)
        torch.testing.assert_close(forward_tokens(model, x, none, token.reshape(-1)), plain)
        masks = none.clone()
        masks[0, 10] = True
        masked = forward_tokens(model, x, masks, token)
        embedding = model.patch_embed(x).reshape(1, n, width)[0, 10]
    patch = model.num_prefix_tokens + 10
    assert not torch.allclose(masked[0, patch], plain[0, patch])
    # the token replaced the patch embedding before the position embedding was added
    before, after = inputs[0][0], inputs[2][0]
    torch.testing.assert_close(after[patch] - before[patch], token[0] - embedding)
    keep = torch.ones(before.shape[0], dtype=torch.bool)
    keep[patch] = False
    torch.testing.assert_close(after[keep], before[keep])
    with pytest.raises(ConfigError, match="mask_token"):
        forward_tokens(model, x, masks)
    with pytest.raises(ConfigError, match="patch grid"):
        forward_tokens(model, x, torch.zeros(1, 100, dtype=torch.bool), token)


@pytest.mark.parametrize(("arch", "size"), [(REG4, 98), ("vit_small_patch16_224", 64)])
def test_dynamic_sizes_and_patch_16(arch: str, size: int) -> None:
    model = build_backbone(arch, 5, img_size=224, **TINY)
    patch = 14 if "14" in arch else 16
    n = (size // patch) ** 2
    images = torch.randn(2, 5, size, size)
    tokens = forward_tokens(model, images)
    assert tokens.shape == (2, model.num_prefix_tokens + n, 32)
    masks = torch.zeros(2, n, dtype=torch.bool)
    masks[:, :3] = True
    masked = forward_tokens(model, images, masks, torch.zeros(32))
    cls, regs, patches = split_tokens(model, masked)
    assert cls.shape == (2, 32) and regs.shape[1] == model.num_prefix_tokens - 1
    assert patches.shape == (2, n, 32)


def test_rgb_weights_map_onto_sentinel2_bands(tmp_path: Path) -> None:
    rgb = build_backbone(REG4, 3, **TINY)
    path = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), path)
    bands = [
        "B01",
        "B02",
        "B03",
        "B04",
        "B05",
        "B06",
        "B07",
        "B08",
        "B8A",
        "B09",
        "B10",
        "B11",
        "B12",
    ]
    model = build_backbone(REG4, 13, weights=path, band_names=bands, **TINY)
    w, src = model.patch_embed.proj.weight.detach(), rgb.patch_embed.proj.weight.detach()
    assert torch.equal(w[:, 3], src[:, 0])  # B04 <- red
    assert torch.equal(w[:, 2], src[:, 1])  # B03 <- green
    assert torch.equal(w[:, 1], src[:, 2])  # B02 <- blue
    mean = src.mean(dim=1) * 3 / 13
    for band in (0, 4, 5, 6, 7, 8, 9, 10, 11, 12):
        torch.testing.assert_close(w[:, band], mean)
    # no shared names: timm's channel repetition, scaled by source / target bands
    repeated = adapt_patch_embed(src, 6, None, [f"x{i}" for i in range(6)])
    torch.testing.assert_close(repeated, src.repeat(1, 2, 1, 1) * 0.5)
    with pytest.raises(ConfigError, match="band_names has 2 names"):
        build_backbone(REG4, 13, weights=path, band_names=["B02", "B03"], **TINY)


def test_geodino_export_bands_are_reordered_by_name(tmp_path: Path) -> None:
    source = build_backbone(REG4, 4, **TINY)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "backbone.safetensors"))
    (tmp_path / "backbone.json").write_text(json.dumps({"bands": ["B2", "B3", "B4", "B8"]}))
    data_bands = ["B08", "B04", "B03", "B02"]
    model = build_backbone(
        REG4, 4, weights=tmp_path / "backbone.safetensors", band_names=data_bands, **TINY
    )
    w, src = model.patch_embed.proj.weight, source.patch_embed.proj.weight
    torch.testing.assert_close(w, src[:, [3, 2, 1, 0]])
    # the export's Lightning-style file: `model.` keys, metadata inside
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "geodino": {"bands": ["B2", "B3", "B4", "B8"]},
        },
        tmp_path / "export.ckpt",
    )
    model = build_backbone(REG4, 4, weights=tmp_path / "export.ckpt", band_names=data_bands, **TINY)
    torch.testing.assert_close(model.patch_embed.proj.weight, src[:, [3, 2, 1, 0]])
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    # a `geodino fit` checkpoint: the EMA teacher is taken, bands from the hyper-parameters
    student = {f"student.backbone.{k}": torch.zeros_like(v) for k, v in state.items()}
    torch.save(
        {
            "state_dict": student | {f"teacher.backbone.{k}": v for k, v in state.items()},
            "hyper_parameters": {"band_names": ["B02", "B03", "B04", "B08"]},
        },
        tmp_path / "last.ckpt",
    )
    model = build_backbone(REG4, 4, weights=tmp_path / "last.ckpt", band_names=data_bands, **TINY)
    torch.testing.assert_close(model.patch_embed.proj.weight, src[:, [3, 2, 1, 0]])
    torch.testing.assert_close(model.norm.weight, source.norm.weight)


def test_torchgeo_enum_from_the_local_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchgeo.models import ViTSmall14_DINOv2_Weights

    enum = ViTSmall14_DINOv2_Weights.SENTINEL2_ALL_SOFTCON
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="not in the local cache") as error:
        build_backbone("vit_small_patch14_dinov2", 13, weights=enum, **TINY)
    cache = tmp_path / "hub" / "checkpoints"
    assert str(cache / Path(enum.url).name) in str(error.value)
    # TorchGeo builds SoftCon at 224 px; the loader path is the same for any width and depth
    source = build_backbone("vit_small_patch14_dinov2", 13, img_size=224, **TINY)
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / Path(enum.url).name)
    model = build_backbone("vit_small_patch14_dinov2", 13, weights=enum, **TINY)
    assert model.patch_embed.img_size == (224, 224)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    by_name = build_backbone(
        "vit_small_patch14_dinov2",
        13,
        **TINY,
        weights="ViTSmall14_DINOv2_Weights.SENTINEL2_ALL_SOFTCON",
    )
    torch.testing.assert_close(by_name.pos_embed, source.pos_embed)
    with pytest.raises(WeightsError, match="neither a file nor a TorchGeo weights enum"):
        build_backbone("vit_small_patch14_dinov2", 13, weights="Nope_Weights.X", **TINY)
    # the enum's band names (B1 ... B8a ... B12) map onto the data's
    subset = build_backbone(
        "vit_small_patch14_dinov2", 3, weights=enum, band_names=["B08", "B8A", "B04"], **TINY
    )
    src = source.patch_embed.proj.weight
    torch.testing.assert_close(subset.patch_embed.proj.weight, src[:, [7, 8, 3]])


def test_wrong_architecture(tmp_path: Path) -> None:
    wider = build_backbone(REG4, 3, embed_dim=64, depth=1, num_heads=2)
    torch.save(wider.state_dict(), tmp_path / "wider.pth")
    with pytest.raises(
        WeightsError, match=r"wider.pth: '.*' has shape .*64.* but the model expects"
    ):
        build_backbone(REG4, 3, weights=tmp_path / "wider.pth", **TINY)
    deeper = build_backbone(REG4, 3, embed_dim=32, depth=2, num_heads=2)
    torch.save(deeper.state_dict(), tmp_path / "deeper.pth")
    with pytest.raises(WeightsError, match="has 2 blocks but the model has 1"):
        build_backbone(REG4, 3, weights=tmp_path / "deeper.pth", **TINY)
    with pytest.raises(WeightsError, match=r"'reg_token' .* but the model has none"):
        build_backbone("vit_small_patch14_dinov2", 3, weights=tmp_path / "deeper.pth", **TINY)
    patch16 = build_backbone("vit_small_patch16_224", 3, **TINY)
    torch.save(patch16.state_dict(), tmp_path / "p16.pth")
    with pytest.raises(
        WeightsError, match=r"patch_embed.proj.weight.*\(32, 3, 16, 16\).*patch size"
    ):
        build_backbone("vit_small_patch14_dinov2", 3, weights=tmp_path / "p16.pth", **TINY)
    with pytest.raises(ConfigError, match="timm cannot build 'vit_nonexistent'"):
        build_backbone("vit_nonexistent", 3)
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match="no ViT backbone weights"):
        build_backbone(REG4, 3, weights=tmp_path / "resnet.pth", **TINY)


def test_missing_truncated_and_unsafe_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"none\.pth does not exist"):
        build_backbone(REG4, 3, weights=tmp_path / "none.pth", **TINY)
    good = build_backbone(REG4, 3, **TINY).state_dict()
    torch.save(good, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"cut\.pth cannot be read"):
        build_backbone(REG4, 3, weights=tmp_path / "cut.pth", **TINY)
    save_file({k: v.contiguous() for k, v in good.items()}, str(tmp_path / "good.safetensors"))
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"cut\.safetensors is not a readable safetensors"):
        build_backbone(REG4, 3, weights=tmp_path / "cut.safetensors", **TINY)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump({"blocks.0.x": Evil()}, handle, protocol=2)
    with pytest.raises(WeightsError, match=r"evil.pth holds pickled Python objects .* run code"):
        build_backbone(REG4, 3, weights=tmp_path / "evil.pth", **TINY)
    assert not marker.exists()
