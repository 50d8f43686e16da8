"""FusionViT: shapes per fusion mode and modality subset, names, missing modalities, errors."""

import pytest
import torch

from geodino.errors import ConfigError, DataError
from geodino.models import FusionViT, build_backbone, forward_tokens, patch_size, split_tokens
from geodino.models.fusion import draw_modality_dropout, split_modalities

ARCH = "vit_small_patch14_reg4_dinov2"
TINY = {"img_size": 28, "embed_dim": 64, "depth": 2, "num_heads": 2}
MODES = ("early", "linear", "xattn")


def tiny(fusion: str, modalities: dict[str, int] | None = None, **kwargs: object) -> FusionViT:
    torch.manual_seed(0)
    return FusionViT(ARCH, modalities or {"s1": 2, "s2": 13}, fusion, **TINY, **kwargs).eval()


def pair(batch: int = 3, size: int = 28) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "s1": torch.randn(batch, 2, size, size, generator=g),
        "s2": torch.randn(batch, 13, size, size, generator=g),
    }


@pytest.mark.parametrize("fusion", MODES)
def test_tokens_have_the_single_modality_layout_for_every_subset(fusion: str) -> None:
    model = tiny(fusion)
    vit = build_backbone(ARCH, 15, **TINY)
    images = pair(size=42)
    reference = vit.forward_features(torch.cat([images["s1"], images["s2"]], 1))
    for subset in (["s1", "s2"], ["s1"], ["s2"]):
        tokens = model.forward_features({m: images[m] for m in subset})
        assert tokens.shape == reference.shape == (3, 1 + 4 + 9, 64)
        cls, registers, patches = split_tokens(model, tokens)
        assert cls.shape == (3, 64) and registers.shape == (3, 4, 64)
        assert patches.shape == (3, 9, 64)
        assert torch.isfinite(tokens).all()
    # the CLS of S1 alone, S2 alone and both differ: every modality is read
    outs = [model({m: images[m] for m in s}) for s in (["s1"], ["s2"], ["s1", "s2"])]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
    assert patch_size(model) == 14


@pytest.mark.parametrize("fusion", MODES)
def test_stacked_image_equals_the_dict_in_declared_order(fusion: str) -> None:
    model = tiny(fusion)
    images = pair()
    stacked = torch.cat([images["s1"], images["s2"]], 1)
    reordered = {"s2": images["s2"], "s1": images["s1"]}
    expected = model.forward_features(images)
    assert torch.equal(model.forward_features(stacked), expected)
    assert torch.equal(forward_tokens(model, reordered), expected)


def test_early_fusion_of_one_modality_is_the_timm_vit() -> None:
    """Early fusion is channel stacking: with one modality it is timm's ViT exactly."""
    model = tiny("early", {"s2": 13})
    vit = build_backbone(ARCH, 13, **TINY).eval()
    state = {
        k: v
        for k, v in model.state_dict().items()
        if not k.startswith(("patch_embeds.", "modality_embeds."))
    }
    state["patch_embed.proj.weight"] = model.patch_embeds["s2"].proj.weight
    state["patch_embed.proj.bias"] = model.patch_embeds["s2"].proj.bias + model.modality_embeds[
        "s2"
    ].reshape(-1)
    assert not vit.load_state_dict(state, strict=True).missing_keys
    x = torch.randn(2, 13, 42, 56)
    torch.testing.assert_close(model.forward_features({"s2": x}), vit.forward_features(x))


@pytest.mark.parametrize("fusion", MODES)
def test_modality_specific_parameters_carry_the_modality_name(fusion: str) -> None:
    model = tiny(fusion)
    names = [n for n, _ in model.named_parameters()]
    for modality in ("s1", "s2"):
        assert f"patch_embeds.{modality}.proj.weight" in names
        assert f"modality_embeds.{modality}" in names
    assert model.patch_embeds["s1"].proj.weight.shape[1] == 2
    assert model.patch_embeds["s2"].proj.weight.shape[1] == 13
    fusion_names = [n for n in names if n.startswith(("fuse.", "xattn."))]
    if fusion == "early":
        assert not fusion_names
    else:
        assert fusion_names and all(n.split(".")[1] in ("s1", "s2") for n in fusion_names)
    # the shared transformer keeps timm's names, so DINOv2 weights and lr decay apply
    assert "blocks.1.attn.qkv.weight" in names and "reg_token" in names


def test_xattn_layers_heads_and_dropout_are_configurable() -> None:
    model = tiny("xattn", xattn_layers=2, xattn_heads=4, xattn_dropout=0.1)
    assert len(model.xattn["s1"]) == 2 and model.xattn["s2"][1].attn.num_heads == 4
    assert model.xattn["s1"][0].attn.dropout == 0.1
    with pytest.raises(ConfigError, match="xattn_heads=3"):
        tiny("xattn", xattn_heads=3)


@pytest.mark.parametrize("fusion", MODES)
def test_dropped_modality_equals_inference_without_it(fusion: str) -> None:
    model = tiny(fusion)
    images = pair()
    present = {"s1": torch.tensor([True, False, True]), "s2": torch.tensor([True, True, False])}
    dropped = model.forward_features(images, present=present)
    torch.testing.assert_close(
        dropped[0:1], model.forward_features({k: v[0:1] for k, v in images.items()})
    )
    torch.testing.assert_close(dropped[1:2], model.forward_features({"s2": images["s2"][1:2]}))
    torch.testing.assert_close(dropped[2:3], model.forward_features({"s1": images["s1"][2:3]}))
    with pytest.raises(DataError, match="no modality"):
        model.forward_features(
            images,
            present={
                "s1": torch.zeros(3, dtype=torch.bool),
                "s2": torch.tensor([True, True, False]),
            },
        )


def test_modality_dropout_draws_never_drop_everything() -> None:
    g = torch.Generator().manual_seed(0)
    keep = draw_modality_dropout(4000, ["s1", "s2", "s3"], 0.6, g)
    kept = torch.stack(list(keep.values()), 1)
    assert kept.any(1).all()
    # each modality is dropped about p of the time (a bit less: all-dropped draws are rescued)
    rate = 1 - kept.float().mean(0)
    assert ((rate > 0.5) & (rate < 0.6)).all(), rate
    assert not draw_modality_dropout(100, ["s1", "s2"], 0.0)["s1"].logical_not().any()
    with pytest.raises(ConfigError, match="must lie in"):
        draw_modality_dropout(4, ["s1", "s2"], 1.0)


@pytest.mark.parametrize("fusion", MODES)
def test_ibot_masks_replace_the_fused_patch_tokens(fusion: str) -> None:
    model = tiny(fusion)
    images = pair()
    token = torch.randn(1, 64)
    masks = torch.zeros(3, 4, dtype=torch.bool)
    masks[:, 1] = True
    masked = forward_tokens(model, images, masks, token)
    assert masked.shape == (3, 1 + 4 + 4, 64)
    # a masked patch's own content no longer matters anywhere
    changed = {k: v.clone() for k, v in images.items()}
    changed["s1"][..., :14, 14:] += 5.0
    changed["s2"][..., :14, 14:] -= 5.0
    torch.testing.assert_close(forward_tokens(model, changed, masks, token), masked)
    assert not torch.allclose(model.forward_features(changed), model.forward_features(images))
    with pytest.raises(ConfigError, match="no mask_token"):
        forward_tokens(model, images, masks)
    with pytest.raises(ConfigError, match="patch grid"):
        forward_tokens(model, images, torch.zeros(3, 9, dtype=torch.bool), token)


def test_gradients_reach_every_modality_and_fusion_parameter() -> None:
    for fusion in MODES:
        model = tiny(fusion).train()
        tokens = model.forward_features(pair())
        # a random readout: the plain sum of LayerNorm outputs has no gradient
        (
            tokens * torch.randn(tokens.shape, generator=torch.Generator().manual_seed(2))
        ).sum().backward()
        silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
        assert not silent, (fusion, silent)


def test_bad_fusion_mode_modalities_and_band_counts_are_refused() -> None:
    with pytest.raises(ConfigError, match="fusion mode 'late' does not exist"):
        FusionViT(ARCH, {"s1": 2, "s2": 13}, "late", **TINY)
    with pytest.raises(ConfigError, match="band count 0"):
        FusionViT(ARCH, {"s1": 0, "s2": 13}, "early", **TINY)
    with pytest.raises(ConfigError, match="identifier"):
        FusionViT(ARCH, {"s-1": 2}, "early", **TINY)
    with pytest.raises(ConfigError, match="empty"):
        FusionViT(ARCH, {}, "early", **TINY)
    model = tiny("linear")
    images = pair()
    with pytest.raises(
        DataError, match=r"modality 's2' has shape \(3, 12, 28, 28\).*\(B, 13, H, W\)"
    ):
        model.forward_features({"s1": images["s1"], "s2": images["s2"][:, :12]})
    with pytest.raises(DataError, match=r"\['s3'\] are not among"):
        model.forward_features({"s3": images["s1"]})
    with pytest.raises(DataError, match="non-empty subset"):
        model.forward_features({})
    with pytest.raises(DataError, match="one pixel grid"):
        model.forward_features({"s1": images["s1"][..., :14, :14], "s2": images["s2"]})
    with pytest.raises(DataError, match=r"expected \(B, 15, H, W\)"):
        split_modalities(torch.zeros(1, 14, 28, 28), model.modalities)
    with pytest.raises(ConfigError, match="one image tensor"):
        forward_tokens(build_backbone(ARCH, 2, **TINY), {"s1": images["s1"]})


def test_weights_of_the_stacked_bands_initialise_each_modality(tmp_path) -> None:
    vit = build_backbone(ARCH, 15, **TINY)
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    model = FusionViT(ARCH, {"s1": 2, "s2": 13}, "linear", weights=str(path), **TINY)
    weight = vit.patch_embed.proj.weight
    assert torch.equal(model.patch_embeds["s1"].proj.weight, weight[:, :2])
    assert torch.equal(model.patch_embeds["s2"].proj.weight, weight[:, 2:])
    assert torch.equal(model.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)


# --- time series ---------------------------------------------------------------------------
BANDS = {"s1": 2, "s2": 4}


def series(batch: int = 2, steps: int = 3, size: int = 28) -> dict[str, torch.Tensor]:
    """S2 as a time series of ``steps`` acquisitions (days 40, 160, ...), S1 single-date."""
    g = torch.Generator().manual_seed(2)
    return {
        "s1": torch.randn(batch, 2, size, size, generator=g),
        "s2": torch.randn(batch, steps, 4, size, size, generator=g),
        "s2_doy": torch.arange(steps).repeat(batch, 1) * 120 + 40,
    }


@pytest.mark.parametrize("fusion", MODES)
def test_time_series_pools_into_the_single_date_layout(fusion: str) -> None:
    model = tiny(fusion, BANDS)
    single = model.forward_features({"s1": series()["s1"], "s2": series()["s2"][:, 0]})
    tokens = model.forward_features(series())
    assert tokens.shape == single.shape == (2, 1 + 4 + 4, 64) and torch.isfinite(tokens).all()
    alone = model.forward_features({"s2": series()["s2"], "s2_doy": series()["s2_doy"]})
    assert alone.shape == single.shape and not torch.allclose(alone, tokens)


@pytest.mark.parametrize(("pool", "layers"), [("mean", 0), ("attention", 0), ("mean", 1)])
def test_order_of_acquisitions_does_not_matter(pool: str, layers: int) -> None:
    model = tiny("linear", BANDS, temporal_pool=pool, temporal_layers=layers)
    if pool == "attention":
        with torch.no_grad():  # away from its uniform start
            model.temporal_query.normal_(0, 3.0)
    batch = series(steps=4)
    order = torch.tensor([2, 0, 3, 1])
    shuffled = dict(batch, s2=batch["s2"][:, order], s2_doy=batch["s2_doy"][:, order])
    torch.testing.assert_close(model.forward_features(shuffled), model.forward_features(batch))


@pytest.mark.parametrize(("pool", "layers"), [("mean", 0), ("attention", 0), ("attention", 1)])
def test_padded_acquisitions_are_ignored(pool: str, layers: int) -> None:
    model = tiny("xattn", BANDS, temporal_pool=pool, temporal_layers=layers)
    if pool == "attention":
        with torch.no_grad():
            model.temporal_query.normal_(0, 3.0)
    batch = series(steps=2)
    # two padding steps: NaN images (TimeSeries' padding), day of year 0
    padded = dict(
        batch,
        s2=torch.cat([batch["s2"], torch.full_like(batch["s2"], torch.nan)], 1),
        s2_doy=torch.cat([batch["s2_doy"], torch.zeros_like(batch["s2_doy"])], 1),
    )
    expected = model.forward_features(batch)
    torch.testing.assert_close(model.forward_features(padded), expected)
    # a sample with every acquisition missing lacks S2: it gets the S1-alone tokens
    padded["s2_doy"][1] = 0
    tokens = model.forward_features(padded)
    assert torch.isfinite(tokens).all()
    torch.testing.assert_close(tokens[0], expected[0])
    torch.testing.assert_close(tokens[1], model.forward_features({"s1": batch["s1"][1:]})[0])
    with pytest.raises(DataError, match="no valid acquisition"):
        model.forward_features({"s2": padded["s2"], "s2_doy": padded["s2_doy"]})


def test_temporal_layers_see_which_date_held_which_image() -> None:
    """The mean pool of linear embeddings is the embedding of the mean image: swapping two
    dates' images changes nothing. Dates that attend to each other first see the swap."""
    batch = series(steps=4)
    swapped = dict(batch, s2=batch["s2"][:, [1, 0, 2, 3]])
    pooled = tiny("early", BANDS, temporal_pool="mean")
    torch.testing.assert_close(pooled.forward_features(swapped), pooled.forward_features(batch))
    attending = tiny("early", BANDS, temporal_pool="mean", temporal_layers=1)
    tokens = attending.forward_features(batch)
    assert not torch.allclose(attending.forward_features(swapped), tokens, atol=1e-3)
    assert sum(k.startswith("temporal_blocks.0.") for k in attending.state_dict()) > 0
    assert attending.layer_id("temporal_blocks.0.linear1.weight") == 0
    with pytest.raises(ConfigError, match="temporal_layers"):
        tiny("early", BANDS, temporal_layers=-1)


def test_init_weights_draws_a_fresh_twin() -> None:
    model = tiny("linear", BANDS, temporal_pool="attention", temporal_layers=1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    model.init_weights()
    fresh = model.state_dict()
    assert all(not torch.equal(fresh[k], trained[k]) for k in trained)
    assert fresh["temporal_query"].abs().sum() == 0  # a uniform pool, as at construction
    torch.testing.assert_close(fresh["fuse.s1.weight"], torch.eye(64))


@pytest.mark.parametrize("embedding", ["sinusoidal", "learned"])
def test_day_of_year_changes_the_output(embedding: str) -> None:
    model = tiny("early", BANDS, doy_embedding=embedding)
    if embedding == "learned":
        with torch.no_grad():  # away from its zero start
            model.doy_embed.weight.normal_(0, 1.0)
    batch = series()
    later = dict(batch, s2_doy=batch["s2_doy"] + 30)
    assert not torch.allclose(model(later), model(batch), atol=1e-4)


def test_single_date_series_equals_the_single_date_image() -> None:
    """One acquisition with a (zero-initialised) learned embedding is the plain image; with
    the sinusoidal one, repeating an acquisition on its own date changes nothing."""
    model = tiny("linear", BANDS, doy_embedding="learned", temporal_pool="attention")
    batch = series(steps=1)
    torch.testing.assert_close(
        model.forward_features(batch),
        model.forward_features({"s1": batch["s1"], "s2": batch["s2"][:, 0]}),
    )
    model = tiny("linear", BANDS)
    repeated = dict(
        batch, s2=batch["s2"].repeat(1, 3, 1, 1, 1), s2_doy=batch["s2_doy"].repeat(1, 3)
    )
    torch.testing.assert_close(model.forward_features(repeated), model.forward_features(batch))


def test_temporal_parameters_exist_only_where_configured_and_learn() -> None:
    plain = {k for k in tiny("early", BANDS).state_dict()}
    assert not any(k.startswith(("doy_embed", "temporal_")) for k in plain)
    model = tiny("early", BANDS, doy_embedding="learned", temporal_pool="attention").train()
    extra = set(model.state_dict()) - plain
    assert extra == {
        "doy_embed.weight",
        "temporal_query",
        "temporal_norm.weight",
        "temporal_norm.bias",
    }
    with torch.no_grad():
        model.temporal_query.normal_()
    model(series()).square().sum().backward()
    assert model.doy_embed.weight.grad[[40, 160, 280]].abs().sum() > 0
    assert model.doy_embed.weight.grad[41].abs().sum() == 0
    assert model.temporal_query.grad.abs().sum() > 0


def test_sinusoidal_doy_embedding_follows_the_annual_cycle() -> None:
    from geodino.models.fusion import sinusoidal_doy_embedding

    days = sinusoidal_doy_embedding(torch.tensor([365, 1, 182]), 64)
    assert days.shape == (3, 64) and days.abs().max() <= 1
    new_year, midsummer = (days[0] - days[1]).norm(), (days[2] - days[1]).norm()
    assert new_year < 0.5 * midsummer
    assert sinusoidal_doy_embedding(torch.tensor([10.0]), 7).shape == (1, 7)


def test_bad_time_series_input_is_a_clear_error() -> None:
    model = tiny("early", BANDS)
    batch = series()
    with pytest.raises(DataError, match="no s2_doy"):
        model.forward_features({"s2": batch["s2"]})
    with pytest.raises(DataError, match=r"s2_doy has shape \(2, 2\).*\(2, 3\)"):
        model.forward_features(dict(batch, s2_doy=batch["s2_doy"][:, :2]))
    with pytest.raises(DataError, match="go with a"):
        model.forward_features({"s1": batch["s1"], "s1_doy": batch["s2_doy"]})
    with pytest.raises(DataError, match=r"\(B, T, 4, H, W\)"):
        model.forward_features(dict(batch, s2=batch["s2"][:, :, :3]))
    with pytest.raises(ConfigError, match="doy_embedding 'monthly' does not exist"):
        tiny("early", BANDS, doy_embedding="monthly")
    with pytest.raises(ConfigError, match="temporal_pool 'max' does not exist"):
        tiny("early", BANDS, temporal_pool="max")


def test_time_series_takes_ibot_masks_through_forward_tokens() -> None:
    model = tiny("xattn", BANDS, temporal_pool="attention")
    batch = series()
    masks = torch.zeros(2, 4, dtype=torch.bool)
    masks[0, 1] = masks[1, 3] = True
    token = torch.randn(64)
    tokens = forward_tokens(model, batch, masks, token)
    assert tokens.shape == (2, 9, 64) and torch.isfinite(tokens).all()
    assert not torch.allclose(tokens, forward_tokens(model, batch))
