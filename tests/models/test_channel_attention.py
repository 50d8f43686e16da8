"""Panopticon's patch embedding without a token per band equals TorchGeo's forward."""

from typing import Any

import pytest
import torch
from torchgeo.models.panopticon import PanopticonPE

from geodino.models.channel_attention import channel_attention_tokens


def patch_embed(**chnfus_cfg: Any) -> PanopticonPE:
    torch.manual_seed(0)
    module = PanopticonPE(
        attn_dim=48, embed_dim=32, patch_size=7, chnfus_cfg=chnfus_cfg, img_size=28
    )
    with (
        torch.no_grad()
    ):  # SAR embeddings apart and a sharper query than TorchGeo's zeros/unit draw
        for table in (module.chnfus.chnemb.embed_transmit, module.chnfus.chnemb.embed_receive):
            table.normal_()
        module.chnfus.query.mul_(4)
    return module.double()


@pytest.mark.parametrize(
    "chnfus_cfg",
    [
        {"attn_cfg": {"num_heads": 4}},
        {"attn_cfg": {"num_heads": 6, "qkv_bias": True}, "layer_norm": True},
    ],
)
def test_tokens_and_gradients_equal_torchgeo(chnfus_cfg: dict[str, Any]) -> None:
    module = patch_embed(**chnfus_cfg)
    images = torch.randn(3, 5, 30, 23, dtype=torch.float64)  # pixels beyond whole patches
    ids = torch.tensor([[-1.0, -2.0, 492.7, 560.4, 833.0]]).expand(3, -1).double()
    mask = torch.tensor(
        [[False] * 5, [True, True, False, False, False], [False, False, True, False, True]]
    )
    outputs, grads = [], []
    for forward in (
        lambda: module({"imgs": images, "chn_ids": ids.clone(), "spec_masks": mask}),
        lambda: channel_attention_tokens(module, images, ids.clone(), mask),
    ):
        module.zero_grad()
        tokens = forward()
        (
            tokens * torch.linspace(-1, 1, tokens.numel(), dtype=tokens.dtype).view_as(tokens)
        ).sum().backward()
        outputs.append(tokens.detach())
        grads.append(
            {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        )
    assert outputs[1].shape == (3, 12, 32)  # 4 x 3 whole patches of 7 px
    torch.testing.assert_close(outputs[1], outputs[0])
    assert grads[1].keys() == grads[0].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_optical_ids_are_floored_in_place_as_torchgeo_does() -> None:
    """Callers that read the ids back see what TorchGeo would have left there."""
    module = patch_embed(attn_cfg={"num_heads": 4})
    ids = torch.tensor([[-1.0, 492.7]], dtype=torch.float64)
    channel_attention_tokens(module, torch.randn(1, 2, 14, 14, dtype=torch.float64), ids)
    assert ids.tolist() == [[-1.0, 492.0]]
