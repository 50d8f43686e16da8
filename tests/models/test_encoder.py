"""The encoder interface: both backbones implement it, with timm's state-dict keys."""

import ast
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from geodino.errors import ConfigError
from geodino.models import (
    Encoder,
    FusionViT,
    TimmViTEncoder,
    as_encoder,
    build_backbone,
    create_encoder,
)

ARCH = "vit_small_patch14_reg4_dinov2"
TINY = {"img_size": 28, "embed_dim": 32, "depth": 3, "num_heads": 2}
MODELS = Path(__file__).resolve().parents[2] / "geodino" / "models"


def test_timm_encoder_keeps_timm_keys_and_methods() -> None:
    torch.manual_seed(0)
    encoder = build_backbone(ARCH, 4, band_names=["B02", "B03", "B04", "B08"], **TINY)
    torch.manual_seed(0)
    vit = timm.create_model(ARCH, in_chans=4, num_classes=0, dynamic_img_size=True, **TINY)
    assert isinstance(encoder, TimmViTEncoder) and isinstance(encoder, Encoder)
    assert list(encoder.state_dict()) == list(vit.state_dict())
    x = torch.randn(2, 4, 42, 42)
    with torch.no_grad():
        torch.testing.assert_close(encoder.forward_tokens(x), vit.forward_features(x))
    assert encoder.band_names == ("B02", "B03", "B04", "B08") and encoder.modalities is None
    arch = encoder.architecture()
    assert (arch.patch_size, arch.grid_size, arch.embed_dim) == (14, (2, 2), 32)
    assert (arch.num_prefix_tokens, arch.position_prefix, arch.in_chans, arch.depth) == (
        5,
        0,
        4,
        3,
    )
    assert arch.img_size == (28, 28)


def test_a_plain_timm_vit_is_adopted_in_place() -> None:
    vit = timm.create_model(ARCH, in_chans=3, num_classes=0, **TINY)
    keys = list(vit.state_dict())
    encoder = as_encoder(vit)
    assert encoder is vit and isinstance(vit, TimmViTEncoder)
    assert list(vit.state_dict()) == keys and vit.band_names is None
    with pytest.raises(ConfigError, match="not an encoder"):
        as_encoder(nn.Linear(2, 2))


def test_masking_replaces_patch_embeddings_before_positions() -> None:
    torch.manual_seed(0)
    encoder = build_backbone(ARCH, 3, **TINY).eval()
    x = torch.randn(2, 3, 28, 28)
    masks = torch.tensor([[True, False, False, True], [False, False, False, False]])
    token = torch.randn(1, 32)
    with torch.no_grad():
        masked = encoder.forward_tokens(x, masks, token)
        # the reference: timm's own steps with the token put in by hand
        patches = encoder.patch_embed(x)
        flat = patches.reshape(2, 4, 32)
        flat = torch.where(masks.unsqueeze(-1), token.reshape(-1), flat)
        tokens = encoder._pos_embed(flat.reshape(patches.shape))
        expected = encoder.norm(encoder.blocks(encoder.norm_pre(tokens)))
        plain = encoder.forward_tokens(x)
    torch.testing.assert_close(masked, expected)
    # a sample without masked patches is untouched; the hook is gone afterwards
    torch.testing.assert_close(masked[1], plain[1])
    assert not encoder.patch_embed._forward_hooks
    with pytest.raises(ConfigError, match="no mask_token"):
        encoder.forward_tokens(x, masks)
    with pytest.raises(ConfigError, match="one image tensor"):
        encoder.forward_tokens({"s2": x})


def test_fusion_implements_the_interface() -> None:
    encoder = create_encoder(ARCH, 3, {"modalities": {"s1": 1, "s2": 2}, "fusion": "xattn", **TINY})
    assert isinstance(encoder, FusionViT) and isinstance(encoder, Encoder)
    assert encoder.in_chans == 3 and encoder.modalities == {"s1": 1, "s2": 2}
    arch = encoder.architecture()
    assert (arch.patch_size, arch.grid_size, arch.depth, arch.in_chans) == (14, (2, 2), 3, 3)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        maps = encoder.block_maps(x, [0, 2])
        tokens = encoder.forward_tokens(x)
    assert [m.shape for m in maps] == [(2, 32, 2, 2)] * 2
    torch.testing.assert_close(maps[1].flatten(2).transpose(1, 2), tokens[:, 5:])


def test_layer_ids_for_layerwise_decay() -> None:
    vit = build_backbone(ARCH, 3, **TINY)
    fusion = FusionViT(ARCH, {"s1": 1, "s2": 2}, "linear", **TINY)
    for encoder in (vit, fusion):
        ids = {name: encoder.layer_id(name) for name, _ in encoder.named_parameters()}
        assert ids["pos_embed"] == ids["cls_token"] == ids["reg_token"] == 0
        assert ids["blocks.0.norm1.weight"] == 1 and ids["blocks.2.mlp.fc2.bias"] == 3
        assert ids["norm.weight"] == 4
    assert vit.layer_id("patch_embed.proj.weight") == 0
    assert fusion.layer_id("patch_embeds.s1.proj.weight") == 0
    assert fusion.layer_id("modality_embeds.s2") == fusion.layer_id("fuse.s1.weight") == 0


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_models_import_no_checkpoints_and_backbones_not_fusion() -> None:
    for path in MODELS.glob("*.py"):
        imports = _imports(path)
        assert "geodino.checkpoints" not in imports, path.name
        assert not any(m.startswith(("geodino.tasks", "lightning")) for m in imports), path.name
        # timm's private modules are not imported anywhere in models/
        assert not any(m.startswith("timm") and "._" in m for m in imports), path.name
    assert "geodino.models.fusion" not in _imports(MODELS / "backbones.py")
    isinstance_fusion = [
        path.name
        for path in MODELS.parent.rglob("*.py")
        if "isinstance(" in (text := path.read_text()) and "FusionViT)" in text
    ]
    assert isinstance_fusion == []
