"""PairedDataset: S1 and S2 chips of the same footprint, pixel-aligned, on one grid."""

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from geodino.datasets import PairedDataset, Sentinel1, Sentinel2
from geodino.errors import DataError

BEN_S2 = "BigEarthNet-S2-Example/S2A_MSIL2A_20170613T101031_87_48"
BEN_S1 = "BigEarthNet-S1-Example/S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"


def window_query(dataset: PairedDataset, path: Path, col: int, row: int, size: int) -> tuple:
    """The query of a window of ``path``'s pixel grid (which must be the dataset's)."""
    with rasterio.open(path) as src:
        left, top = src.transform @ (col, row)
        rx, ry = src.res
    t = dataset.bounds[2]
    return (slice(left, left + size * rx, rx), slice(top - size * ry, top, ry), t)


def read(path: Path, col: int, row: int, size: int) -> torch.Tensor:
    with rasterio.open(path) as src:
        data = src.read(window=Window(col, row, size, size)).astype(np.float32)
        if src.nodata is not None and not math.isnan(src.nodata):
            data[data == src.nodata] = np.nan
    return torch.from_numpy(data)


def test_sen1floods11_s1_and_s2_chips_are_pixel_aligned(shared_data: Path) -> None:
    folder = shared_data / "sen1floods11_sample"
    s2_file, s1_file = folder / "Spain_7370579_S2Hand.tif", folder / "Spain_7370579_S1Hand.tif"
    pairs = PairedDataset({"s2": Sentinel2(s2_file), "s1": Sentinel1(s1_file)})
    assert pairs.band_groups == {"s2": 13, "s1": 2}
    assert pairs.band_names[-2:] == ["VV", "VH"] and pairs.band_names[:2] == ["B01", "B02"]
    assert pairs.band_kinds == ["optical"] * 13 + ["sar"] * 2
    for col, row, size in ((0, 0, 64), (137, 301, 96), (448, 448, 64)):
        sample = pairs[window_query(pairs, s2_file, col, row, size)]
        image = sample["image"]
        assert image.shape == (15, size, size) and image.dtype == torch.float32
        torch.testing.assert_close(image[:13], read(s2_file, col, row, size), equal_nan=True)
        torch.testing.assert_close(image[13:], read(s1_file, col, row, size), equal_nan=True)
    # S2 nodata (0) and S1 nodata (NaN) both arrive as NaN
    assert math.isnan(pairs.nodata)


def test_bigearthnet_per_band_s2_at_10_20_60_m_pairs_with_s1(shared_data: Path) -> None:
    root = shared_data / "bigearthnet"
    s2, s1 = Sentinel2(root / BEN_S2), Sentinel1(root / BEN_S1)
    pairs = PairedDataset({"s2": s2, "s1": s1})
    assert pairs.band_groups == {"s2": 12, "s1": 2} and pairs.res == (10.0, 10.0)
    b02 = root / BEN_S2 / f"{Path(BEN_S2).name}_B02.tif"
    vv = root / BEN_S1 / f"{Path(BEN_S1).name}_VV.tif"
    sample = pairs[window_query(pairs, b02, 0, 0, 120)]
    image = sample["image"]
    assert image.shape == (14, 120, 120)
    names = pairs.band_names
    # 10 m bands and S1 read exactly; the 20 m and 60 m bands resampled onto the 10 m grid
    torch.testing.assert_close(image[names.index("B02")], read(b02, 0, 0, 120)[0])
    torch.testing.assert_close(image[names.index("VV")], read(vv, 0, 0, 120)[0])
    for band, factor in (("B05", 2), ("B01", 6)):
        with rasterio.open(root / BEN_S2 / f"{Path(BEN_S2).name}_{band}.tif") as src:
            coarse = torch.from_numpy(src.read(1).astype(np.float32))
        fine = image[names.index(band)]
        # each block of factor x factor fine pixels averages back to about its coarse pixel
        pooled = torch.nn.functional.avg_pool2d(fine[None, None], factor)[0, 0]
        inner = (slice(1, -1), slice(1, -1))
        assert (
            torch.corrcoef(torch.stack([pooled[inner].flatten(), coarse[inner].flatten()]))[0, 1]
            > 0.95
        )
    # a sub-window: same footprint in both modalities
    sub = pairs[window_query(pairs, b02, 30, 50, 56)]["image"]
    torch.testing.assert_close(sub[names.index("VV")], read(vv, 30, 50, 56)[0])
    torch.testing.assert_close(sub[names.index("B02")], read(b02, 30, 50, 56)[0])


def test_bigearthnet_patches_in_three_utm_zones_pair_on_the_first_grid(shared_data: Path) -> None:
    root = shared_data / "bigearthnet"
    pairs = PairedDataset(
        {
            "s2": Sentinel2(root / "BigEarthNet-S2-Example"),
            "s1": Sentinel1(root / "BigEarthNet-S1-Example"),
        }
    )
    # six patches, each S2 footprint paired with its own S1 footprint only
    assert len(pairs.index) == 6
    _, _, t = pairs.bounds
    for _, row in pairs.index.iterrows():
        x0, y0, x1, y1 = row.geometry.bounds
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        query = (slice(cx - 280, cx + 280, 10.0), slice(cy - 280, cy + 280, 10.0), t)
        image = pairs[query]["image"]
        assert image.shape == (14, 56, 56)
        assert torch.isfinite(image).float().mean() > 0.99


class DatedS2(Sentinel2):
    """Sentinel-2 files named ``S2A_MSIL2A_<yyyymmddThhmmss>_...``."""

    filename_regex = r"^S2A_MSIL2A_(?P<date>\d{8}T\d{6})_"
    date_format = "%Y%m%dT%H%M%S"


class DatedS1(Sentinel1):
    """Sentinel-1 files named ``S1A_IW_GRDH_1SDV_<yyyymmddThhmmss>_...``."""

    filename_regex = r"^S1A_IW_GRDH_1SDV_(?P<date>\d{8}T\d{6})_"
    date_format = "%Y%m%dT%H%M%S"


def test_max_gap_days_pairs_only_acquisitions_close_in_time(shared_data: Path) -> None:
    root = shared_data / "bigearthnet"
    # S2 at 10:10, S1 at 16:50 the same day: 0.28 days apart
    with pytest.raises(DataError, match=r"within max_gap_days=0.1 \(the closest pair is 0.3 days"):
        PairedDataset(
            {"s2": DatedS2(root / BEN_S2), "s1": DatedS1(root / BEN_S1)}, max_gap_days=0.1
        )
    pairs = PairedDataset(
        {"s2": DatedS2(root / BEN_S2), "s1": DatedS1(root / BEN_S1)}, max_gap_days=0.5
    )
    assert len(pairs.index) == 1
    interval = pairs.index.index[0]
    assert interval.left.hour == 10 and interval.right.hour == 16
    b02 = root / BEN_S2 / f"{Path(BEN_S2).name}_B02.tif"
    assert pairs[window_query(pairs, b02, 0, 0, 56)]["image"].shape == (14, 56, 56)


def test_modalities_that_do_not_overlap_are_refused(geotiff, tmp_path: Path) -> None:
    geotiff.write(tmp_path / "s2" / "a.tif", geotiff.ramp(13, 64), origin=(600000.0, 5000000.0))
    geotiff.write(
        tmp_path / "s1" / "b.tif",
        geotiff.ramp(2, 64, "float32"),
        origin=(610000.0, 5000000.0),
        nodata=None,
    )
    s2, s1 = Sentinel2(tmp_path / "s2"), Sentinel1(tmp_path / "s1")
    with pytest.raises(
        DataError,
        match=r"do not overlap in space: s2 \(Sentinel2\) covers x "
        r"600000..600640.*s1 \(Sentinel1\) covers x 610000",
    ):
        PairedDataset({"s2": s2, "s1": s1})


def test_one_modality_duplicated_bands_and_bad_gap_are_refused(geotiff, tmp_path: Path) -> None:
    geotiff.write(tmp_path / "s2" / "a.tif", geotiff.ramp(13, 64))
    geotiff.write(tmp_path / "s1" / "b.tif", geotiff.ramp(2, 64, "float32"), nodata=None)
    s2, s1 = Sentinel2(tmp_path / "s2"), Sentinel1(tmp_path / "s1")
    with pytest.raises(DataError, match="two or more modalities"):
        PairedDataset({"s2": s2})
    with pytest.raises(DataError, match=r"bands \['VH', 'VV'\] occur in more than one"):
        PairedDataset({"s1": s1, "s1_again": Sentinel1(tmp_path / "s1")})
    with pytest.raises(DataError, match="max_gap_days=-1"):
        PairedDataset({"s2": s2, "s1": s1}, max_gap_days=-1)
    with pytest.raises(DataError, match="not a TorchGeo GeoDataset"):
        PairedDataset({"s2": s2, "s1": [1, 2]})  # type: ignore[dict-item]


def test_s1_on_a_coarser_grid_in_another_crs_is_resampled_onto_the_s2_grid(
    geotiff, tmp_path: Path
) -> None:
    """S2 at 10 m in UTM 31N, S1 at 20 m in UTM 32N over the same place."""
    from pyproj import Transformer

    geotiff.write(tmp_path / "s2" / "a.tif", geotiff.ramp(13, 128), origin=(699000.0, 5000000.0))
    to32 = Transformer.from_crs("EPSG:32631", "EPSG:32632", always_xy=True)
    x, y = to32.transform(699000.0 - 320, 5000000.0 + 320)
    s1 = np.full((2, 96, 96), 0.05, dtype=np.float32)
    s1[1] = 0.01
    geotiff.write(
        tmp_path / "s1" / "b.tif", s1, crs="EPSG:32632", origin=(x, y), res=20.0, nodata=None
    )
    pairs = PairedDataset(
        {"s2": Sentinel2(tmp_path / "s2"), "s1": Sentinel1(tmp_path / "s1", to_db=True)}
    )
    assert pairs.crs.to_epsg() == 32631 and pairs.res == (10.0, 10.0)
    sample = pairs[window_query(pairs, tmp_path / "s2" / "a.tif", 32, 32, 64)]
    image = sample["image"]
    assert image.shape == (15, 64, 64)
    torch.testing.assert_close(image[:13], read(tmp_path / "s2" / "a.tif", 32, 32, 64))
    torch.testing.assert_close(image[13], torch.full((64, 64), 10 * math.log10(0.05)))
    torch.testing.assert_close(image[14], torch.full((64, 64), -20.0))


def test_fusion_guide_runs(run_doc_page) -> None:
    namespace = run_doc_page("fusion.md")
    assert namespace["tokens"].shape == (4, 21, 64)
    assert namespace["batch"]["image"].shape == (4, 15, 56, 56)
    # time series section
    assert namespace["series_batch"]["doy"][:, :3].tolist() == [[10, 105, 244]] * 4
    assert namespace["series_tokens"].shape == (4, 21, 64)


def test_chips_left_in_nodata_name_the_files_of_both_modalities(geotiff, tmp_path: Path) -> None:
    from geodino.datamodules import GeoDINODataModule

    geotiff.write(tmp_path / "s2" / "a.tif", np.zeros((13, 64, 64), dtype="uint16"))
    geotiff.write(tmp_path / "s1" / "b.tif", geotiff.ramp(2, 64, "float32"), nodata=None)
    pairs = PairedDataset({"s2": Sentinel2(tmp_path / "s2"), "s1": Sentinel1(tmp_path / "s1")})
    data = GeoDINODataModule(pairs, chip_size=32, max_redraws=2)
    data.setup_draws()
    with pytest.raises(DataError, match=r"all held more than max_nodata.*s2/a\.tif & .*s1/b\.tif"):
        data.train_draw(0)
