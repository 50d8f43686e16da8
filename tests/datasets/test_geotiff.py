"""MultiBandGeoTIFF on real GeoTIFFs: pixel values, CRSs, nodata and every bad input."""

import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin

from geodino.datasets import MultiBandGeoTIFF
from geodino.errors import DataError


def write(path: Path, data: np.ndarray, crs: str | None = "EPSG:32631",
          origin: tuple[float, float] = (699000.0, 5000000.0), res: float = 10.0,
          nodata: float | None = 0, descriptions: tuple[str, ...] | None = None,
          transform: Affine | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "height": data.shape[1], "width": data.shape[2],
               "count": data.shape[0], "dtype": data.dtype, "crs": crs, "nodata": nodata,
               "transform": transform or from_origin(*origin, res, res),
               "tiled": True, "blockxsize": 32, "blockysize": 32, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions
    return path


def ramp(bands: int = 3, size: int = 64, dtype: str = "uint16") -> np.ndarray:
    """Band b, row r, column c holds 1000 b + 10 r + c (never 0)."""
    b, r, c = np.meshgrid(np.arange(bands), np.arange(size), np.arange(size), indexing="ij")
    return (1000 * (b + 1) + 10 * r + c).astype(dtype)


def query(ds: MultiBandGeoTIFF, x0: float, y_top: float, size: int) -> tuple[slice, slice, slice]:
    res = ds.res[0]
    return (slice(x0, x0 + size * res, res), slice(y_top - size * res, y_top, res), ds.bounds[2])


def test_reads_pixels_back_with_band_names_from_descriptions(tmp_path: Path) -> None:
    write(tmp_path / "a.tif", ramp(), descriptions=("red", "green", "nir"))
    ds = MultiBandGeoTIFF(tmp_path)
    assert ds.band_names == ["red", "green", "nir"] and ds.nodata == 0
    image = ds[query(ds, 699000 + 5 * 10, 5000000 - 2 * 10, 8)]["image"]
    expected = ramp()[:, 2:10, 5:13].astype("float32")
    np.testing.assert_array_equal(image.numpy(), expected)
    sub = MultiBandGeoTIFF(tmp_path, bands=["nir", "red"])
    np.testing.assert_array_equal(
        sub[query(sub, 699000, 5000000, 4)]["image"].numpy(), ramp()[[2, 0], :4, :4]
    )


def test_default_names_and_user_names(tmp_path: Path) -> None:
    write(tmp_path / "a.TIFF", ramp(bands=8))
    assert MultiBandGeoTIFF(tmp_path).band_names == [f"B{i}" for i in range(1, 9)]
    names = ["coastal", "blue", "green", "yellow", "red", "red_edge", "nir1", "nir2"]
    assert MultiBandGeoTIFF(tmp_path, band_names=names).band_names == names


def test_chip_straddling_two_utm_zones(tmp_path: Path) -> None:
    # EPSG:32631 near its east edge and EPSG:32632 near its west edge touch at about 6 deg E
    west = np.full((2, 100, 100), 100, dtype="uint16")
    east = np.full((2, 100, 100), 200, dtype="uint16")
    write(tmp_path / "a_west.tif", west, "EPSG:32631", (724000, 4990000))
    from pyproj import Transformer

    to32 = Transformer.from_crs(32631, 32632, always_xy=True)
    x_east, y_east = to32.transform(725000, 4990000)  # the west file's NE corner, in zone 32
    write(tmp_path / "b_east.tif", east, "EPSG:32632", (x_east, y_east))
    ds = MultiBandGeoTIFF(tmp_path)
    assert ds.crs.to_epsg() == 32631  # the first file's CRS; the other is warped
    image = ds[query(ds, 725000 - 16 * 10, 4990000 - 100, 32)]["image"]
    assert image.shape == (2, 32, 32)
    left, right = image[:, :, :14], image[:, :, 19:]
    assert (left == 100).all(), "west half must read the zone-31 file"
    assert ((right == 200) | (right == 0)).all() and (right == 200).float().mean() > 0.8


def test_outside_pixels_carry_the_nodata_value(tmp_path: Path) -> None:
    data = ramp().astype("float32")
    write(tmp_path / "a.tif", data, nodata=-9999.0)
    ds = MultiBandGeoTIFF(tmp_path)
    image = ds[query(ds, 699000 - 40, 5000000, 8)]["image"]  # 4 columns west of the file
    assert (image[:, :, :4] == -9999).all() and (image[:, :, 4:] > 0).all()


def test_nan_nodata(tmp_path: Path) -> None:
    data = ramp().astype("float32")
    data[:, :4, :4] = np.nan
    write(tmp_path / "a.tif", data, nodata=float("nan"))
    ds = MultiBandGeoTIFF(tmp_path)
    assert np.isnan(ds.nodata)
    assert np.isnan(ds[query(ds, 699000, 5000000, 8)]["image"][:, :4, :4]).all()


@pytest.mark.parametrize("content", [b"", b"not a tiff at all", "truncated"])
def test_unreadable_files_raise_or_are_counted(tmp_path: Path, content: bytes | str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "good.tif", ramp())
    bad = tmp_path / "bad.tif"
    if content == "truncated":
        full = write(tmp_path / "full.tif", ramp(size=128)).read_bytes()
        (tmp_path / "full.tif").unlink()
        bad.write_bytes(full[: len(full) // 2])
    else:
        bad.write_bytes(content)
    with pytest.raises(DataError, match=r"bad\.tif"):
        MultiBandGeoTIFF(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = MultiBandGeoTIFF(tmp_path, on_unreadable="warn")
    assert ds.unreadable == [str(bad)] and len(ds.index) == 1
    assert "bad.tif" in caplog.text


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        MultiBandGeoTIFF(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("no rasters here")
    with pytest.raises(DataError, match=r"no GeoTIFF files \(\*\.tif, \*\.tiff\)"):
        MultiBandGeoTIFF(tmp_path)


def test_band_count_mismatches(tmp_path: Path) -> None:
    write(tmp_path / "a.tif", ramp(bands=3))
    with pytest.raises(DataError, match="3 bands but 4 band names"):
        MultiBandGeoTIFF(tmp_path, band_names=["a", "b", "c", "d"])
    write(tmp_path / "b.tif", ramp(bands=4), origin=(700000, 5000000))
    with pytest.raises(DataError, match=r"b\.tif has 4 bands but .*a\.tif has 3"):
        MultiBandGeoTIFF(tmp_path)


def test_mixed_dtypes(tmp_path: Path) -> None:
    write(tmp_path / "a.tif", ramp())
    write(tmp_path / "b.tif", ramp(dtype="float32"), origin=(700000, 5000000))
    with pytest.raises(DataError, match="mixed dtypes"):
        MultiBandGeoTIFF(tmp_path)


def test_no_crs_and_rotated_transform(tmp_path: Path) -> None:
    write(tmp_path / "nocrs" / "a.tif", ramp(), crs=None)
    with pytest.raises(DataError, match="has no CRS"):
        MultiBandGeoTIFF(tmp_path / "nocrs")
    rotated = Affine(10, 2, 699000, 2, -10, 5000000)
    write(tmp_path / "rot" / "a.tif", ramp(), transform=rotated)
    with pytest.raises(DataError, match="rotated or sheared"):
        MultiBandGeoTIFF(tmp_path / "rot")


def test_unknown_band_lists_the_available(tmp_path: Path) -> None:
    write(tmp_path / "a.tif", ramp(), descriptions=("red", "green", "nir"))
    with pytest.raises(DataError, match=r"unknown bands \['swir'\].*available"):
        MultiBandGeoTIFF(tmp_path, bands=["swir"])


def test_real_landsat_rgb(shared_data: Path) -> None:
    ds = MultiBandGeoTIFF(shared_data / "rasterio_testdata" / "RGB.byte.tif")
    assert len(ds.band_names) == 3 and ds.nodata == 0 and ds.crs.to_epsg() == 32618
    with rasterio.open(shared_data / "rasterio_testdata" / "RGB.byte.tif") as src:
        row, col = src.height // 2, src.width // 2
        x0, y_top = src.xy(row, col, offset="ul")
        expected = src.read(window=((row, row + 64), (col, col + 64)))
    image = ds[query(ds, x0, y_top, 64)]["image"]
    np.testing.assert_array_equal(image.numpy(), expected)
