"""Raw chips through the loader: files' dtype to the device, the same pixels as float32 reads."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from geodino.datamodules import GeoChipDraw, GeoDINODataModule, collate
from geodino.datasets import MultiBandGeoTIFF

MULTICROP = {"global_crops_size": 28, "local_crops_size": 14, "local_crops_number": 2}


def write_raster(path: Path, data: np.ndarray, origin: tuple[float, float]) -> None:
    """A (C, H, W) uint16 GeoTIFF in UTM 31N, 64-px DEFLATE tiles, nodata 0."""
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype=data.dtype, crs="EPSG:32631", nodata=0,
                       transform=from_origin(*origin, 10.0, 10.0), tiled=True, blockxsize=64,
                       blockysize=64, compress="deflate") as dst:
        dst.write(data)


class FloatReads:
    """A dataset read only through ``__getitem__`` (float32), as every chip was before raw reads."""

    def __init__(self, dataset: MultiBandGeoTIFF) -> None:
        self.dataset = dataset
        self.index = dataset.index
        self.crs = dataset.crs
        self.band_names = dataset.band_names

    def __getitem__(self, query: Any) -> dict[str, Any]:
        return self.dataset[query]


class CountingSampler:
    """Records every (index, attempt) a draw asks its sampler for."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.calls: list[tuple[int, int]] = []

    def sample(self, index: int, attempt: int = 0) -> Any:
        self.calls.append((index, attempt))
        return self.sampler.sample(index, attempt)


def uint16_catalog(root: Path) -> MultiBandGeoTIFF:
    """Two overlapping uint16 scenes, one with a nodata stripe: native chips, mosaics, redraws."""
    rng = np.random.default_rng(0)
    a = rng.integers(1, 4000, size=(3, 96, 160), dtype=np.uint16)
    a[:, :, :30] = 0  # nodata stripe: chips there are redrawn
    a[1, 60:70, 40:50] = 0  # nodata in one band only: still a nodata pixel
    write_raster(root / "a.tif", a, (500000, 5000000))
    b = rng.integers(1, 4000, size=(3, 96, 96), dtype=np.uint16)
    write_raster(root / "b.tif", b, (501280, 5000000))  # 32 px overlap
    return MultiBandGeoTIFF(root)


@pytest.mark.parametrize("nodata", [0, 0.0, 7, 0.5, -1, 70000, float("nan"), None])
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8])
def test_integer_nodata_fraction_equals_float_fraction(nodata: float | None, dtype: Any) -> None:
    rng = np.random.default_rng(1)
    array = rng.integers(0, 20, size=(3, 16, 16)).astype(dtype)
    if np.issubdtype(dtype, np.signedinteger):
        array[0, :4] = -1
    draw = GeoChipDraw(None, None, nodata)
    raw = torch.from_numpy(array)
    assert draw._nodata_fraction(None, raw) == draw._nodata_fraction(None, raw.float())


def test_raw_draws_equal_float_draws_with_the_same_redraws(tmp_path: Path) -> None:
    ds = uint16_catalog(tmp_path)
    dm = GeoDINODataModule(ds, chip_size=32, batch_size=4, seed=0, max_nodata=0.05,
                           multicrop=MULTICROP, statistics_chips=8)
    dm.setup_draws()
    sampler = dm.train_draw.sampler
    raw = GeoChipDraw(ds, CountingSampler(sampler), ds.nodata, 0.05)
    old = GeoChipDraw(FloatReads(ds), CountingSampler(sampler), ds.nodata, 0.05)
    dtypes = set()
    for position in range(40):
        got, expected = raw.raw(position), old(position)
        dtypes.add(got["image"].dtype)
        assert expected["image"].dtype == torch.float32
        for key in expected:
            torch.testing.assert_close(got[key].to(expected[key].dtype), expected[key],
                                       rtol=0, atol=0, msg=key)
    assert raw.sampler.calls == old.sampler.calls
    assert any(attempt > 0 for _, attempt in old.sampler.calls)  # some chips were redrawn
    assert dtypes == {torch.uint16, torch.float32}  # native reads and mosaics
    for position in range(40):  # calling the draw (statistics, scripts) still gives float32
        assert torch.equal(raw(position)["image"], old(position)["image"])


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_batches_cast_on_the_device_equal_float_batches(tmp_path: Path,
                                                               workers: int) -> None:
    ds = uint16_catalog(tmp_path)
    dm = GeoDINODataModule(ds, chip_size=32, batch_size=4, seed=0, max_nodata=0.3,
                           num_workers=workers, multicrop=MULTICROP, statistics_chips=8)
    dm.setup("fit")
    old = GeoChipDraw(FloatReads(ds), dm.train_draw.sampler, ds.nodata, 0.3)
    loader = iter(dm.train_dataloader())
    dtypes = set()
    for step in range(8):
        batch = next(loader)
        dtypes.add(batch["image"].dtype)
        expected = collate([old(p) for p in range(4 * step, 4 * step + 4)])
        torch.testing.assert_close(batch["image"].float(), expected["image"], rtol=0, atol=0)
        torch.testing.assert_close(batch["bounds"], expected["bounds"], rtol=0, atol=0)
        # what the model sees: cast, nodata filled and normalised on the device
        got = dm.on_after_batch_transfer(batch, 0)["image"]
        want = dm.on_after_batch_transfer(expected, 0)["image"]
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.uint16 in dtypes  # batches of native reads stay uint16 through the loader
    assert torch.float32 in dtypes  # a batch with a mosaic chip is promoted, not refused


def test_collate_promotes_mixed_image_dtypes() -> None:
    from torch.utils.data import default_collate

    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 4000, (2, 4, 4), generator=g) for _ in range(3)]
    samples = [{"image": images[0].to(torch.uint16)}, {"image": images[1].float()},
               {"image": images[2].to(torch.uint16)}]
    got = collate(samples)["image"]
    assert got.dtype == torch.float32
    assert torch.equal(got, default_collate([{"image": i.float()} for i in images])["image"])


def test_block_aligned_reaches_the_samplers(tmp_path: Path) -> None:
    ds = uint16_catalog(tmp_path)
    dm = GeoDINODataModule(ds, chip_size=32, batch_size=4, seed=0, max_nodata=0.3,
                           val_length=4, block_aligned=True, multicrop=MULTICROP,
                           statistics_chips=4)
    dm.setup("fit")
    for draw in (dm.train_draw, dm.val_draw):
        assert draw.sampler.blocks is not None and len(draw.sampler.blocks) == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert GeoDINODataModule(ds, chip_size=32)._sampler(None, 0).blocks is None  # off by default
