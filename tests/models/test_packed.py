"""Crops of several sizes in one packed pass give the tokens and gradients of separate passes."""

import pytest
import timm
import torch
from timm.layers import DropPath
from timm.models.vision_transformer import ResPostBlock

from geodino.errors import ConfigError
from geodino.models import FusionViT, PackedEncoder, TimmViTEncoder, as_encoder, build_backbone
from geodino.models.timm_adapter import _per_crop, packable

ARCH = "vit_small_patch14_reg4_dinov2"
TINY = {"img_size": 28, "embed_dim": 32, "depth": 3, "num_heads": 2}


def crops() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    global_crops = torch.randn(4, 3, 28, 28, generator=g)
    local_crops = torch.randn(6, 3, 14, 14, generator=g)
    masks = torch.rand(4, 4, generator=g) < 0.5
    token = torch.randn(1, 32, generator=g)
    return global_crops, local_crops, masks, token


def gradients(encoder: torch.nn.Module, tokens: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    encoder.zero_grad(set_to_none=True)
    weights = torch.Generator().manual_seed(1)
    sum((t * torch.randn(t.shape, generator=weights)).sum() for t in tokens).backward()
    return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}


def assert_packed_equals_separate(encoder: TimmViTEncoder) -> None:
    global_crops, local_crops, masks, token = crops()
    separate = [
        encoder.forward_tokens(global_crops, masks, token),
        encoder.forward_tokens(local_crops),
    ]
    expected = gradients(encoder, separate)
    packed = encoder.forward_tokens_packed([global_crops, local_crops], [masks, None], token)
    got = gradients(encoder, packed)
    for a, b in zip(packed, separate, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert set(got) == set(expected) and "cls_token" in got and "reg_token" in got
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_pass_equals_two_passes(checkpointing: bool) -> None:
    torch.manual_seed(0)
    encoder = build_backbone(ARCH, 3, **TINY)
    encoder.set_grad_checkpointing(checkpointing)
    assert isinstance(encoder, PackedEncoder) and all(packable(b) for b in encoder.blocks)
    assert_packed_equals_separate(encoder)


def test_the_math_attention_path_packs_too() -> None:
    torch.manual_seed(0)
    encoder = build_backbone(ARCH, 3, **TINY)
    for block in encoder.blocks:
        block.attn.fused_attn = False
    assert_packed_equals_separate(encoder)


def test_other_blocks_run_group_by_group() -> None:
    torch.manual_seed(0)
    vit = timm.create_model(
        ARCH, in_chans=3, num_classes=0, dynamic_img_size=True, block_fn=ResPostBlock, **TINY
    )
    encoder = as_encoder(vit)
    assert isinstance(encoder, TimmViTEncoder) and not packable(encoder.blocks[0])
    assert_packed_equals_separate(encoder)


def test_drop_path_draws_per_crop() -> None:
    segments = ((4, 3), (6, 2))
    x = torch.ones(4 * 3 + 6 * 2, 8)
    torch.manual_seed(0)
    out = _per_crop(DropPath(0.5).train(), x, segments)
    crop = torch.cat(
        [torch.arange(4).repeat_interleave(3), torch.arange(4, 10).repeat_interleave(2)]
    )
    values = [out[crop == i] for i in range(10)]
    # one draw per crop: all tokens of a crop kept (x 2) or dropped together, crops apart
    assert all((v == v[0, 0]).all() for v in values)
    assert {float(v[0, 0]) for v in values} == {0.0, 2.0}


def test_masks_must_come_one_per_group() -> None:
    encoder = build_backbone(ARCH, 3, **TINY)
    global_crops, local_crops, masks, token = crops()
    with pytest.raises(ConfigError, match="one mask"):
        encoder.forward_tokens_packed([global_crops, local_crops], [masks], token)
    with pytest.raises(ConfigError, match="mask_token"):
        encoder.forward_tokens_packed([global_crops, local_crops], [masks, None])


def test_fusion_is_no_packed_encoder() -> None:
    fusion = FusionViT(ARCH, {"s1": 2, "s2": 1}, "early", **TINY)
    assert not isinstance(fusion, PackedEncoder)
