"""DINOHead: official layout, official weights, cosine logits, fixed prototype norms."""

import pytest
import torch
from torch import nn

from geodino.errors import ConfigError
from geodino.models import DINOHead


def test_layout_matches_the_official_head() -> None:
    head = DINOHead(16, 10, use_bn=True, nlayers=3, hidden_dim=24, bottleneck_dim=8)
    kinds = [type(m) for m in head.mlp]
    assert kinds == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.GELU,
        nn.Linear,
        nn.BatchNorm1d,
        nn.GELU,
        nn.Linear,
    ]
    assert [head.mlp[i].out_features for i in (0, 3, 6)] == [24, 24, 8]
    plain = DINOHead(16, 10, nlayers=2, hidden_dim=24, bottleneck_dim=8, mlp_bias=False)
    assert [type(m) for m in plain.mlp] == [nn.Linear, nn.GELU, nn.Linear]
    assert plain.mlp[0].bias is None
    single = DINOHead(16, 10, nlayers=1, bottleneck_dim=8)
    assert isinstance(single.mlp, nn.Linear) and single.mlp.out_features == 8
    with pytest.raises(ConfigError, match="nlayers >= 1"):
        DINOHead(16, 10, nlayers=0)


def test_initialisation() -> None:
    torch.manual_seed(0)
    head = DINOHead(256, 64, hidden_dim=2048, bottleneck_dim=256)
    first = head.mlp[0]
    assert abs(first.weight.std().item() - 0.02) < 0.001
    assert torch.all(first.bias == 0)
    gain = head.last_layer.parametrizations.weight.original0
    assert torch.all(gain == 1) and not gain.requires_grad
    norms = head.last_layer.weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(64))


def test_logits_are_cosines_and_only_directions_learn() -> None:
    torch.manual_seed(0)
    head = DINOHead(32, 100, hidden_dim=64, bottleneck_dim=16)
    x = torch.randn(8, 32)
    out = head(x)
    bottleneck = nn.functional.normalize(head.mlp(x), dim=-1)
    prototypes = head.last_layer.parametrizations.weight.original1
    expected = bottleneck @ nn.functional.normalize(prototypes, dim=-1).t()
    torch.testing.assert_close(out, expected)
    assert out.shape == (8, 100) and out.abs().max() <= 1 + 1e-6
    out.square().sum().backward()
    assert head.last_layer.parametrizations.weight.original0.grad is None
    assert prototypes.grad is not None and head.mlp[0].weight.grad is not None
    # the task freezes the last layer in the first iterations through `last_layer`
    head.zero_grad()
    head.last_layer.requires_grad_(False)
    head(x).sum().backward()
    assert prototypes.grad is None and head.mlp[0].weight.grad is not None


def test_official_head_weights_load() -> None:
    torch.manual_seed(1)
    source = DINOHead(32, 50, hidden_dim=64, bottleneck_dim=16)
    with torch.no_grad():
        source.last_layer.parametrizations.weight.original1.mul_(3.0)  # norms no longer 1
    official = {}
    for key, value in source.state_dict().items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        official[key.replace("parametrizations.weight.original1", "weight_v")] = value
    assert {"last_layer.weight_g", "last_layer.weight_v", "mlp.4.bias"} <= set(official)
    target = DINOHead(32, 50, hidden_dim=64, bottleneck_dim=16)
    target.load_state_dict(official)
    x = torch.randn(4, 32)
    torch.testing.assert_close(target(x), source(x))
