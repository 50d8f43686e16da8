"""Backbones: official DINOv2 weights reproduce the reference; TorchGeo, geodino, bands."""

import pickle
from pathlib import Path

import pytest
import torch

from geodino.errors import WeightsError
from geodino.models import DINOHead, build_backbone, forward_tokens, split_tokens
from geodino.models.backbones import adapt_patch_embed

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def ref(shared_reference: Path) -> dict:
    return torch.load(shared_reference, weights_only=True)["backbone"]


def _check(model: torch.nn.Module, ref: dict) -> None:
    with torch.no_grad():
        cls, regs, patches = split_tokens(model, forward_tokens(model.eval(), ref["input"]))
    torch.testing.assert_close(cls, ref["x_norm_clstoken"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(regs, ref["x_norm_regtokens"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(patches, ref["x_norm_patchtokens"], rtol=1e-5, atol=1e-5)


def test_official_training_format_reproduces_the_reference(ref: dict, tmp_path: Path) -> None:
    path = tmp_path / "teacher_checkpoint.pth"
    state = {f"backbone.{k}": v for k, v in ref["state_dict"].items()}
    torch.save({"teacher": state}, path)
    model = build_backbone("vit_small_patch14_reg4_dinov2", 13, weights=path, depth=2)
    _check(model, ref)


def test_official_hub_format_reproduces_the_reference(ref: dict, tmp_path: Path) -> None:
    hub = {k.replace("blocks.0.", "blocks."): v for k, v in ref["state_dict"].items()}
    path = tmp_path / "dinov2_vits14_reg4.pth"
    torch.save(hub, path)
    _check(build_backbone("vit_small_patch14_reg4_dinov2", 13, weights=path, depth=2), ref)


def test_masked_tokens_follow_dinov2(ref: dict) -> None:
    model = build_backbone("vit_small_patch14_reg4_dinov2", 13, depth=1).eval()
    x = ref["input"][:1]
    token = torch.randn(1, 384)
    none = torch.zeros(1, 256, dtype=torch.bool)
    with torch.no_grad():
        plain = forward_tokens(model, x)
        torch.testing.assert_close(forward_tokens(model, x, none, token), plain)
        masks = none.clone()
        masks[0, 10] = True
        masked = forward_tokens(model, x, masks, token)
    patch = model.num_prefix_tokens + 10
    assert not torch.allclose(masked[0, patch], plain[0, patch])


@pytest.mark.parametrize(("arch", "size"), [("vit_small_patch14_reg4_dinov2", 98),
                                            ("vit_small_patch16_224", 64)])
def test_dynamic_sizes_and_patch_16(arch: str, size: int) -> None:
    model = build_backbone(arch, 5, img_size=224, **TINY)
    tokens = model.forward_features(torch.randn(2, 5, size, size))
    patch = 14 if "14" in arch else 16
    assert tokens.shape[1] == model.num_prefix_tokens + (size // patch) ** 2


def test_rgb_weights_map_onto_sentinel2_bands(tmp_path: Path) -> None:
    rgb = build_backbone("vit_small_patch14_reg4_dinov2", 3, **TINY)
    path = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), path)
    bands = ["B01", "B02", "B03", "B04", "B08"]
    model = build_backbone("vit_small_patch14_reg4_dinov2", 5, weights=path, band_names=bands, **TINY)
    w, src = model.patch_embed.proj.weight, rgb.patch_embed.proj.weight
    torch.testing.assert_close(w[:, 3], src[:, 0])  # B04 <- red
    torch.testing.assert_close(w[:, 2], src[:, 1])  # B03 <- green
    torch.testing.assert_close(w[:, 1], src[:, 2])  # B02 <- blue
    assert (w[:, [0, 4]] == 0).all()
    repeated = adapt_patch_embed(src, 6, None, ["a"] * 6)  # no shared names: timm repetition
    assert repeated.shape[1] == 6


def test_torchgeo_enum_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchgeo.models import ViTSmall14_DINOv2_Weights

    enum = ViTSmall14_DINOv2_Weights.SENTINEL2_ALL_SOFTCON
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="not in the local cache"):
        build_backbone("vit_small_patch14_dinov2", 13, weights=enum, img_size=224)
    source = build_backbone("vit_small_patch14_dinov2", 13, img_size=224)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / Path(enum.url).name)
    model = build_backbone("vit_small_patch14_dinov2", 13, weights=enum, img_size=224)
    torch.testing.assert_close(model.state_dict()["blocks.3.mlp.fc1.weight"],
                               source.state_dict()["blocks.3.mlp.fc1.weight"])


def test_wrong_architecture_and_unsafe_files(tmp_path: Path) -> None:
    other = build_backbone("vit_small_patch14_reg4_dinov2", 3, embed_dim=64, depth=1, num_heads=2)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"has shape .* but the model expects"):
        build_backbone("vit_small_patch14_reg4_dinov2", 3, weights=tmp_path / "other.pth", **TINY)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump({"blocks.0.x": Evil()}, handle)
    with pytest.raises(WeightsError, match="run code"):
        build_backbone("vit_small_patch14_reg4_dinov2", 3, weights=tmp_path / "evil.pth", **TINY)
    assert not marker.exists()
    with pytest.raises(WeightsError, match="does not exist"):
        build_backbone("vit_small_patch14_reg4_dinov2", 3, weights=tmp_path / "none.pth", **TINY)


def test_dino_head_outputs_cosines() -> None:
    head = DINOHead(32, 100, hidden_dim=64, bottleneck_dim=16)
    out = head(torch.randn(8, 32))
    assert out.shape == (8, 100) and out.abs().max() <= 1 + 1e-5
    g = head.last_layer.parametrizations.weight.original0
    assert torch.all(g == 1)
