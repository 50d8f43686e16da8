"""A corpus of bad inputs generated here, each with the outcome geodino promises.

Every case builds one damaged or odd input in a temporary folder and feeds it to the public
reader that would meet it (``MultiBandGeoTIFF``, ``Sentinel2``, ``GeoDINODataModule``,
``read_aoi``/``AOISampler``, ``NpyFolder``, ``AnnotatedImages``). The outcome is either a
:class:`~geodino.errors.DataError` whose message names the file, or a documented skip that is
counted (logged and listed); never a hang (each case runs under an alarm) and never a silent
loss. The table in docs/reliability.md is rendered from ``CASES``:
``python tests/reliability/test_bad_inputs.py`` rewrites it, and a test checks it is current.
"""

import json
import logging
import pathlib
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from rasterio.transform import Affine, from_origin

from geodino.datamodules import GeoDINODataModule
from geodino.datasets import MultiBandGeoTIFF, NpyFolder, Sentinel2
from geodino.datasets.folders import AnnotatedImages
from geodino.errors import DataError
from geodino.samplers import AOISampler, read_aoi

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"
#: seconds any case may take before it counts as a hang
TIMEOUT = 60


@dataclass(frozen=True)
class Outcome:
    """What a case produced: the error message, or the skip count and its log."""

    error: str | None = None
    skipped: int = 0
    log: str = ""


@dataclass(frozen=True)
class Case:
    """One bad input: how it is made and read, and what geodino must answer."""

    id: str
    input: str
    reader: str
    expect: str  # "error", "skip" (counted) or "nodata" (read as missing pixels)
    promise: str
    names: str  # file (relative to the case folder) or value the message/log must name
    run: Callable[[Path, pytest.LogCaptureFixture], Outcome]
    deeper: str = ""


# --- input makers ---------------------------------------------------------------------------
def tif(
    path: Path,
    data: np.ndarray,
    crs: str | None = "EPSG:32631",
    transform: Affine | None = None,
    nodata: float | None = 0,
    **extra: object,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype,
        "crs": crs,
        "nodata": nodata,
        "transform": transform or from_origin(500000, 5000000, 10, 10),
        **extra,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def ramp(bands: int = 2, size: int = 64, dtype: str = "uint16") -> np.ndarray:
    b, r, c = np.meshgrid(np.arange(bands), np.arange(size), np.arange(size), indexing="ij")
    return (1000 * (b + 1) + 10 * r + c).astype(dtype)


def good(folder: Path) -> Path:
    return tif(folder / "good.tif", ramp(), transform=from_origin(600000, 5000000, 10, 10))


def catch(call: Callable[[], object]) -> Outcome:
    try:
        call()
    except DataError as error:
        return Outcome(error=str(error))
    return Outcome()


def read_catalog(folder: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    """Index strictly (must raise), then with ``on_unreadable="warn"`` (count the skips)."""
    strict = catch(lambda: MultiBandGeoTIFF(folder))
    if strict.error is None:
        return strict
    caplog.clear()
    try:
        ds = MultiBandGeoTIFF(folder, on_unreadable="warn")
    except DataError:
        return strict
    return Outcome(error=strict.error, skipped=len(ds.unreadable), log=caplog.text)


# --- the cases ------------------------------------------------------------------------------
def zero_byte(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    good(tmp)
    (tmp / "bad.tif").write_bytes(b"")
    return read_catalog(tmp, caplog)


def truncated(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    good(tmp)
    full = tif(tmp / "full" / "x.tif", ramp(size=256), compress="deflate", tiled=True)
    (tmp / "bad.tif").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    full.parent.rmdir()
    return read_catalog(tmp, caplog)


def wrong_magic(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    good(tmp)
    (tmp / "bad.tif").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2048))
    return read_catalog(tmp, caplog)


def huge_header(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    good(tmp)
    bad = tmp / "bad.tif"
    with rasterio.open(
        bad,
        "w",
        driver="GTiff",
        width=100_000,
        height=100_000,
        count=1,
        dtype="uint16",
        crs="EPSG:32631",
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        sparse_ok=True,
        transform=from_origin(700000, 5000000, 10, 10),
    ):
        pass
    bad.write_bytes(bad.read_bytes()[:4096])  # the header survives, the tile index does not
    return read_catalog(tmp, caplog)


def no_crs(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    good(tmp)
    tif(tmp / "bad.tif", ramp(), crs=None)
    return read_catalog(tmp, caplog)


def rotated(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    good(tmp)
    tif(tmp / "bad.tif", ramp(), transform=Affine(10, 2, 500000, 2, -10, 5000000))
    return read_catalog(tmp, caplog)


def sheared(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    good(tmp)
    tif(tmp / "bad.tif", ramp(), transform=Affine(10, 0.5, 500000, 0, -10, 5000000))
    return read_catalog(tmp, caplog)


def mixed_dtypes(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    good(tmp)
    tif(tmp / "bad.tif", ramp(dtype="float32"))
    return catch(lambda: MultiBandGeoTIFF(tmp))


def mixed_band_counts(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    good(tmp)
    tif(tmp / "bad.tif", ramp(bands=3))
    return catch(lambda: MultiBandGeoTIFF(tmp))


def mixed_nodata(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    good(tmp)
    tif(tmp / "bad.tif", ramp(), nodata=65535)
    return catch(lambda: MultiBandGeoTIFF(tmp))


def band_grids(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    for band, x0 in (("B02", 500000), ("B03", 500000), ("B04", 500200)):
        tif(tmp / f"T31_{band}.tif", ramp(bands=1), transform=from_origin(x0, 5000000, 10, 10))
    return catch(lambda: Sentinel2(tmp))


def band_crss(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    for band, crs in (("B02", "EPSG:32631"), ("B03", "EPSG:32631"), ("B04", "EPSG:32632")):
        tif(tmp / f"T31_{band}.tif", ramp(bands=1), crs=crs)
    return catch(lambda: Sentinel2(tmp))


def datamodule(folder: Path, **kwargs: object) -> GeoDINODataModule:
    dm = GeoDINODataModule(
        MultiBandGeoTIFF(folder), batch_size=2, statistics_chips=2, **{"chip_size": 16, **kwargs}
    )
    dm.setup_draws()
    return dm


def inf_pixels(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    data = ramp(dtype="float32")
    data[1, 20:40, 20:40] = np.inf
    tif(tmp / "bad.tif", data, nodata=None)
    dm = datamodule(tmp, chip_size=48)
    return catch(lambda: [dm.train_draw(i) for i in range(20)])


def nan_pixels(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    data = ramp(dtype="float32")
    data[:, :, :32] = np.nan
    tif(tmp / "bad.tif", data, nodata=None)
    dm = datamodule(tmp, max_nodata=0.0)
    chips = [dm.train_draw(i)["image"] for i in range(20)]
    assert all(not torch.isnan(c).any() for c in chips)  # NaN is nodata: redrawn away
    # and where a chip may hold some, they are filled before anything else sees them
    dm = datamodule(tmp, chip_size=48, max_nodata=1.0)
    dm.setup("fit")
    image = dm.normalize.fill_nodata(dm.train_draw(0)["image"][None])
    assert torch.isfinite(image).all()
    return Outcome()


def all_nodata(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    tif(tmp / "bad.tif", np.zeros((2, 64, 64), "uint16"))
    dm = GeoDINODataModule(
        MultiBandGeoTIFF(tmp), chip_size=16, batch_size=2, statistics_chips=2, max_redraws=5
    )
    dm.setup_draws()
    return catch(lambda: dm.train_draw(0))


def aoi_tiles(tmp: Path) -> MultiBandGeoTIFF:
    tif(tmp / "tiles" / "a.tif", ramp(size=128))
    return MultiBandGeoTIFF(tmp / "tiles")


def aoi_self_intersecting(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    ds = aoi_tiles(tmp)
    x0, y0, x1, y1 = 500100, 4998900, 501100, 4999900
    bowtie = shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    gpd.GeoDataFrame(geometry=[bowtie], crs=ds.crs).to_file(tmp / "bad.gpkg")
    caplog.clear()
    sampler = AOISampler(
        ds, tmp / "bad.gpkg", 16, length=50, generator=torch.Generator().manual_seed(0)
    )
    repaired = shapely.make_valid(bowtie).buffer(10)
    assert all(
        repaired.contains(shapely.box(q[0].start, q[1].start, q[0].stop, q[1].stop))
        for q in sampler
    )
    return Outcome(skipped=0, log=caplog.text)


def aoi_empty_geometries(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    ds = aoi_tiles(tmp)
    frame = gpd.GeoDataFrame(
        geometry=[
            shapely.box(500100, 4998900, 501100, 4999900),
            shapely.Polygon(),
            shapely.Polygon(),
        ],
        crs=ds.crs,
    )
    frame.to_file(tmp / "bad.gpkg")
    caplog.clear()
    aoi = read_aoi(tmp / "bad.gpkg", crs=ds.crs)
    assert len(aoi) == 1
    return Outcome(skipped=3 - len(aoi), log=caplog.text)


def aoi_only_empty(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    ds = aoi_tiles(tmp)
    gpd.GeoDataFrame(geometry=[shapely.Polygon()], crs=ds.crs).to_file(tmp / "bad.gpkg")
    return catch(lambda: AOISampler(ds, tmp / "bad.gpkg", 16))


def aoi_no_features(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    ds = aoi_tiles(tmp)
    gpd.GeoDataFrame({"name": []}, geometry=[], crs=ds.crs).to_file(tmp / "bad.gpkg")
    return catch(lambda: AOISampler(ds, tmp / "bad.gpkg", 16))


def aoi_no_crs(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    ds = aoi_tiles(tmp)
    frame = gpd.GeoDataFrame(geometry=[shapely.box(500100, 4998900, 501100, 4999900)])
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        frame.to_file(tmp / "bad.shp")
    return catch(lambda: AOISampler(ds, tmp / "bad.shp", 16))


def aoi_outside(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    ds = aoi_tiles(tmp)
    far = gpd.GeoDataFrame(geometry=[shapely.box(-70, -10, -69, -9)], crs=4326)
    far.to_file(tmp / "bad.gpkg")
    return catch(lambda: AOISampler(ds, tmp / "bad.gpkg", 16))


class Payload:
    """Unpickling this touches a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def npy_pickle(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    np.save(tmp / "good.npy", np.ones((8, 8, 2), "float32"))
    array = np.empty((8, 8, 2), dtype=object)
    array[0, 0, 0] = Payload(tmp / "pwned")
    np.save(tmp / "bad.npy", array, allow_pickle=True)
    outcome = catch(lambda: [NpyFolder(tmp)[i] for i in range(2)])
    assert not (tmp / "pwned").exists()
    return outcome


def npy_truncated(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    np.save(tmp / "bad.npy", np.ones((8, 8, 2), "float32"))
    (tmp / "bad.npy").write_bytes((tmp / "bad.npy").read_bytes()[:150])
    return catch(lambda: NpyFolder(tmp)[0])


def annotations(tmp: Path, entries: list[dict]) -> Path:
    (tmp / "img").mkdir()
    tif(tmp / "img" / "a.tif", ramp(bands=3, size=32))
    path = tmp / "bad.json"
    path.write_text(
        json.dumps({"metainfo": {"classes": ["water", "forest"]}, "data_list": entries})
    )
    return path


def json_missing_key(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    path = annotations(tmp, [{"img_path": "img/a.tif", "gt_label": 0}, {"img_path": "img/a.tif"}])
    return catch(lambda: AnnotatedImages(path))


def json_escaping_root(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    (tmp / "secret.tif").write_bytes(b"")
    path = annotations(tmp, [{"img_path": "../secret.tif", "gt_label": 0}])
    return catch(lambda: AnnotatedImages(path, root=tmp / "img"))


def json_absolute_path(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    outside = tif(tmp / "elsewhere" / "a.tif", ramp(bands=3, size=32))
    path = annotations(tmp, [{"img_path": str(outside), "gt_label": 0}])
    return catch(lambda: AnnotatedImages(path, root=tmp / "img"))


def json_invalid(tmp: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    (tmp / "bad.json").write_text('{"metainfo": {"classes": ["a"]}, "data_list": [')
    return catch(lambda: AnnotatedImages(tmp / "bad.json"))


GEO = "tests/datasets/test_geotiff.py"


# --- STAC catalogs (tests/datasets/test_stac.py and test_stac_remote.py go deeper) ----------
def stac_catalog(folder: Path, edit: Callable[[list[dict]], None]) -> Path:
    """A two-item STAC-GeoParquet catalog of local COGs, edited before it is written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.stac_catalogs import Scene, item, write_scene

    scenes = [
        write_scene(
            folder / "cogs",
            Scene(f"S2_{i}", 32631, (500000 + i * 2000, 5000000), datetime(2024, 6, 1 + i), 5.0),
            i,
            side=64,
        )
        for i in range(2)
    ]
    rows = [item(s, str) for s in scenes]
    edit(rows)
    path = folder / "items.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read_stac(path: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    """Index and read a chip of each item strictly, then with ``on_unreadable="warn"``."""
    from geodino.datasets import STACCatalog

    def read(on_unreadable: str) -> STACCatalog:
        dataset = STACCatalog(path, bands=["red", "swir16"], on_unreadable=on_unreadable)
        for box in dataset.index.geometry.bounds.to_numpy():
            x, y = box[0] + 160, box[3] - 160
            query = (slice(x, x + 160, 10), slice(y - 160, y, 10), dataset.bounds[2])
            with suppress(IndexError):  # the item was left out
                dataset[query]
        return dataset

    strict = catch(lambda: read("raise"))
    if strict.error is None:
        return strict
    caplog.clear()
    try:
        lenient = read("warn")
    except DataError:
        return strict
    return Outcome(error=strict.error, skipped=len(lenient.unreadable), log=caplog.text)


def stac_missing_asset(folder: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    return read_stac(stac_catalog(folder, lambda rows: rows[1]["assets"].pop("swir16")), caplog)


def stac_no_grid(folder: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    def edit(rows: list[dict]) -> None:
        rows[1]["assets"]["red"]["proj:transform"] = None

    return read_stac(stac_catalog(folder, edit), caplog)


def stac_missing_object(folder: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    path = stac_catalog(folder, lambda rows: None)
    (folder / "cogs" / "S2_1" / "B04.tif").unlink()
    return read_stac(path, caplog)


def stac_truncated_object(folder: Path, caplog: pytest.LogCaptureFixture) -> Outcome:
    path = stac_catalog(folder, lambda rows: None)
    cog = folder / "cogs" / "S2_1" / "B11.tif"
    cog.write_bytes(cog.read_bytes()[: cog.stat().st_size // 2])
    return read_stac(path, caplog)


CASES = [
    Case(
        "zero-byte",
        "zero-byte `.tif` beside a good file",
        "MultiBandGeoTIFF",
        "error",
        'DataError naming the file; with `on_unreadable="warn"` skipped, logged and listed '
        "in `dataset.unreadable`",
        "bad.tif",
        zero_byte,
        GEO,
    ),
    Case(
        "truncated",
        "GeoTIFF cut in half",
        "MultiBandGeoTIFF",
        "error",
        "as zero-byte (the last block is read at indexing)",
        "bad.tif",
        truncated,
        GEO,
    ),
    Case(
        "wrong-magic",
        "PNG bytes named `.tif`",
        "MultiBandGeoTIFF",
        "error",
        "as zero-byte",
        "bad.tif",
        wrong_magic,
        GEO,
    ),
    Case(
        "huge-header",
        "header of a 100,000 x 100,000 px raster in a 4 KB file",
        "MultiBandGeoTIFF",
        "error",
        "as zero-byte, at once (no allocation of the claimed size)",
        "bad.tif",
        huge_header,
    ),
    Case(
        "no-crs",
        "raster without CRS",
        "MultiBandGeoTIFF",
        "error",
        "DataError naming the file and how to assign a CRS; skippable with warn",
        "bad.tif",
        no_crs,
        GEO,
    ),
    Case(
        "rotated",
        "rotated geotransform",
        "MultiBandGeoTIFF",
        "error",
        "DataError naming the file, `gdalwarp` to north-up",
        "bad.tif",
        rotated,
        GEO,
    ),
    Case(
        "sheared",
        "sheared geotransform",
        "MultiBandGeoTIFF",
        "error",
        "as rotated",
        "bad.tif",
        sheared,
    ),
    Case(
        "mixed-dtypes",
        "uint16 and float32 files in one catalog",
        "MultiBandGeoTIFF",
        "error",
        "DataError naming both files",
        "bad.tif",
        mixed_dtypes,
        GEO,
    ),
    Case(
        "mixed-bands",
        "2-band and 3-band files in one catalog",
        "MultiBandGeoTIFF",
        "error",
        "DataError naming both files",
        "bad.tif",
        mixed_band_counts,
        GEO,
    ),
    Case(
        "mixed-nodata",
        "files declaring nodata 0 and 65535",
        "MultiBandGeoTIFF",
        "error",
        "DataError naming both files and values",
        "bad.tif",
        mixed_nodata,
        GEO,
    ),
    Case(
        "band-grids",
        "band files of one scene on different footprints",
        "Sentinel2",
        "error",
        "DataError naming both band files (more than a coarse pixel apart)",
        "T31_B04.tif",
        band_grids,
    ),
    Case(
        "band-crs",
        "band files of one scene in different CRSs",
        "Sentinel2",
        "error",
        "DataError naming both band files and CRSs",
        "T31_B04.tif",
        band_crss,
    ),
    Case(
        "inf-pixels",
        "float raster with +inf pixels",
        "GeoDINODataModule",
        "error",
        "DataError naming the bands, the chip and the file",
        "bad.tif",
        inf_pixels,
        "tests/tasks/test_dinov2.py",
    ),
    Case(
        "nan-pixels",
        "float raster with NaN pixels",
        "GeoDINODataModule",
        "nodata",
        "NaN is always nodata: chips over `max_nodata` are redrawn, the rest filled before "
        "normalisation; no NaN reaches the model",
        "",
        nan_pixels,
        GEO,
    ),
    Case(
        "all-nodata",
        "scene that is nodata everywhere",
        "GeoDINODataModule",
        "error",
        "DataError after `max_redraws` naming the chip, the file and the nodata value",
        "bad.tif",
        all_nodata,
        "tests/test_datamodules.py",
    ),
    Case(
        "aoi-self-intersecting",
        "self-intersecting (bow-tie) AOI polygon",
        "AOISampler",
        "skip",
        "repaired with `make_valid`, the repair logged with its "
        "count; every chip inside the repaired polygon",
        "repaired 1 invalid",
        aoi_self_intersecting,
        "tests/test_samplers.py",
    ),
    Case(
        "aoi-empty-geometries",
        "AOI with two empty geometries beside a polygon",
        "read_aoi",
        "skip",
        "empty geometries dropped, logged with their count",
        "dropped 2 empty",
        aoi_empty_geometries,
        "tests/test_samplers.py",
    ),
    Case(
        "aoi-only-empty",
        "AOI whose only geometry is empty",
        "AOISampler",
        "error",
        "DataError naming the file",
        "bad.gpkg",
        aoi_only_empty,
    ),
    Case(
        "aoi-no-features",
        "AOI file with no features",
        "AOISampler",
        "error",
        "DataError naming the file",
        "bad.gpkg",
        aoi_no_features,
    ),
    Case(
        "aoi-no-crs",
        "Shapefile AOI without `.prj`",
        "AOISampler",
        "error",
        "DataError naming the file and how to set the CRS",
        "bad.shp",
        aoi_no_crs,
        "tests/test_samplers.py",
    ),
    Case(
        "aoi-outside",
        "AOI far from the data",
        "AOISampler",
        "error",
        "DataError with the data's bounds and CRS",
        "does not intersect the data",
        aoi_outside,
        "tests/test_samplers.py",
    ),
    Case(
        "npy-pickle",
        "`.npy` object array whose unpickling would run code",
        "NpyFolder",
        "error",
        "DataError naming the file, read from the header with "
        "`allow_pickle=False`; the payload never runs",
        "bad.npy",
        npy_pickle,
        "tests/datasets/test_folders.py",
    ),
    Case(
        "npy-truncated",
        "`.npy` cut after its header",
        "NpyFolder",
        "error",
        "DataError naming the file",
        "bad.npy",
        npy_truncated,
    ),
    Case(
        "json-missing-key",
        "annotation entry without `gt_label`",
        "AnnotatedImages",
        "error",
        "DataError naming the file, the entry and the key",
        "bad.json",
        json_missing_key,
        "tests/datasets/test_folders.py",
    ),
    Case(
        "json-escape",
        "`img_path` of `../secret.tif`",
        "AnnotatedImages",
        "error",
        "DataError: paths must stay inside the root",
        "../secret.tif",
        json_escaping_root,
        "tests/datasets/test_folders.py",
    ),
    Case(
        "json-absolute",
        "absolute `img_path` outside the root",
        "AnnotatedImages",
        "error",
        "as `../`",
        "outside the image root",
        json_absolute_path,
    ),
    Case(
        "json-invalid",
        "annotation file that is not valid JSON",
        "AnnotatedImages",
        "error",
        "DataError naming the file",
        "bad.json",
        json_invalid,
    ),
    Case(
        "stac-missing-asset",
        "STAC item without the asset of a chosen band",
        "STACCatalog",
        "error",
        "DataError naming the item and the asset (no file opened); with warn the item is "
        "left out, logged and listed",
        "S2_1",
        stac_missing_asset,
        "tests/datasets/test_stac.py",
    ),
    Case(
        "stac-no-grid",
        "STAC item without `proj:transform`",
        "STACCatalog",
        "error",
        "as missing asset, naming `proj:transform`",
        "proj:transform",
        stac_no_grid,
    ),
    Case(
        "stac-missing-object",
        "asset href to a file (or object) that is gone",
        "STACCatalog",
        "error",
        "DataError at the read naming the href and the item; warn leaves the item out",
        "S2_1/B04.tif",
        stac_missing_object,
        "tests/datasets/test_stac.py",
    ),
    Case(
        "stac-truncated-object",
        "asset COG cut in half",
        "STACCatalog",
        "error",
        "as gone, saying the object is damaged",
        "S2_1/B11.tif",
        stac_truncated_object,
        "tests/datasets/test_stac.py",
    ),
]


@contextmanager
def alarm(seconds: int) -> Iterator[None]:
    """Fail a case that runs longer than ``seconds`` (a hang)."""

    def hang(*_: object) -> None:
        raise TimeoutError(f"bad-input case still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), alarm(TIMEOUT):
        outcome = case.run(tmp_path, caplog)
    if case.expect == "error":
        assert outcome.error is not None, f"{case.id}: no error raised"
        assert case.names in outcome.error, outcome.error
        if outcome.skipped:
            # the lenient mode skipped exactly the bad file and said so
            assert outcome.skipped == 1 and case.names in outcome.log, outcome.log
    else:
        assert outcome.error is None, outcome.error
        assert case.names in outcome.log, outcome.log


def test_readers_can_skip_and_count_bad_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file-level cases offer the counted skip; the good file is still read."""
    with caplog.at_level(logging.WARNING):
        outcome = zero_byte(tmp_path, caplog)
    assert outcome.skipped == 1 and "skipped 1 of 2 raster files" in outcome.log


def table() -> str:
    """The docs table of every case."""
    rows = ["| case | input | read by | outcome | deeper tests |", "|---|---|---|---|---|"]
    for c in CASES:
        kind = {"error": "error", "skip": "counted skip", "nodata": "nodata"}[c.expect]
        deeper = f"`{c.deeper}`" if c.deeper else ""
        rows.append(f"| `{c.id}` | {c.input} | `{c.reader}` | {kind}: {c.promise} | {deeper} |")
    return "\n".join([BEGIN, *rows, END])


def test_docs_table_is_current() -> None:
    assert table() in DOC.read_text(), (
        "docs/reliability.md is out of date: run python tests/reliability/test_bad_inputs.py"
    )


if __name__ == "__main__":
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + table() + text[end:])
    sys.stdout.write(f"wrote {len(CASES)} cases into {DOC}\n")
