"""Multi-crop geometry and photometry statistics; iBOT mask statistics."""

import math

import pytest
import torch

from geodino.errors import ConfigError
from geodino.transforms import MaskingGenerator, MultiCrop, sample_ibot_masks

SMALL = {"global_crops_size": 32, "local_crops_size": 16, "local_crops_number": 3}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shapes_and_view_major_order() -> None:
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 2, 64, 64).clone()
    out = MultiCrop(**SMALL, brightness=0, contrast=0, blur_p=(0, 0, 0))(images, gen())
    assert out["global_crops"].shape == (8, 2, 32, 32) and out["local_crops"].shape == (12, 2, 16, 16)
    ids = out["global_crops"][:, 0, 0, 0].round().tolist()
    assert ids == [0, 1, 2, 3, 0, 1, 2, 3]  # view 0 of every image, then view 1
    assert out["local_crops"][:, 0, 0, 0].round().tolist() == [0, 1, 2, 3] * 3
    none = MultiCrop(global_crops_size=32, local_crops_size=16, local_crops_number=0)(images, gen())
    assert none["local_crops"].shape == (0, 2, 16, 16)


def test_geometry_is_shared_by_all_bands() -> None:
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(2, 3, 64, 64).clone()
    ramp[:, 1] *= 10
    ramp[:, 2] = ramp[:, 2] * 5 + 3
    out = MultiCrop(**SMALL, brightness=0, contrast=0, blur_p=(0, 0, 0))(ramp, gen())
    for crops in out.values():
        torch.testing.assert_close(crops[:, 1], crops[:, 0] * 10)
        torch.testing.assert_close(crops[:, 2], crops[:, 0] * 5 + 3)


def test_crop_scales_within_the_configured_ranges() -> None:
    crop = MultiCrop(**SMALL)
    areas = []
    for seed in range(20):
        for top, left, h, w in crop._boxes(16, 100, 100, (0.05, 0.32), gen(seed)):
            assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 100
            areas.append(h * w / 1e4)
    areas_t = torch.tensor(areas)
    assert areas_t.min() >= 0.04 and areas_t.max() <= 0.34
    assert abs(float(areas_t.mean()) - (0.05 + 0.32) / 2) < 0.03


def test_flip_and_rotation_rates() -> None:
    image = torch.zeros(1, 1, 32, 32)
    image[..., :8, :8] = 1  # a mark in the north-west corner
    images = image.expand(400, 1, 32, 32).clone()
    crop = MultiCrop(global_crops_size=32, local_crops_size=16, local_crops_number=0,
                     global_crops_scale=(1.0, 1.0), brightness=0, contrast=0, blur_p=(0, 0, 0))
    out = crop(images, gen())["global_crops"][:400]
    corners = torch.stack([out[:, 0, :4, :4].mean((1, 2)), out[:, 0, :4, -4:].mean((1, 2)),
                           out[:, 0, -4:, :4].mean((1, 2)), out[:, 0, -4:, -4:].mean((1, 2))], 1)
    where = corners.argmax(1)
    shares = torch.bincount(where, minlength=4).float() / 400
    assert (shares > 0.15).all() and (shares < 0.35).all()  # the mark lands in every corner


def test_photometry_follows_band_kinds() -> None:
    images = torch.full((64, 2, 32, 32), 100.0)
    images[:, 1] = -15.0  # a SAR band in dB
    crop = MultiCrop(**SMALL, band_kinds=["optical", "sar"], blur_p=(1, 1, 1), speckle_p=1.0)
    out = crop(images, gen())["global_crops"]
    optical, sar = out[:, 0], out[:, 1]
    assert optical.std() > 1 and (optical > 0).all()
    assert not torch.allclose(sar, torch.full_like(sar, -15.0))
    no_sar = MultiCrop(**SMALL, band_kinds=["optical", "optical"], brightness=0, contrast=0,
                       per_band_jitter=0, blur_p=(1, 1, 1))(images, gen())["global_crops"]
    torch.testing.assert_close(no_sar[:, 1], torch.full_like(no_sar[:, 1], -15.0))
    sar_only = MultiCrop(**SMALL, band_kinds=["sar", "sar"], speckle_looks=None, db_shift=0.0)
    torch.testing.assert_close(sar_only(images, gen())["global_crops"][:, 0],
                               torch.full((128, 32, 32), 100.0))


def test_deterministic_for_a_generator_state() -> None:
    images = torch.rand(3, 4, 48, 48) * 1000
    crop = MultiCrop(**SMALL, band_kinds=["optical"] * 3 + ["sar"])
    a, b, c = crop(images, gen(7)), crop(images, gen(7)), crop(images, gen(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["global_crops"], c["global_crops"])


def test_rgb_preset_applies_blur_as_the_official_code() -> None:
    preset = MultiCrop.from_preset("dinov2_rgb", **SMALL)
    assert preset.blur_p == (0.0, 0.9, 0.5)
    rates = []
    noise = torch.rand(1, 3, 32, 32, generator=gen(1)) * 255
    images = noise.expand(300, 3, 32, 32).clone()
    for view, p in enumerate(preset.blur_p):
        optical = torch.ones(1, 3, 1, 1, dtype=torch.bool)
        out = preset._blur(images, p, optical, gen(view))
        blurred = (out - images).abs().flatten(1).amax(1) > 1e-3
        rates.append(float(blurred.float().mean()))
    assert rates[0] == 0.0 and abs(rates[1] - 0.9) < 0.06 and abs(rates[2] - 0.5) < 0.08
    for name in ("optical", "sar", "s1s2"):
        p = MultiCrop.from_preset(name)
        assert p.saturation == p.hue == p.grayscale_p == p.solarize_p == 0


def test_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="band_kinds lists 2 bands but the images have 3"):
        MultiCrop(**SMALL, band_kinds=["optical", "sar"])(torch.rand(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="unknown"):
        MultiCrop(band_kinds=["thermal"])
    with pytest.raises(ConfigError, match="global_crops_scale"):
        MultiCrop(global_crops_scale=(0.5, 1.5))
    with pytest.raises(ConfigError, match="preset"):
        MultiCrop.from_preset("hyperspectral")


def test_ibot_masks_follow_dinov2() -> None:
    masks = sample_ibot_masks(64, (16, 16), 0.5, (0.1, 0.5), generator=gen())
    ratios = masks.float().mean(1)
    masked = ratios > 0
    assert int(masked.sum()) == 32
    assert ratios[masked].min() >= 0.05 and ratios.max() <= 0.5 + 1e-6
    assert abs(float(ratios[masked].mean()) - 0.3) < 0.06
    assert torch.equal(masks, sample_ibot_masks(64, (16, 16), generator=gen()))
    assert not torch.equal(masks, sample_ibot_masks(64, (16, 16), generator=gen(1)))


def test_mask_blocks_respect_aspect_limits() -> None:
    masker = MaskingGenerator((20, 20), min_aspect=0.3)
    for seed in range(30):
        mask = masker(16, gen(seed))
        rows, cols = mask.nonzero(as_tuple=True)
        if len(rows) == 0:
            continue
        h = int(rows.max() - rows.min() + 1)
        w = int(cols.max() - cols.min() + 1)
        if int(mask.sum()) == h * w:  # a single block
            assert 0.3 / 1.5 <= h / w <= 1.5 / 0.3
    assert math.isclose(masker.log_aspect_ratio[1], -math.log(0.3))
