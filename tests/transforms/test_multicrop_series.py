"""Multi-crop of time series (B, T, C, H, W): one geometry per crop on every date."""

import pytest
import torch

from geodino.errors import ConfigError, DataError
from geodino.transforms import MultiCrop


def crop(**kwargs: object) -> MultiCrop:
    args = dict(global_crops_size=16, local_crops_size=8, local_crops_number=3)
    args.update(kwargs)
    return MultiCrop.from_preset("optical", **args)  # type: ignore[arg-type]


def test_series_crops_keep_their_geometry_and_photometry_across_dates() -> None:
    base = torch.rand(2, 1, 4, 32, 32, generator=torch.Generator().manual_seed(0)) + 0.5
    scale = torch.arange(1, 6, dtype=torch.float32).reshape(1, 5, 1, 1, 1)
    series = base * scale  # date t is date 0 times t + 1
    multicrop = crop(brightness=0.4, contrast=0.4, blur_p=(1.0, 1.0, 1.0))
    out = multicrop(series, generator=torch.Generator().manual_seed(1))
    assert out["global_crops"].shape == (4, 5, 4, 16, 16)
    assert out["local_crops"].shape == (6, 5, 4, 8, 8)
    for crops in out.values():
        # crop boxes, flips, turns, brightness, contrast and blur are linear and shared by
        # the dates: the ratio between dates survives every crop
        torch.testing.assert_close(crops, crops[:, :1] * scale, rtol=1e-4, atol=1e-4)
    # the crops differ between views (a real random crop, not the identity)
    assert not torch.allclose(out["global_crops"][:2], out["global_crops"][2:])


def test_a_one_date_series_crops_like_the_image() -> None:
    images = torch.rand(3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    multicrop = crop(brightness=0.4, contrast=0.4, per_band_jitter=0.1)
    single = multicrop(images, generator=torch.Generator().manual_seed(2))
    series = multicrop(images[:, None], generator=torch.Generator().manual_seed(2))
    for key, value in single.items():
        torch.testing.assert_close(series[key][:, 0], value, rtol=0, atol=0)


def test_per_band_jitter_is_drawn_per_date() -> None:
    series = torch.ones(1, 3, 2, 16, 16).expand(1, 3, 2, 16, 16).contiguous()
    out = crop(per_band_jitter=0.2, jitter_p=1.0, blur_p=(0.0, 0.0, 0.0))(
        series, generator=torch.Generator().manual_seed(3)
    )
    means = out["global_crops"].mean((-2, -1))  # (2, T, C)
    assert not torch.allclose(means[:, 0], means[:, 1])


def test_series_keep_sar_kinds_per_band() -> None:
    series = torch.zeros(2, 3, 3, 16, 16)
    multicrop = MultiCrop.from_preset(
        "s1s2", band_kinds=["optical", "sar", "sar"], global_crops_size=8, local_crops_number=0
    )
    out = multicrop(series, generator=torch.Generator().manual_seed(0))["global_crops"]
    assert out.shape == (4, 3, 3, 8, 8)
    assert out[:, :, 0].abs().max() == 0  # optical zeros stay zeros (multiplicative jitter)
    assert out[:, :, 1:].abs().max() > 0  # SAR bands get speckle and dB offsets


def test_rgb_operations_refuse_series() -> None:
    multicrop = MultiCrop.from_preset("dinov2_rgb", global_crops_size=8, local_crops_size=4)
    with pytest.raises(ConfigError, match="not time series"):
        multicrop(torch.rand(1, 2, 3, 16, 16))


def test_wrong_rank_is_refused() -> None:
    with pytest.raises(DataError, match=r"\(B, T, C, H, W\)"):
        crop()(torch.rand(1, 1, 2, 3, 16, 16))
