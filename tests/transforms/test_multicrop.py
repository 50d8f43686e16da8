"""MultiCrop: view order, shared geometry, crop statistics, band-kind photometry, determinism."""

import math

import pytest
import torch
from scipy.special import digamma, polygamma

import geodino.transforms.multicrop as multicrop
from geodino.errors import ConfigError, DataError
from geodino.transforms import MultiCrop
from geodino.transforms.multicrop import MultiCropRecipe

SMALL = {"global_crops_size": 32, "local_crops_size": 16, "local_crops_number": 3}
#: every photometric operation off: crops differ from the input by geometry only
PLAIN = {
    "brightness": 0.0,
    "contrast": 0.0,
    "per_band_jitter": 0.0,
    "blur_p": (0.0, 0.0, 0.0),
    "speckle_looks": None,
    "db_shift": 0.0,
}


@pytest.fixture(params=["per_crop", "batched"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Resample crop by crop (the CPU's way) or in batches (the accelerators' way)."""
    monkeypatch.setattr(multicrop, "_FORCE_BATCHED", request.param == "batched")
    return request.param


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dihedral(image: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/quarter turns of (C, H, W)."""
    return [torch.rot90(im, k, (-2, -1)) for im in (image, image.flip(-1)) for k in range(4)]


def test_shapes_and_view_major_order() -> None:
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 2, 64, 64).clone()
    out = MultiCrop(**SMALL, **PLAIN)(images, gen())
    assert out["global_crops"].shape == (8, 2, 32, 32)
    assert out["local_crops"].shape == (12, 2, 16, 16)
    assert out["global_crops"].dtype == torch.float32
    # view 0 of every image, then view 1, ...
    assert out["global_crops"][:, 0, 5, 5].round().tolist() == [0, 1, 2, 3] * 2
    assert out["local_crops"][:, 1, 5, 5].round().tolist() == [0, 1, 2, 3] * 3
    none = MultiCrop(global_crops_size=32, local_crops_size=16, local_crops_number=0)(images, gen())
    assert none["local_crops"].shape == (0, 2, 16, 16)
    assert none["global_crops"].shape == (8, 2, 32, 32)
    empty = MultiCrop(**SMALL)(torch.zeros(0, 2, 64, 64), gen())
    assert empty["global_crops"].shape == (0, 2, 32, 32)
    # crops are resized: an input smaller than the crops works, down to one pixel
    tiny = MultiCrop(**SMALL)(torch.rand(2, 2, 1, 1) + 1, gen())
    assert tiny["local_crops"].shape == (6, 2, 16, 16) and torch.isfinite(tiny["local_crops"]).all()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_geometry_is_shared_by_all_bands(interpolation: str, path: str) -> None:
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64) + torch.linspace(0, 3, 64).view(1, 1, 64, 1)
    images = ramp.expand(3, 3, 64, 64).clone()
    images[:, 1] = images[:, 1] * 10
    images[:, 2] = images[:, 2] * 5 + 3
    out = MultiCrop(**SMALL, **PLAIN, interpolation=interpolation)(images, gen(3))
    for crops in out.values():
        torch.testing.assert_close(crops[:, 1], crops[:, 0] * 10, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(crops[:, 2], crops[:, 0] * 5 + 3, rtol=1e-5, atol=1e-4)
        assert crops[:, 0].flatten(1).std(1).min() > 0  # a ramp, not a constant


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_full_image_crops_are_exact_flips_and_turns(interpolation: str, path: str) -> None:
    images = torch.rand(16, 2, 24, 24, generator=gen(5))
    crop = MultiCrop(
        global_crops_size=24,
        local_crops_size=8,
        local_crops_number=0,
        global_crops_scale=(1.0, 1.0),
        interpolation=interpolation,
        **PLAIN,
    )
    out = crop(images, gen())["global_crops"]
    for i, c in enumerate(out):
        candidates = dihedral(images[i % 16])
        assert min(float((c - d).abs().max()) for d in candidates) < 1e-5


def test_both_paths_resample_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    # a smooth image: the two anti-aliasing filters (triangle / box of bilinear samples, Keys
    # cubic / supersampled bicubic) then differ by little
    yy, xx = torch.meshgrid(torch.linspace(0, 3, 96), torch.linspace(0, 3, 96), indexing="ij")
    images = torch.stack([yy.sin() * xx.cos(), yy + xx]).expand(8, 2, 96, 96).clone()
    for interpolation in ("bilinear", "bicubic"):
        crop = MultiCrop(**SMALL, **PLAIN, interpolation=interpolation)
        per_crop = crop(images, gen(2))
        monkeypatch.setattr(multicrop, "_FORCE_BATCHED", True)
        batched = crop(images, gen(2))
        monkeypatch.undo()
        for key in per_crop:
            # borders differ most: interpolate clamps at the box, roi_align reads beyond it
            torch.testing.assert_close(batched[key], per_crop[key], rtol=0, atol=0.05)
            torch.testing.assert_close(
                batched[key][..., 2:-2, 2:-2], per_crop[key][..., 2:-2, 2:-2], rtol=0, atol=0.01
            )


def test_crop_areas_lie_within_the_configured_ranges(path: str) -> None:
    # bands hold the pixel's column and row: a crop's value range measures its box
    size = 120
    cols = torch.arange(size, dtype=torch.float32).view(1, size).expand(size, size)
    images = torch.stack([cols, cols.T]).expand(64, 2, size, size).clone()
    crop = MultiCrop(global_crops_size=32, local_crops_size=24, local_crops_number=2, **PLAIN)
    out = crop(images, gen(11))
    for key, (low, high), side in (
        ("global_crops", (0.32, 1.0), 32),
        ("local_crops", (0.05, 0.32), 24),
    ):
        crops = out[key]
        extent = (crops.amax((-2, -1)) - crops.amin((-2, -1))) * side / (side - 1)
        area = extent.prod(1) / size**2
        # boxes are whole pixels (sides rounded, as torchvision) and border pixels clamp
        assert area.min() >= low * 0.93 and area.max() <= high * 1.03
        assert abs(float(area.mean()) - (low + high) / 2) < 0.1 * (high - low) + 0.02
        aspect = extent[:, 0] / extent[:, 1]
        assert aspect.min() > 0.7 and aspect.max() < 1.43  # log-uniform in [3/4, 4/3]


def test_flip_and_rotation_rates() -> None:
    image = torch.zeros(1, 1, 16, 16)
    image[..., :4, :4] = 2.0  # strong mark north-west
    image[..., :4, -4:] = 1.0  # weak mark north-east: tells flips from turns
    images = image.expand(1600, 1, 16, 16).clone()
    candidates = torch.stack(dihedral(image[0]))  # identity, 3 turns, flip, flip + 3 turns

    def elements(crop: MultiCrop, seed: int) -> torch.Tensor:
        out = crop(images, gen(seed))["global_crops"][:1600]
        distance = (out[:, None] - candidates[None]).abs().flatten(2).amax(2)
        assert (distance.amin(1) < 1e-5).all()
        return distance.argmin(1)

    crop = MultiCrop(
        global_crops_size=16,
        local_crops_size=8,
        local_crops_number=0,
        global_crops_scale=(1.0, 1.0),
        flip_p=0.5,
        **PLAIN,
    )
    shares = torch.bincount(elements(crop, 0), minlength=8).float() / 1600
    assert ((shares - 1 / 8).abs() < 0.04).all()  # 5 sigma of a binomial share
    crop = MultiCrop(
        global_crops_size=16,
        local_crops_size=8,
        local_crops_number=0,
        global_crops_scale=(1.0, 1.0),
        flip_p=0.25,
        rotate90=False,
        **PLAIN,
    )
    found = elements(crop, 1)
    assert set(found.tolist()) <= {0, 4}  # no turns
    assert abs(float((found == 4).float().mean()) - 0.25) < 0.06


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_shrinking_crops_are_anti_aliased(interpolation: str, path: str) -> None:
    checker = (torch.arange(128).view(1, 128) + torch.arange(128).view(128, 1)) % 2
    images = checker.float().expand(8, 1, 128, 128).clone()
    # a box of 64 px shrunk to 16 px: without a low-pass filter the checkerboard aliases
    crop = MultiCrop(
        global_crops_size=16,
        local_crops_size=8,
        local_crops_number=0,
        global_crops_scale=(0.25, 0.25),
        interpolation=interpolation,
        **PLAIN,
    )
    out = crop(images, gen())["global_crops"]
    assert abs(float(out.mean()) - 0.5) < 0.02
    assert float(out.std()) < 0.1


def test_optical_jitter_changes_optical_bands_only() -> None:
    images = torch.rand(32, 3, 48, 48, generator=gen(2)) * 3000
    images[:, 1] = torch.rand(32, 48, 48, generator=gen(3)) * 20 - 25  # SAR band in dB
    kinds = ["optical", "sar", "optical"]
    reference = MultiCrop(**SMALL, **PLAIN, band_kinds=kinds)(images, gen(4))
    optical_only = {
        **PLAIN,
        "brightness": 0.4,
        "contrast": 0.4,
        "per_band_jitter": 0.05,
        "blur_p": (1.0, 1.0, 1.0),
        "jitter_p": 1.0,
    }
    out = MultiCrop(**SMALL, **optical_only, band_kinds=kinds)(images, gen(4))
    for key in out:
        assert torch.equal(out[key][:, 1], reference[key][:, 1])
        assert not torch.allclose(out[key][:, [0, 2]], reference[key][:, [0, 2]])
    # gain and contrast: a x + b per band, each crop's factors in the configured ranges
    constant = torch.full((64, 2, 32, 32), 1000.0)
    jitter = {**optical_only, "blur_p": (0.0, 0.0, 0.0), "jitter_p": 0.5}
    crops = MultiCrop(**SMALL, **jitter)(constant, gen(5))["global_crops"]
    gain = crops[:, :, 0, 0] / 1000
    # contrast keeps constants constant
    torch.testing.assert_close(crops, crops[:, :, :1, :1].expand_as(crops), rtol=1e-5, atol=0)
    assert gain.min() >= 0.6 * 0.95 - 1e-6 and gain.max() <= 1.4 * 1.05 + 1e-6
    changed = (gain != 1).any(1).float().mean()
    assert abs(float(changed) - 0.5) < 0.15
    ratio = gain[:, 0] / gain[:, 1]  # per-band jitter is mild: spectra keep their shape
    assert ratio.min() >= 0.95 / 1.05 - 1e-6 and ratio.max() <= 1.05 / 0.95 + 1e-6


def test_sar_operations_change_sar_bands_only() -> None:
    images = torch.rand(32, 3, 48, 48, generator=gen(2)) * 3000
    images[:, 1] = torch.rand(32, 48, 48, generator=gen(3)) * 20 - 25
    kinds = ["optical", "sar", "optical"]
    reference = MultiCrop(**SMALL, **PLAIN, band_kinds=kinds)(images, gen(4))
    sar_only = {**PLAIN, "speckle_looks": 4.0, "speckle_p": 1.0, "db_shift": 2.0, "jitter_p": 1.0}
    out = MultiCrop(**SMALL, **sar_only, band_kinds=kinds)(images, gen(4))
    for key in out:
        assert torch.equal(out[key][:, [0, 2]], reference[key][:, [0, 2]])
        assert not torch.allclose(out[key][:, 1], reference[key][:, 1])


@pytest.mark.parametrize("looks", [4.0, 0.7])
def test_speckle_follows_the_gamma_law_in_db(looks: float) -> None:
    images = torch.full((64, 1, 32, 32), -15.0)
    crop = MultiCrop.from_preset("sar", **SMALL, speckle_looks=looks, speckle_p=1.0, db_shift=0.0)
    noise = crop(images, gen())["global_crops"] + 15.0
    # 10 log10 of Gamma(L, 1/L): mean 10 (psi(L) - ln L) / ln 10, variance (10 / ln 10)^2 psi'(L)
    mean = 10 / math.log(10) * (digamma(looks) - math.log(looks))
    std = 10 / math.log(10) * math.sqrt(polygamma(1, looks))
    assert abs(float(noise.mean()) - mean) < 0.05 * std
    assert abs(float(noise.std()) - std) < 0.03 * std


def test_db_offset_rate_and_range() -> None:
    images = torch.full((400, 1, 16, 16), -10.0)
    crop = MultiCrop.from_preset(
        "sar",
        global_crops_size=8,
        local_crops_size=8,
        local_crops_number=0,
        speckle_looks=None,
        db_shift=1.5,
        jitter_p=0.8,
    )
    out = crop(images, gen())["global_crops"]
    shift = out[:, 0] + 10.0
    # one offset per crop
    torch.testing.assert_close(shift, shift[:, :1, :1].expand_as(shift), rtol=0, atol=1e-5)
    shift = shift[:, 0, 0]
    assert shift.abs().max() <= 1.5 + 1e-5
    assert abs(float((shift.abs() > 1e-5).float().mean()) - 0.8) < 0.06


def test_multispectral_presets_have_no_rgb_operations() -> None:
    for name, kinds in (("optical", None), ("sar", None), ("s1s2", ["sar", "optical"])):
        crop = MultiCrop.from_preset(name, band_kinds=kinds)
        recipe = crop.recipe
        assert recipe.saturation == recipe.hue == recipe.grayscale_p == recipe.solarize_p == 0
        assert not crop.rgb
    # and behaviourally: 13 bands pass, which the RGB operations would refuse
    out = MultiCrop.from_preset("optical", **SMALL)(torch.rand(2, 13, 40, 40), gen())
    assert out["global_crops"].shape == (4, 13, 32, 32)
    with pytest.raises(ConfigError, match="3 optical"):
        MultiCrop.from_preset("dinov2_rgb", **SMALL)(torch.rand(2, 13, 40, 40), gen())


def test_sar_preset_treats_every_band_as_sar() -> None:
    images = torch.full((8, 2, 32, 32), -12.0)
    out = MultiCrop.from_preset("sar", **SMALL, speckle_p=1.0)(images, gen())["global_crops"]
    assert (out != -12.0).float().mean() > 0.9


def test_rgb_preset_is_the_official_recipe() -> None:
    crop = MultiCrop.from_preset("dinov2_rgb", **SMALL)
    preset = crop.recipe
    assert preset.blur_p == (0.0, 0.9, 0.5)
    jitter = (preset.brightness, preset.contrast, preset.saturation, preset.hue)
    assert jitter == (0.4, 0.4, 0.2, 0.1)
    assert (preset.jitter_p, preset.grayscale_p, preset.solarize_p) == (0.8, 0.2, 0.2)
    assert preset.interpolation == "bicubic" and not preset.rotate90
    images = torch.rand(64, 3, 40, 40, generator=gen(1)) * 255
    out = crop(images, gen())
    for crops in out.values():
        assert crops.min() >= 0 and crops.max() <= 255
    gray = (out["global_crops"][:, 0] == out["global_crops"][:, 1]).flatten(1).all(1)
    assert 0.05 < float(gray.float().mean()) < 0.4


def test_rgb_preset_applies_blur_as_the_official_code() -> None:
    # everything but blur off; sigma >= 1 so that every blurred crop visibly changes
    only_blur = {"jitter_p": 0.0, "grayscale_p": 0.0, "solarize_p": 0.0, "blur_sigma": (1.0, 2.0)}
    crop = MultiCrop.from_preset(
        "dinov2_rgb", global_crops_size=16, local_crops_size=16, local_crops_number=2, **only_blur
    )
    sharp = MultiCrop.from_preset(
        "dinov2_rgb",
        global_crops_size=16,
        local_crops_size=16,
        local_crops_number=2,
        **only_blur,
        blur_p=(0.0, 0.0, 0.0),
    )
    images = torch.rand(400, 3, 24, 24, generator=gen(1)) * 255
    blurred, reference = crop(images, gen(2)), sharp(images, gen(2))
    changed = {
        key: (blurred[key] - reference[key]).abs().flatten(1).amax(1) > 1e-3 for key in blurred
    }
    global1, global2 = changed["global_crops"][:400], changed["global_crops"][400:]
    assert not global1.any()
    assert abs(float(global2.float().mean()) - 0.9) < 0.05
    assert abs(float(changed["local_crops"].float().mean()) - 0.5) < 0.06


def test_solarisation_only_on_the_second_global_crop() -> None:
    images = torch.full((200, 3, 16, 16), 200.0)
    crop = MultiCrop.from_preset(
        "dinov2_rgb",
        global_crops_size=8,
        local_crops_size=8,
        local_crops_number=1,
        jitter_p=0.0,
        grayscale_p=0.0,
        blur_p=(0.0, 0.0, 0.0),
        solarize_p=0.5,
    )
    out = crop(images, gen())
    solarized = (out["global_crops"] - 55.0).abs().flatten(1).amax(1) < 1e-3
    assert not solarized[:200].any()
    torch.testing.assert_close(
        out["local_crops"], torch.full_like(out["local_crops"], 200.0), rtol=1e-5, atol=0
    )
    assert abs(float(solarized[200:].float().mean()) - 0.5) < 0.15


def test_deterministic_for_a_generator_state(path: str) -> None:
    images = torch.rand(3, 4, 48, 48) * 1000
    images[:, 3] -= 1020
    for crop in (
        MultiCrop(**SMALL, band_kinds=["optical"] * 3 + ["sar"]),
        MultiCrop.from_preset("dinov2_rgb", **SMALL, max_value=1000.0),
    ):
        x = images if crop.band_kinds else images[:, :3]
        g = gen(7)
        state = g.get_state()
        a = crop(x, g)
        g.set_state(state)
        b = crop(x, g)
        c = crop(x, gen(8))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not torch.equal(a["global_crops"], c["global_crops"])
        assert not torch.equal(a["local_crops"], c["local_crops"])


def test_the_generator_is_the_only_source_of_randomness() -> None:
    images = torch.rand(2, 2, 32, 32) * 10
    state = torch.get_rng_state()
    MultiCrop(**SMALL, band_kinds=["optical", "sar"])(images, gen())
    assert torch.equal(state, torch.get_rng_state())


def test_chunking_does_not_change_the_crops(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    images = torch.rand(6, 3, 48, 48, generator=gen(9)) * 100
    for kwargs in ({}, {"interpolation": "bicubic"}):
        crop = MultiCrop(**SMALL, **kwargs)
        monkeypatch.setattr(multicrop, "_CPU_CHUNK", 2**30)  # one chunk
        whole = crop(images, gen(1))
        monkeypatch.setattr(multicrop, "_CPU_CHUNK", 1)  # one crop per chunk
        pieces = crop(images, gen(1))
        for key in whole:
            torch.testing.assert_close(pieces[key], whole[key], rtol=1e-5, atol=1e-3)


def test_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="band_kinds lists 2 bands but the images have 3"):
        MultiCrop(**SMALL, band_kinds=["optical", "sar"])(torch.rand(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="thermal"):
        MultiCrop(band_kinds=["thermal"])
    with pytest.raises(ConfigError, match="one kind per band"):
        MultiCrop(band_kinds="sar")
    with pytest.raises(ConfigError, match="global_crops_scale"):
        MultiCrop(global_crops_scale=(0.5, 1.5))
    with pytest.raises(ConfigError, match="local_crops_scale"):
        MultiCrop(local_crops_scale=(0.0, 0.3))
    with pytest.raises(ConfigError, match="local_crops_size=0"):
        MultiCrop(local_crops_size=0)
    with pytest.raises(ConfigError, match="local_crops_number"):
        MultiCrop(local_crops_number=-1)
    with pytest.raises(ConfigError, match=r"blur_p\[1\]=1.5"):
        MultiCrop(blur_p=(1.0, 1.5, 0.5))
    with pytest.raises(ConfigError, match="interpolation"):
        MultiCrop(interpolation="nearest")
    with pytest.raises(ConfigError, match="speckle_looks"):
        MultiCrop(speckle_looks=0)
    with pytest.raises(ConfigError, match="preset"):
        MultiCrop.from_preset("hyperspectral")
    with pytest.raises(ConfigError, match=r"s1s2.*band_kinds"):
        MultiCrop.from_preset("s1s2")
    with pytest.raises(DataError, match=r"\(B, C, H, W\)"):
        MultiCrop(**SMALL)(torch.rand(3, 32, 32))


def test_recipe_is_a_frozen_checked_value() -> None:
    crop = MultiCrop(**SMALL, band_kinds=["optical", "sar"], blur_p=(1, 0, 0.5))
    recipe = crop.recipe
    assert recipe == MultiCropRecipe(**SMALL, band_kinds=("optical", "sar"), blur_p=(1.0, 0.0, 0.5))
    assert recipe.band_kinds == ("optical", "sar") and crop.band_kinds == ["optical", "sar"]
    assert isinstance(recipe.blur_p[0], float)
    with pytest.raises(AttributeError):
        recipe.flip_p = 0.0  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"flip_p=1\.5 is not a probability"):
        MultiCropRecipe(flip_p=1.5)
    with pytest.raises(ConfigError, match="band_kinds='sar': give a list"):
        MultiCropRecipe(band_kinds="sar")
    # a multi-crop made from a recipe crops as one made from the same arguments
    images = torch.rand(2, 2, 40, 40, generator=gen(2))
    a = MultiCrop.from_recipe(recipe)(images, gen(4))
    b = crop(images, gen(4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert MultiCrop.from_preset("sar").recipe.default_kind == "sar"


def test_named_draws_are_the_columns_of_one_uniform_draw() -> None:
    """The names only label columns: the stream of a seed is one rand(n, 40 + C) call."""
    draws = multicrop._Draws.draw(5, 3, gen(7))
    u = torch.rand(5, 43, generator=gen(7), dtype=torch.float64)
    assert torch.equal(draws.crop_area, u[:, 0:10]) and torch.equal(draws.crop_ratio, u[:, 10:20])
    assert torch.equal(draws.crop_top, u[:, 20]) and torch.equal(draws.order, u[:, 29:33])
    assert torch.equal(draws.solarize, u[:, 39]) and torch.equal(draws.band_gain, u[:, 40:])
    singles = [name for name, width in multicrop._DRAW_COLUMNS if width == 1]
    assert len(singles) == 16 and sum(w for _, w in multicrop._DRAW_COLUMNS) == 40
