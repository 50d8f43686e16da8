"""TimeSeries: the acquisitions of a dated GeoTIFF catalog at one chip, stacked over time."""

import math
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin
from torch.utils.data import DataLoader
from torchgeo.datasets import stack_samples
from torchgeo.samplers import GriddedPatchSampler

from geodino.datasets import MultiBandGeoTIFF, TimeSeries
from geodino.errors import ConfigError, DataError

DATES = ["20230110", "20230415", "20230901"]
ORIGIN = (500_000.0, 4_200_000.0)
RES = 10.0


class DatedScenes(MultiBandGeoTIFF):
    """3-band scenes named ``scene_YYYYMMDD.tif``."""

    filename_regex = r"^scene_(?P<date>\d{8})"
    date_format = "%Y%m%d"


def write_scene(
    path: Path, seed: int, size: int = 64, origin: tuple[float, float] = ORIGIN, nodata: int = 0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 10_000, (3, size, size), dtype=np.uint16)
    data[:, :4, :4] = nodata
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint16",
        crs=CRS.from_epsg(32633),
        transform=from_origin(*origin, RES, RES),
        nodata=nodata,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return data


def query(col: int, row: int, size: int, dataset: TimeSeries) -> tuple[slice, slice, slice]:
    left, top = ORIGIN[0] + col * RES, ORIGIN[1] - row * RES
    return (
        slice(left, left + size * RES, RES),
        slice(top - size * RES, top, RES),
        dataset.bounds[2],
    )


@pytest.fixture()
def catalog(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    # written out of date order: the series must come back sorted by date
    return tmp_path, {
        d: write_scene(tmp_path / f"scene_{d}.tif", seed=i) for i, d in enumerate(reversed(DATES))
    }


def doy(stamp: str) -> int:
    return date(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:])).timetuple().tm_yday


def test_reads_every_acquisition_in_date_order_with_day_of_year(catalog) -> None:
    root, scenes = catalog
    series = TimeSeries(DatedScenes(root))
    assert series.band_names == ["B1", "B2", "B3"] and series.res == (RES, RES)
    sample = series[query(0, 0, 32, series)]
    assert sample["image"].shape == (3, 3, 32, 32) and sample["image"].dtype == torch.float32
    assert sample["doy"].tolist() == [doy(d) for d in DATES] == [10, 105, 244]
    for step, stamp in enumerate(DATES):
        expected = torch.from_numpy(scenes[stamp][:, :32, :32].astype(np.float32))
        expected[expected == 0] = math.nan
        torch.testing.assert_close(sample["image"][step], expected, equal_nan=True)
    # the scenes' nodata (0) arrives as NaN
    assert sample["image"][:, :, :4, :4].isnan().all()


def test_query_time_window_selects_the_acquisitions(catalog) -> None:
    root, _ = catalog
    series = TimeSeries(DatedScenes(root))
    x, y, t = query(8, 8, 28, series)
    window = (x, y, slice(pd.Timestamp("2023-03-01"), pd.Timestamp("2023-12-31"), t.step))
    sample = series[window]
    assert sample["doy"].tolist() == [105, 244]
    assert sample["image"].shape == (2, 3, 28, 28)


def test_length_pads_and_thins_and_batches_collate(catalog) -> None:
    root, _ = catalog
    padded = TimeSeries(DatedScenes(root), length=5)
    sample = padded[query(0, 0, 28, padded)]
    assert sample["image"].shape == (5, 3, 28, 28)
    assert sample["doy"].tolist() == [10, 105, 244, 0, 0]
    assert sample["image"][3:].isnan().all() and not sample["image"][:3, :, 8:].isnan().any()
    thinned = TimeSeries(DatedScenes(root), length=2)
    assert thinned[query(0, 0, 28, thinned)]["doy"].tolist() == [10, 244]
    # a TorchGeo sampler and collate give (B, T, C, H, W) batches
    sampler = GriddedPatchSampler(padded, size=28, stride=28)
    batch = next(iter(DataLoader(padded, sampler=sampler, batch_size=2, collate_fn=stack_samples)))
    assert batch["image"].shape == (2, 5, 3, 28, 28)
    assert batch["doy"].tolist() == [[10, 105, 244, 0, 0]] * 2


def test_bad_input_is_a_clear_error(tmp_path: Path, catalog) -> None:
    root, _ = catalog
    with pytest.raises(ConfigError, match="length=0"):
        TimeSeries(DatedScenes(root), length=0)
    undated = tmp_path / "undated"
    undated.mkdir()
    write_scene(undated / "tile.tif", seed=5)
    with pytest.raises(DataError, match="date"):
        TimeSeries(MultiBandGeoTIFF(undated))
    series = TimeSeries(DatedScenes(root))
    x, y, t = query(0, 0, 28, series)
    with pytest.raises(DataError, match="no acquisition"):
        series[(x, y, slice(pd.Timestamp("2024-01-01"), pd.Timestamp("2024-02-01"), t.step))]


def test_paired_dataset_refuses_a_time_series_modality(catalog) -> None:
    from geodino.datasets import PairedDataset

    root, _ = catalog
    with pytest.raises(DataError, match=r"modality 's2' is a time series.*s2_doy"):
        PairedDataset({"s2": TimeSeries(DatedScenes(root)), "s1": DatedScenes(root)})


def test_time_series_guide_runs(run_doc_page) -> None:
    namespace = run_doc_page("time-series.md")
    assert namespace["features"].shape == (1, 32)
    assert namespace["doy"][0].tolist()[-1] == 0
