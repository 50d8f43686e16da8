"""MultiBandGeoTIFF on real GeoTIFFs: pixel values, CRSs, nodata and every bad input."""

import logging
import math
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import rasterio
import torch
from pyproj import CRS, Transformer
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from torch.utils.data import DataLoader
from torchgeo.datasets import stack_samples
from torchgeo.samplers import GriddedPatchSampler

from geodino.datasets import MultiBandGeoTIFF
from geodino.errors import DataError

if TYPE_CHECKING:
    from tests.datasets.conftest import GeoTIFFWriter


def query(ds: MultiBandGeoTIFF, x0: float, y_top: float, size: int) -> tuple[slice, slice, slice]:
    """A TorchGeo 0.10 query for a ``size`` x ``size`` chip with upper-left corner (x0, y_top)."""
    xres, yres = ds.res
    return (
        slice(x0, x0 + size * xres, xres),
        slice(y_top - size * yres, y_top, yres),
        ds.bounds[2],
    )


def test_reads_pixels_back_with_band_names_from_descriptions(
    tmp_path: Path, geotiff: "GeoTIFFWriter"
) -> None:
    geotiff.write(tmp_path / "a.tif", geotiff.ramp(), descriptions=("red", "green", "nir"))
    ds = MultiBandGeoTIFF(tmp_path)
    assert ds.band_names == ["red", "green", "nir"] == ds.all_bands and ds.nodata == 0
    assert ds.band_kind == "optical" and ds.unreadable == [] and ds.crs.to_epsg() == 32631
    sample = ds[query(ds, 699000 + 5 * 10, 5000000 - 2 * 10, 8)]
    assert sample["image"].dtype == torch.float32 and set(sample) >= {
        "image",
        "bounds",
        "transform",
    }
    np.testing.assert_array_equal(sample["image"].numpy(), geotiff.ramp()[:, 2:10, 5:13])
    sub = MultiBandGeoTIFF(tmp_path, bands=["nir", "red"])
    assert sub.band_names == ["nir", "red"] and sub.all_bands == ["red", "green", "nir"]
    np.testing.assert_array_equal(
        sub[query(sub, 699000, 5000000, 4)]["image"].numpy(), geotiff.ramp()[[2, 0], :4, :4]
    )


def test_default_names_user_names_and_any_case_suffix(
    tmp_path: Path, geotiff: "GeoTIFFWriter"
) -> None:
    geotiff.write(tmp_path / "a.TIFF", geotiff.ramp(bands=8))
    geotiff.write(tmp_path / "sub" / "b.Tif", geotiff.ramp(bands=8), origin=(699640, 5000000))
    ds = MultiBandGeoTIFF(tmp_path)
    assert ds.band_names == [f"B{i}" for i in range(1, 9)] and len(ds.index) == 2
    names = ["coastal", "blue", "green", "yellow", "red", "red_edge", "nir1", "nir2"]
    named = MultiBandGeoTIFF(tmp_path, band_names=names, bands=["nir1", "coastal"])
    assert named.all_bands == names and named.band_names == ["nir1", "coastal"]
    image = named[query(named, 699000, 5000000, 4)]["image"]
    np.testing.assert_array_equal(image.numpy(), geotiff.ramp(bands=8)[[6, 0], :4, :4])


def test_chip_straddling_two_utm_zones_with_nodata_margins(
    tmp_path: Path, geotiff: "GeoTIFFWriter"
) -> None:
    # EPSG:32631 at its east edge and EPSG:32632 at its west edge meet near 6 deg E.
    west = np.full((2, 100, 100), 100.0, dtype="float32")
    west[1] = 150.0
    west[:, :, :10] = -9999.0  # nodata margin on the far side
    east = np.full((2, 100, 100), 200.0, dtype="float32")
    east[1] = 250.0
    east[:, -10:] = -9999.0
    geotiff.write(tmp_path / "a_west.tif", west, "EPSG:32631", (724000, 4990000), nodata=-9999.0)
    to32 = Transformer.from_crs(32631, 32632, always_xy=True)
    x_east, y_east = to32.transform(725000, 4990000)  # the west file's NE corner, in zone 32
    geotiff.write(tmp_path / "b_east.tif", east, "EPSG:32632", (x_east, y_east), nodata=-9999.0)
    ds = MultiBandGeoTIFF(tmp_path)
    assert ds.crs.to_epsg() == 32631 and ds.nodata == -9999.0  # the first file's CRS
    image = ds[query(ds, 725000 - 16 * 10, 4990000 - 100, 32)]["image"]
    assert image.shape == (2, 32, 32)
    left, right = image[:, :, :14], image[:, :, 19:]
    assert (left[0] == 100).all() and (left[1] == 150).all(), "west side reads zone 31 as written"
    # the east file is warped (nearest): its values arrive unchanged, the seam is nodata
    assert ((right[0] == 200) | (right[0] == -9999)).all() and (
        right[0] == 200
    ).float().mean() > 0.9
    assert ((right[1] == 250) | (right[1] == -9999)).all()
    assert set(image.unique().tolist()) <= {100, 150, 200, 250, -9999}, "no blending, never 0"
    # the west file's own nodata margin stays nodata
    margin = ds[query(ds, 724000, 4990000, 16)]["image"]
    assert (margin[:, :, :10] == -9999).all() and (margin[:, :, 10:] > 0).all()
    # the same chip in the east file's CRS: now the west file is the warped one
    east_crs = MultiBandGeoTIFF(tmp_path, crs=CRS.from_epsg(32632))
    chip = east_crs[query(east_crs, x_east - 160, y_east - 100, 32)]["image"]
    assert (chip[0, :, :12] == 100).float().mean() > 0.9 and (chip[0, :, 20:] == 200).all()


def test_outside_pixels_carry_the_nodata_value(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    geotiff.write(tmp_path / "a.tif", geotiff.ramp().astype("float32"), nodata=-9999.0)
    ds = MultiBandGeoTIFF(tmp_path)
    image = ds[query(ds, 699000 - 40, 5000000, 8)]["image"]  # 4 columns west of the file
    assert (image[:, :, :4] == -9999).all() and (image[:, :, 4:] > 0).all()


def test_nodata_argument_marks_the_files_and_fills_outside(
    tmp_path: Path, geotiff: "GeoTIFFWriter"
) -> None:
    data = geotiff.ramp(bands=1)
    data[0, 0, :4] = 7  # the files' undeclared nodata value
    geotiff.write(tmp_path / "a.tif", data, nodata=None)
    plain = MultiBandGeoTIFF(tmp_path)
    assert plain.nodata is None
    ds = MultiBandGeoTIFF(tmp_path, nodata=7)
    assert ds.nodata == 7
    image = ds[query(ds, 699000 - 40, 5000000, 8)]["image"][0]
    assert (image[:, :4] == 7).all(), "outside the file: the nodata value, not 0"
    assert (image[0, 4:] == 7).all() and image[1, 4] == data[0, 1, 0]


def test_files_disagreeing_on_nodata(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    geotiff.write(tmp_path / "a.tif", geotiff.ramp().astype("float32"), nodata=-9999.0)
    geotiff.write(
        tmp_path / "b.tif", geotiff.ramp().astype("float32"), nodata=0, origin=(699640, 5000000)
    )
    with pytest.raises(DataError, match=r"b\.tif declares nodata 0.* but .*a\.tif declares -9999"):
        MultiBandGeoTIFF(tmp_path)
    # a file without a nodata tag follows the catalog's value
    data = geotiff.ramp().astype("float32")
    data[:, :, :2] = -9999.0
    geotiff.write(tmp_path / "b.tif", data, nodata=None, origin=(699640, 5000000))
    ds = MultiBandGeoTIFF(tmp_path)
    assert ds.nodata == -9999
    image = ds[query(ds, 699640 - 20, 5000000, 8)]["image"]  # 2 columns of a, 6 of b
    assert (image[:, :, :2] > 0).all() and (image[:, :, 2:4] == -9999).all()
    assert (image[:, :, 4:] > 0).all()


def test_nan_nodata(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    data = geotiff.ramp().astype("float32")
    data[:, :4, :4] = np.nan
    geotiff.write(tmp_path / "a.tif", data, nodata=float("nan"))
    ds = MultiBandGeoTIFF(tmp_path)
    assert ds.nodata is not None and math.isnan(ds.nodata)
    image = ds[query(ds, 699000 - 20, 5000000, 8)]["image"]
    assert torch.isnan(image[:, :4, :6]).all(), "NaN in the file and outside it"
    torch.testing.assert_close(image[:, 4:, 2:], torch.from_numpy(data[:, 4:8, :6]))


@pytest.mark.parametrize("content", ["zero-byte", "not a raster", "truncated"])
def test_unreadable_files_raise_or_are_counted(
    tmp_path: Path, content: str, geotiff: "GeoTIFFWriter", caplog: pytest.LogCaptureFixture
) -> None:
    geotiff.write(tmp_path / "good.tif", geotiff.ramp())
    bad = tmp_path / "bad.tif"
    if content == "truncated":
        full = geotiff.write(tmp_path / "full.tif", geotiff.ramp(size=128)).read_bytes()
        (tmp_path / "full.tif").unlink()
        bad.write_bytes(full[: len(full) // 2])
    else:
        bad.write_bytes(b"" if content == "zero-byte" else b"station,value\nA,1\n")
    with pytest.raises(DataError, match=r"bad\.tif cannot be read as a raster.*Re-download"):
        MultiBandGeoTIFF(tmp_path)
    with caplog.at_level(logging.WARNING, logger="geodino"):
        ds = MultiBandGeoTIFF(tmp_path, on_unreadable="warn")
    assert ds.unreadable == [str(bad)] and list(ds.index.filepath) == [str(tmp_path / "good.tif")]
    assert "bad.tif" in caplog.text
    np.testing.assert_array_equal(
        ds[query(ds, 699000, 5000000, 4)]["image"].numpy(), geotiff.ramp()[:, :4, :4]
    )


def test_bad_on_unreadable_value(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    geotiff.write(tmp_path / "a.tif", geotiff.ramp())
    with pytest.raises(DataError, match="on_unreadable must be 'raise' or 'warn'"):
        MultiBandGeoTIFF(tmp_path, on_unreadable="ignore")  # type: ignore[arg-type]


def test_empty_missing_or_non_matching_folder(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    with pytest.raises(DataError, match="missing does not exist"):
        MultiBandGeoTIFF(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no GeoTIFF files \(\*\.tif, \*\.tiff\) under .*empty"):
        MultiBandGeoTIFF(tmp_path / "empty")
    for band in ("B02", "B03"):
        (tmp_path / "safe" / f"T31_{band}.jp2").parent.mkdir(exist_ok=True)
        (tmp_path / "safe" / f"T31_{band}.jp2").write_bytes(b"jp2")
    with pytest.raises(DataError, match=r"under .*safe \(found: 2 \.jp2\).*gdal_translate"):
        MultiBandGeoTIFF(tmp_path / "safe")

    class HandS2(MultiBandGeoTIFF):
        filename_glob = "*_S2Hand.tif"

    geotiff.write(tmp_path / "chips" / "x_S1Hand.tif", geotiff.ramp())
    with pytest.raises(DataError, match=r"no GeoTIFF files \(\*_S2Hand\.tif, ending .*chips"):
        HandS2(tmp_path / "chips")
    geotiff.write(tmp_path / "chips" / "x_S2Hand.tif", geotiff.ramp(bands=2))
    assert len(HandS2(tmp_path / "chips").band_names) == 2


def test_gdal_virtual_paths(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    geotiff.write(tmp_path / "a.tif", geotiff.ramp())
    with zipfile.ZipFile(tmp_path / "tiles.zip", "w") as archive:
        archive.write(tmp_path / "a.tif", "tiles/a.tif")
    with pytest.raises(DataError, match=r"tiles\.zip cannot be listed.*folder inside it"):
        MultiBandGeoTIFF(f"/vsizip/{tmp_path / 'tiles.zip'}")
    ds = MultiBandGeoTIFF(f"/vsizip/{tmp_path / 'tiles.zip'}/tiles")
    np.testing.assert_array_equal(
        ds[query(ds, 699000, 5000000, 4)]["image"].numpy(), geotiff.ramp()[:, :4, :4]
    )


def test_band_count_mismatches(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    geotiff.write(tmp_path / "a.tif", geotiff.ramp(bands=3))
    with pytest.raises(DataError, match=r"a\.tif has 3 bands but 4 band names were given"):
        MultiBandGeoTIFF(tmp_path, band_names=["a", "b", "c", "d"])
    geotiff.write(tmp_path / "b.tif", geotiff.ramp(bands=4), origin=(700000, 5000000))
    with pytest.raises(DataError, match=r"b\.tif has 4 bands but .*a\.tif has 3.*split"):
        MultiBandGeoTIFF(tmp_path)


def test_mixed_dtypes(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    geotiff.write(tmp_path / "a.tif", geotiff.ramp())
    geotiff.write(tmp_path / "b.tif", geotiff.ramp(dtype="float32"), origin=(700000, 5000000))
    with pytest.raises(
        DataError, match=r"mixed dtypes: .*b\.tif is float32 but .*a\.tif is uint16"
    ):
        MultiBandGeoTIFF(tmp_path)


def test_no_crs_and_rotated_transform(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    geotiff.write(tmp_path / "nocrs" / "a.tif", geotiff.ramp(), crs=None)
    with pytest.raises(DataError, match=r"a\.tif has no CRS.*gdal_edit"):
        MultiBandGeoTIFF(tmp_path / "nocrs")
    with pytest.warns(NotGeoreferencedWarning):  # rasterio warns the writer too
        geotiff.write(tmp_path / "nogt" / "a.tif", geotiff.ramp(), transform=Affine.identity())
    with pytest.raises(DataError, match=r"a\.tif has a CRS but no geotransform"):
        MultiBandGeoTIFF(tmp_path / "nogt")
    rotated = Affine(10, 2, 699000, 2, -10, 5000000)
    geotiff.write(tmp_path / "rot" / "a.tif", geotiff.ramp(), transform=rotated)
    with pytest.raises(DataError, match=r"a\.tif has a rotated or sheared geotransform.*gdalwarp"):
        MultiBandGeoTIFF(tmp_path / "rot")


def test_native_window_reads_equal_torchgeo_merge(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    from torchgeo.datasets import RasterDataset

    data = geotiff.ramp(bands=3, size=96)
    data[:, :10] = 0
    geotiff.write(tmp_path / "a.tif", data)
    # b overlaps a by 32 px: chips there are mosaics that merge must resolve
    geotiff.write(tmp_path / "b.tif", geotiff.ramp(bands=3, size=96), origin=(699640.0, 5000000.0))
    # c lies in another zone: read through a warped view
    geotiff.write(
        tmp_path / "c.tif",
        geotiff.ramp(bands=3, size=64),
        crs="EPSG:32632",
        origin=(280000.0, 5000000.0),
    )
    ds = MultiBandGeoTIFF(tmp_path, bands=["B3", "B1"])
    native = 0
    for x0 in np.arange(698900, 700700, 70.0):
        for y_top in (5000000.0, 4999700.0, 4999400.0, 4999120.0):
            q = query(ds, x0, y_top, 16)
            try:
                expected = RasterDataset.__getitem__(ds, q)
            except IndexError:
                continue
            got = ds[q]
            assert got.keys() == expected.keys()
            for key in got:
                assert got[key].dtype == expected[key].dtype, key
                torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
            native += ds._read_native(q) is not None
            raw = ds.raw_sample(q)  # what loader workers read: the files' dtype where native
            assert raw["image"].dtype == (torch.uint16 if ds._read_native(q) else torch.float32)
            for key in got:
                torch.testing.assert_close(raw[key].to(got[key].dtype), got[key], rtol=0, atol=0)
            # a batch slot of the chip's shape and dtype: native chips are read into it
            slot = np.zeros((2, 16, 16), np.uint16)
            into = ds.raw_sample(q, out=slot)["image"]
            assert np.shares_memory(into.numpy(), slot) == (raw["image"].dtype == torch.uint16)
            assert torch.equal(into, raw["image"])
            for wrong in (np.zeros((2, 16, 16), np.float32), np.zeros((3, 16, 16), np.uint16)):
                assert torch.equal(ds.raw_sample(q, out=wrong)["image"], raw["image"])
                assert not wrong.any()  # left untouched
    assert native > 10  # the one-file chips took the direct read, the rest went through merge
    off_grid = (slice(699005.0, 699165.0, 10.0), slice(4999600.0, 4999760.0, 10.0), ds.bounds[2])
    assert ds._read_native(off_grid) is None
    torch.testing.assert_close(
        ds[off_grid]["image"], RasterDataset.__getitem__(ds, off_grid)["image"]
    )


def test_unknown_band_lists_the_available(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    geotiff.write(tmp_path / "a.tif", geotiff.ramp(), descriptions=("red", "green", "nir"))
    with pytest.raises(
        DataError, match=r"unknown bands \['swir'\].*available: \['red', 'green', 'nir'\]"
    ):
        MultiBandGeoTIFF(tmp_path, bands=["swir"])


def test_grid_sampler_data_loader_and_pickling(tmp_path: Path, geotiff: "GeoTIFFWriter") -> None:
    geotiff.write(tmp_path / "a.tif", geotiff.ramp(size=64))
    ds = pickle.loads(pickle.dumps(MultiBandGeoTIFF(tmp_path)))  # what spawned workers get
    sampler = GriddedPatchSampler(ds, size=32, stride=32)
    batches = list(DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=stack_samples))
    assert len(batches) == 1 and batches[0]["image"].shape == (4, 3, 32, 32)
    seen = sorted(float(image[0, 0, 0]) for image in batches[0]["image"])
    assert seen == [1000.0, 1032.0, 1320.0, 1352.0]  # the four 32-px tiles' corners


def test_real_landsat_rgb(shared_data: Path) -> None:
    path = shared_data / "rasterio_testdata" / "RGB.byte.tif"
    ds = MultiBandGeoTIFF(path)
    assert len(ds.band_names) == 3 and ds.nodata == 0 and ds.crs.to_epsg() == 32618
    with rasterio.open(path) as src:
        row, col = src.height // 2, src.width // 2
        x0, y_top = src.xy(row, col, offset="ul")
        expected = src.read(window=((row, row + 64), (col, col + 64)))
        corner = src.read(window=((0, 16), (0, 16)))
    np.testing.assert_array_equal(ds[query(ds, x0, y_top, 64)]["image"].numpy(), expected)
    # the scene's rotated footprint leaves nodata (0) corners, read as such
    left, top = ds.bounds[0].start, ds.bounds[1].stop
    chip = ds[query(ds, left, top, 16)]["image"].numpy()
    np.testing.assert_array_equal(chip, corner)
    assert (chip == 0).all()


def test_docs_page_runs(run_doc_page: Callable[[str], dict]) -> None:
    namespace = run_doc_page("sources/geotiff.md")
    assert isinstance(namespace["ds"], MultiBandGeoTIFF)


@pytest.mark.parametrize(("nodata", "res"), [(0, 10.0), (None, 20.0)])
def test_warped_chips_are_read_directly_and_equal_torchgeo_merge(
    tmp_path: Path, geotiff: "GeoTIFFWriter", nodata: float | None, res: float
) -> None:
    from torchgeo.datasets import RasterDataset

    geotiff.write(tmp_path / "a.tif", geotiff.ramp(bands=3, size=64), nodata=nodata)
    noise = np.random.default_rng(0).integers(1, 4000, (3, 96, 96)).astype(np.uint16)
    noise[:, :20, :30] = 0  # nodata inside the file (or plain zeros without a nodata value)
    # a scene in the next UTM zone: TorchGeo reads it through a warped view, resampled
    # (bilinear) to the dataset's 10 m
    geotiff.write(
        tmp_path / "c.tif",
        noise,
        crs="EPSG:32632",
        origin=(280000.0, 5000000.0),
        nodata=nodata,
        res=res,
    )
    ds = MultiBandGeoTIFF(tmp_path)
    xmin, ymin, xmax, ymax = ds.index[ds.index.filepath.str.endswith("c.tif")].total_bounds
    direct = fallback = 0
    for x0 in np.linspace(xmin - 100, xmax - 60, 11):
        for y_top in np.linspace(ymax + 100, ymin + 60, 11):
            q = query(ds, float(x0), float(y_top), 12)
            expected = RasterDataset.__getitem__(ds, q)
            got = ds[q]
            for key in expected:
                assert got[key].dtype == expected[key].dtype, key
                torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
            slot = np.zeros((3, 12, 12), np.uint16)
            raw = ds.raw_sample(q, out=slot)["image"]
            assert torch.equal(raw.float(), expected["image"])
            if ds._read_native(q) is not None:
                direct += 1
                assert np.shares_memory(raw.numpy(), slot)
            else:
                fallback += 1
    assert direct > 40 and fallback > 10  # inside the scene: one read; across its edge: merge


def test_files_with_an_internal_mask_are_read_as_torchgeo_merges_them(
    tmp_path: Path, geotiff: "GeoTIFFWriter"
) -> None:
    from torchgeo.datasets import RasterDataset

    path = geotiff.write(tmp_path / "a.tif", geotiff.ramp(bands=2, size=64), nodata=None)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as dst:
        mask = np.full((64, 64), 255, np.uint8)
        mask[:, :20] = 0  # masked pixels: merge writes 0 there, a plain read would not
        dst.write_mask(mask)
    ds = MultiBandGeoTIFF(tmp_path)
    q = query(ds, 699000.0, 5000000.0, 32)
    expected = RasterDataset.__getitem__(ds, q)["image"]
    assert (expected[:, :, :20] == 0).all() and (expected[:, :, 20:] > 0).all()
    assert torch.equal(ds[q]["image"], expected)
    assert torch.equal(ds.raw_sample(q)["image"].float(), expected)
