"""Sentinel-2 and Sentinel-1 layouts on real GeoTIFFs and on the shared real samples."""

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import rasterio
import shapely
import torch
from pyproj import Transformer

from geodino.datasets import S2_BANDS, Sentinel1, Sentinel2
from geodino.errors import DataError

if TYPE_CHECKING:
    from tests.datasets.conftest import GeoTIFFWriter

RES = {
    b: 10
    if b in ("B02", "B03", "B04", "B08")
    else 20
    if b in ("B05", "B06", "B07", "B8A", "B11", "B12")
    else 60
    for b in S2_BANDS
}


def per_band_scene(
    geotiff: "GeoTIFFWriter",
    root: Path,
    name: str,
    skip: str | None = None,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (400000, 5500000),
    style: str = "distributed",
    offset: int = 0,
) -> None:
    """A 600 m scene, one file per band; band i holds 100 (i + 1) + offset everywhere."""
    for i, band in enumerate(S2_BANDS):
        if band == skip:
            continue
        size = 600 // RES[band]
        data = np.full((1, size, size), 100 * (i + 1) + offset, dtype="uint16")
        short = f"B{int(band[1:])}" if band != "B8A" else band
        path = (
            root / name / f"{name}_{band}.tif"
            if style == "distributed"
            else root / name / f"{short}.tif"
        )
        geotiff.write(path, data, crs=crs, origin=origin, res=RES[band], nodata=None)


def query(
    ds: Sentinel1 | Sentinel2, size: int = 30, x0: float | None = None, y_top: float | None = None
) -> tuple[slice, slice, slice]:
    """A TorchGeo 0.10 query of ``size`` pixels from (x0, y_top), default the bounds' corner."""
    xres, yres = ds.res
    x, y, t = ds.bounds
    x0 = x.start if x0 is None else x0
    y_top = y.stop if y_top is None else y_top
    return (slice(x0, x0 + size * xres, xres), slice(y_top - size * yres, y_top, yres), t)


def test_s2_per_band_files_at_three_resolutions(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    per_band_scene(geotiff, tmp_path, "T33UUP_20200101")
    ds = Sentinel2(tmp_path)
    assert ds.band_names == list(S2_BANDS) and ds.res == (10.0, 10.0) and ds.nodata == 0
    assert ds.band_kind == "optical" and len(ds.index) == 1
    image = ds[query(ds)]["image"]
    assert image.shape == (13, 30, 30)
    expected = torch.tensor([100.0 * (i + 1) for i in range(13)])
    torch.testing.assert_close(image[:, 10, 10], expected)
    sub = Sentinel2(tmp_path, bands=["B4", "B03", "b2", "b8a"])
    assert sub.band_names == ["B04", "B03", "B02", "B8A"]
    torch.testing.assert_close(
        sub[query(sub)]["image"][:, 0, 0], torch.tensor([400.0, 300, 200, 900])
    )


def test_s2_coarse_bands_are_interpolated_onto_the_10m_grid(
    tmp_path: Path, geotiff: "GeoTIFFWriter"
) -> None:
    geotiff.write(tmp_path / "s_B02.tif", np.full((1, 60, 60), 1000, "uint16"), origin=(0, 600))
    column = np.arange(30)
    geotiff.write(
        tmp_path / "s_B05.tif",
        np.broadcast_to(100 * (column + 1), (1, 30, 30)).astype("uint16"),
        origin=(0, 600),
        res=20,
    )
    geotiff.write(
        tmp_path / "s_B01.tif",
        np.broadcast_to(600 * (np.arange(10) + 1), (1, 10, 10)).astype("uint16"),
        origin=(0, 600),
        res=60,
    )
    ds = Sentinel2(tmp_path)
    assert ds.band_names == ["B01", "B02", "B05"] and ds.res == (10.0, 10.0)
    image = ds[query(ds, 60)]["image"]
    x = 10 * np.arange(60) + 5.0  # 10 m pixel centres
    # the 20 m and 60 m ramps are linear in x: bilinear resampling reproduces them inside
    np.testing.assert_allclose(image[2, 7, 2:58].numpy(), (5 * x + 50)[2:58])
    np.testing.assert_allclose(image[0, 7, 6:54].numpy(), (10 * x + 300)[6:54])
    assert (image[1] == 1000).all()


def test_s2_scenes_in_two_utm_zones_with_nodata_margins(
    tmp_path: Path, geotiff: "GeoTIFFWriter"
) -> None:
    west_origin = (724400.0, 4990000.0)  # zone 31, its NE corner touches zone 32 at ~6 deg E
    per_band_scene(geotiff, tmp_path, "A_T31", crs="EPSG:32631", origin=west_origin)
    x_east, y_east = Transformer.from_crs(32631, 32632, always_xy=True).transform(725000, 4990000)
    per_band_scene(geotiff, tmp_path, "B_T32", crs="EPSG:32632", origin=(x_east, y_east), offset=5)
    # a nodata (0) margin on the west scene's west side, in every band
    for path in (tmp_path / "A_T31").glob("*.tif"):
        with rasterio.open(path, "r+") as dst:
            data = dst.read()
            data[:, :, : data.shape[2] // 5] = 0  # 120 m in every band
            dst.nodata = 0
            dst.write(data)
    ds = Sentinel2(tmp_path)
    assert ds.crs.to_epsg() == 32631 and len(ds.index) == 2 and ds.nodata == 0
    chip = ds[query(ds, 32, x0=725000 - 160, y_top=4990000 - 100)]["image"]
    west, east = chip[:, :, :14], chip[:, :, 19:]
    expected = torch.tensor([100.0 * (i + 1) for i in range(13)])
    torch.testing.assert_close(west[:, 5, 5], expected)
    assert all((west[i] == expected[i]).all() for i in range(13))
    # the east scene arrives warped from zone 32 with its own values; the seam is nodata
    valid = east[3] != 0
    assert valid.float().mean() > 0.85
    for i in range(13):
        assert set(east[i].unique().tolist()) <= {0.0, expected[i].item() + 5}
    margin = ds[query(ds, 16, x0=724400, y_top=4990000)]["image"]
    ten_m = [S2_BANDS.index(b) for b in ("B02", "B03", "B04", "B08")]
    assert (margin[ten_m, :, :12] == 0).all(), "the 10 m bands keep their 120 m margin exactly"
    # coarse bands interpolate valid pixels only: valid data reaches up to half a coarse
    # pixel into the margin, and is never blended with the fill value
    assert (margin[:, :, :9] == 0).all() and (margin[:, :, 12:] == expected[:, None, None]).all()
    assert all(set(margin[i].unique().tolist()) == {0.0, expected[i].item()} for i in range(13))


def test_ssl4eo_layout_with_unpadded_names(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    per_band_scene(geotiff, tmp_path / "000000", "S2A_T24KVE", style="ssl4eo")
    per_band_scene(
        geotiff, tmp_path / "000001", "S2A_T24KUF", style="ssl4eo", origin=(401000, 5500000)
    )
    ds = Sentinel2(tmp_path, bands=["B8A", "B1", "B10"])
    assert ds.band_names == ["B8A", "B01", "B10"] and len(ds.index) == 2
    torch.testing.assert_close(ds[query(ds)]["image"][:, 3, 3], torch.tensor([900.0, 100, 1100]))


def test_s2_scene_missing_a_band(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    per_band_scene(geotiff, tmp_path, "sceneA")
    per_band_scene(geotiff, tmp_path, "sceneB", skip="B8A", origin=(401000, 5500000))
    with pytest.raises(
        DataError, match=r"scene .*sceneB_\* lacks band file\(s\) \['B8A'\] that .*sceneA_\* has"
    ):
        Sentinel2(tmp_path)
    with pytest.raises(DataError, match=r"sceneB_\* lacks band file\(s\) \['B8A'\]"):
        Sentinel2(tmp_path, bands=["B02", "B8A"])
    # bands every scene has are enough
    ds = Sentinel2(tmp_path, bands=["B02", "B05"])
    assert "B8A" not in ds.all_bands and len(ds.index) == 2
    torch.testing.assert_close(ds[query(ds)]["image"][:, 0, 0], torch.tensor([200.0, 500.0]))


def test_s2_per_band_bad_files(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    per_band_scene(geotiff, tmp_path / "dup", "s")
    geotiff.write(
        tmp_path / "dup" / "s" / "s_B2.tif",
        np.ones((1, 60, 60), "uint16"),
        crs="EPSG:32633",
        origin=(400000, 5500000),
    )
    with pytest.raises(DataError, match="two files for band B02"):
        Sentinel2(tmp_path / "dup")
    per_band_scene(geotiff, tmp_path / "stack", "s")
    geotiff.write(
        tmp_path / "stack" / "s" / "s_B03.tif",
        np.ones((3, 60, 60), "uint16"),
        crs="EPSG:32633",
        origin=(400000, 5500000),
    )
    with pytest.raises(DataError, match=r"s_B03\.tif is named for one band but holds 3 bands"):
        Sentinel2(tmp_path / "stack")
    per_band_scene(geotiff, tmp_path / "stray", "s")
    geotiff.write(
        tmp_path / "stray" / "s" / "preview.tif",
        np.ones((1, 60, 60), "uint16"),
        crs="EPSG:32633",
        origin=(400000, 5500000),
    )
    with pytest.raises(DataError, match=r"preview\.tif carries no band name"):
        Sentinel2(tmp_path / "stray")
    per_band_scene(geotiff, tmp_path / "dtype", "s")
    geotiff.write(
        tmp_path / "dtype" / "s" / "s_B04.tif",
        np.ones((1, 60, 60), "float32"),
        crs="EPSG:32633",
        origin=(400000, 5500000),
    )
    with pytest.raises(DataError, match=r"mixed dtypes: .*s_B04\.tif is float32 but .* is uint16"):
        Sentinel2(tmp_path / "dtype")


def test_s2_damaged_band_file_drops_its_scene_with_warn(
    tmp_path: Path, geotiff: "GeoTIFFWriter", caplog: pytest.LogCaptureFixture
) -> None:
    per_band_scene(geotiff, tmp_path, "good")
    per_band_scene(geotiff, tmp_path, "bad", origin=(401000, 5500000))
    damaged = tmp_path / "bad" / "bad_B11.tif"
    damaged.write_bytes(damaged.read_bytes()[:300])
    with pytest.raises(DataError, match=r"bad_B11\.tif cannot be read"):
        Sentinel2(tmp_path)
    with caplog.at_level(logging.WARNING, logger="geodino"):
        ds = Sentinel2(tmp_path, on_unreadable="warn")
    assert ds.unreadable == [str(damaged)] and len(ds.index) == 1
    assert "bad_B11.tif" in caplog.text and "skipping scene" in caplog.text
    assert ds[query(ds)]["image"][10, 0, 0] == 1100


def test_s2_stacks_12_and_13_bands_and_descriptions(
    tmp_path: Path, geotiff: "GeoTIFFWriter"
) -> None:
    geotiff.write(tmp_path / "l2a" / "s.tif", np.ones((12, 20, 20), dtype="uint16"))
    assert Sentinel2(tmp_path / "l2a").band_names == [b for b in S2_BANDS if b != "B10"]
    l1c = np.arange(1, 14, dtype="uint16")[:, None, None] * np.ones((13, 20, 20), "uint16")
    geotiff.write(tmp_path / "l1c" / "s.tif", l1c)
    ds = Sentinel2(tmp_path / "l1c", bands=["B8A", "B08"])
    torch.testing.assert_close(ds[query(ds, 4)]["image"][:, 0, 0], torch.tensor([9.0, 8.0]))
    shuffled = ("B2", "B3", "B4", "B8")
    geotiff.write(tmp_path / "described" / "s.tif", l1c[:4], descriptions=shuffled)
    named = Sentinel2(tmp_path / "described", bands=["B08", "B02"])
    assert named.all_bands == ["B02", "B03", "B04", "B08"]
    torch.testing.assert_close(named[query(named, 4)]["image"][:, 0, 0], torch.tensor([4.0, 1.0]))
    geotiff.write(tmp_path / "odd" / "s.tif", np.ones((5, 20, 20), dtype="uint16"))
    with pytest.raises(DataError, match="has 5 bands; a Sentinel-2 stack has 13"):
        Sentinel2(tmp_path / "odd")
    with pytest.raises(DataError, match=r"unknown bands \['B13'\].*available: \['B01'"):
        Sentinel2(tmp_path / "l1c", bands=["B13"])


def test_s2_default_nodata_is_zero_and_fills_outside(
    tmp_path: Path, geotiff: "GeoTIFFWriter"
) -> None:
    geotiff.write(
        tmp_path / "s.tif", np.full((13, 20, 20), 7, "uint16"), nodata=None, origin=(0, 200)
    )
    ds = Sentinel2(tmp_path)
    assert ds.nodata == 0
    image = ds[query(ds, 8, x0=-40, y_top=200)]["image"]
    assert (image[:, :, :4] == 0).all() and (image[:, :, 4:] == 7).all()


def test_s1_stack_to_db_and_nodata(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    data = np.full((2, 20, 20), 0.01, dtype="float32")
    data[1] = 0.001
    data[:, :2] = 0  # nodata rows
    data[0, 5, 5] = -0.5  # invalid linear power
    geotiff.write(tmp_path / "s1.tif", data, descriptions=("VV", "VH"), nodata=0)
    ds = Sentinel1(tmp_path, to_db=True)
    assert ds.band_kind == "sar" and ds.nodata is not None and math.isnan(ds.nodata)
    image = ds[query(ds, 20)]["image"]
    torch.testing.assert_close(image[:, 10, 10], torch.tensor([-20.0, -30.0]))
    assert torch.isnan(image[:, :2]).all() and torch.isnan(image[0, 5, 5])
    assert torch.isfinite(image[:, 2:]).sum() == 2 * 18 * 20 - 1
    linear = Sentinel1(tmp_path)
    assert linear.nodata == 0 and linear[query(linear, 20)]["image"][0, 10, 10] == pytest.approx(
        0.01
    )
    vh = Sentinel1(tmp_path, bands=["VH"], to_db=True)
    assert vh.band_names == ["VH"] and vh[query(vh, 20)]["image"][0, 10, 10] == pytest.approx(-30)


def test_s1_per_band_files_with_a_custom_nodata(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    for band, value in (("VV", 0.1), ("VH", 0.02)):
        data = np.full((1, 32, 32), value, "float32")
        data[:, :, :3] = -9999
        geotiff.write(tmp_path / f"S1A_IW_20200101_{band}.tif", data, nodata=-9999)
    ds = Sentinel1(tmp_path, to_db=True)
    assert ds.band_names == ["VV", "VH"] and len(ds.index) == 1
    image = ds[query(ds, 32)]["image"]
    torch.testing.assert_close(image[:, 0, 5], torch.tensor([-10.0, 10 * math.log10(0.02)]))
    assert torch.isnan(image[:, :, :3]).all()
    raw = Sentinel1(tmp_path)
    assert raw.nodata == -9999 and (raw[query(raw, 32)]["image"][:, :, :3] == -9999).all()


def test_s1_nan_nodata_and_unknown_polarisation(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    data = np.full((2, 16, 16), -12.0, "float32")
    data[:, 0] = np.nan
    geotiff.write(tmp_path / "s1.tif", data, nodata=float("nan"))
    ds = Sentinel1(tmp_path)
    assert math.isnan(ds.nodata) and ds.band_names == ["VV", "VH"]
    image = ds[query(ds, 16)]["image"]
    assert torch.isnan(image[:, 0]).all() and (image[:, 1:] == -12).all()
    with pytest.raises(DataError, match=r"unknown bands \['HH'\].*available: \['VV', 'VH'\]"):
        Sentinel1(tmp_path, bands=["HH"])
    geotiff.write(tmp_path / "three" / "s1.tif", np.ones((3, 16, 16), "float32"))
    with pytest.raises(DataError, match="has 3 bands without descriptions; a Sentinel-1 stack"):
        Sentinel1(tmp_path / "three")


def test_real_bigearthnet_s2(shared_data: Path) -> None:
    root = shared_data / "bigearthnet" / "BigEarthNet-S2-Example"
    ds = Sentinel2(root)
    assert ds.band_names == [b for b in S2_BANDS if b != "B10"] and ds.res == (10.0, 10.0)
    assert len(ds.index) == 6 and ds.nodata == 0
    # every scene lands where its file says, whatever its UTM zone
    for row in ds.index.itertuples():
        with rasterio.open(row.filepath) as src:
            to_file = Transformer.from_crs(ds.crs, src.crs, always_xy=True)
            x, y = to_file.transform(*row.geometry.centroid.coords[0])
            assert shapely.box(*src.bounds).contains(shapely.Point(x, y)), row.filepath
    # a scene in the dataset's CRS reads exactly at 10 m; its 20 m band is interpolated
    scene = sorted(root.glob("*/*_B02.tif"))[0]
    with rasterio.open(scene) as src:
        assert src.crs == ds.crs
        b02 = src.read(1)
        x0, y_top = src.bounds.left, src.bounds.top
    with rasterio.open(str(scene).replace("_B02", "_B05")) as src:
        b05 = src.read(1).astype("float32")
    image = ds[query(ds, 120, x0=x0, y_top=y_top)]["image"]
    np.testing.assert_array_equal(image[ds.band_names.index("B02")].numpy(), b02)
    up = image[ds.band_names.index("B05")].numpy()
    pooled = up.reshape(60, 2, 60, 2).mean(axis=(1, 3))
    assert np.corrcoef(pooled[2:-2, 2:-2].ravel(), b05[2:-2, 2:-2].ravel())[0, 1] > 0.95
    assert up.min() >= b05.min() and up.max() <= b05.max()


def test_real_bigearthnet_s1_in_db(shared_data: Path) -> None:
    root = shared_data / "bigearthnet" / "BigEarthNet-S1-Example"
    ds = Sentinel1(root)
    assert ds.band_names == ["VV", "VH"] and len(ds.index) == 6 and ds.band_kind == "sar"
    vv = sorted(root.glob("*/*_VV.tif"))[0]
    with rasterio.open(vv) as src, rasterio.open(str(vv).replace("_VV", "_VH")) as vh:
        expected = np.stack([src.read(1), vh.read(1)])
        x0, y_top = src.bounds.left, src.bounds.top
        assert src.crs == ds.crs
    image = ds[query(ds, 120, x0=x0, y_top=y_top)]["image"].numpy()
    np.testing.assert_allclose(image, expected)
    assert image.max() < 10 and image.mean() < -5  # backscatter already in dB


def test_real_sen1floods11(shared_data: Path) -> None:
    folder = shared_data / "sen1floods11_sample"
    s2_path, s1_path = folder / "Spain_7370579_S2Hand.tif", folder / "Spain_7370579_S1Hand.tif"
    s2 = Sentinel2(s2_path)
    assert s2.band_names == list(S2_BANDS) and s2.nodata == 0 and s2.crs.to_epsg() == 4326
    with rasterio.open(s2_path) as src:
        expected = src.read(window=((100, 132), (200, 232))).astype("float32")
        x0, y_top = src.xy(100, 200, offset="ul")
    np.testing.assert_array_equal(s2[query(s2, 32, x0=x0, y_top=y_top)]["image"].numpy(), expected)
    s1 = Sentinel1(s1_path)
    assert math.isnan(s1.nodata) and s1.band_names == ["VV", "VH"]
    with rasterio.open(s1_path) as src:
        full = src.read()
        x0, y_top = src.xy(0, -8, offset="ul")  # 8 columns west of the chip
    image = s1[query(s1, 512, x0=x0, y_top=y_top)]["image"].numpy()
    assert np.isnan(image[:, :, :8]).all(), "outside the file: NaN, the file's nodata"
    np.testing.assert_allclose(image[:, :, 8:], full[:, :, :504])
    # in linear power and back: dB -> linear -> dB through to_db
    db = Sentinel1(s1_path, to_db=True)
    assert math.isnan(db.nodata)


def test_real_ssl4eo_layout(shared_data: Path) -> None:
    root = shared_data / "ssl4eo_style_sig_gis" / "imgs"
    ds = Sentinel2(root, bands=["B2", "B8A", "B10"])
    assert ds.all_bands == list(S2_BANDS) and ds.band_names == ["B02", "B8A", "B10"]
    assert len(ds.index) == 2 and ds.crs.to_epsg() == 4326
    folder = sorted(root.glob("*/*"))[0]
    with rasterio.open(folder / "B2.tif") as src:
        expected = src.read(1, window=((0, 16), (0, 16))).astype("float32")
        x0, y_top = src.bounds.left, src.bounds.top
    image = ds[query(ds, 16, x0=x0, y_top=y_top)]["image"]
    np.testing.assert_array_equal(image[0].numpy(), expected)
    assert (image[1:] > 0).all()


def test_docs_pages_run(run_doc_page: Callable[[str], dict]) -> None:
    s2 = run_doc_page("sources/sentinel2.md")
    assert isinstance(s2["ds"], Sentinel2)
    s1 = run_doc_page("sources/sentinel1.md")
    assert isinstance(s1["db"], Sentinel1)
