"""``geodino embed`` assembles COGs on disk: equal to the in-memory grid, shared across ranks."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import Polygon

import geodino.pca
from geodino.errors import DataError
from geodino.export import load_backbone
from geodino.inference import embed, plan_regions
from geodino.inference.embedding import embed_region, process_share
from geodino.pca import fit_pca, project

CRS = "EPSG:32633"


def write_raster(path: Path, height: int, width: int, seed: int, nodata_rows: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.integers(300, 3000, size=(4, height, width)).astype("uint16")
    data[:, :nodata_rows] = 0
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 4,
        "dtype": "uint16",
        "crs": CRS,
        "transform": from_origin(500_000.0, 5_200_000.0, 10.0, 10.0),
        "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def read(path: Path) -> tuple[np.ndarray, list[dict[str, str]], tuple[str | None, ...]]:
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        return src.read(), [src.tags(b) for b in range(1, src.count + 1)], src.descriptions


def in_memory_grids(export: Path, rasters: list[Path], aoi: object, chip: int) -> list:
    """The grids as embed assembled them before: whole, in memory, NaN outside the mask."""
    backbone = load_backbone(export)
    return [
        embed_region(backbone, region, chip, batch_size=3)[0]
        for region in plan_regions(backbone, rasters, aoi)
    ]


def test_streamed_cog_equals_the_in_memory_grid(tiny_export: Path, tmp_path: Path) -> None:
    # odd sizes (edge windows moved back inside), nodata rows, and an AOI that is not a
    # rectangle, so that windows overlap and the mask cuts through windows
    raster = write_raster(tmp_path / "scene.tif", 118, 130, seed=1, nodata_rows=14)
    shape = Polygon(
        [(500_100, 5_199_950), (501_250, 5_199_950), (501_250, 5_198_900), (500_600, 5_199_300)]
    )
    aoi = gpd.GeoDataFrame({"name": ["a"]}, geometry=[shape], crs=CRS)
    out = tmp_path / "emb.tif"
    embed(tiny_export, [raster], out, aoi=aoi, chip_size=28, batch_size=3, progress=False)
    streamed, statistics, names = read(out)
    (expected,) = in_memory_grids(tiny_export, [raster], aoi, 28)
    np.testing.assert_array_equal(streamed, expected)
    assert np.isnan(streamed).any() and np.isfinite(streamed).any()
    assert names == tuple(f"emb_{j:03d}" for j in range(32))
    for band, tags in zip(expected, statistics, strict=True):
        values = band[np.isfinite(band)].astype(np.float64)
        assert float(tags["STATISTICS_MINIMUM"]) == values.min()
        assert float(tags["STATISTICS_MAXIMUM"]) == values.max()
        assert float(tags["STATISTICS_MEAN"]) == values.mean()
        assert float(tags["STATISTICS_STDDEV"]) == values.std()
    assert not (tmp_path / "emb.tif.parts").exists()


@pytest.mark.parametrize("samples", [None, 50])
def test_pca_fitted_on_a_sample_and_applied_per_chunk_equals_the_whole_grid(
    tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, samples: int | None
) -> None:
    if samples is not None:  # more finite pixels than the sample: the subsampled fit
        monkeypatch.setattr(geodino.pca, "PCA_SAMPLES", samples)
    rasters = [
        write_raster(tmp_path / "a.tif", 84, 98, seed=2, nodata_rows=14),
        write_raster(tmp_path / "b.tif", 70, 112, seed=3),
    ]
    out = tmp_path / "pc.tif"
    written = embed(tiny_export, rasters, out, pca=3, chip_size=28, batch_size=2, progress=False)
    grids = in_memory_grids(tiny_export, rasters, None, 28)
    flat = np.concatenate([g.reshape(len(g), -1).T for g in grids])
    mean, components = fit_pca(flat[np.isfinite(flat).all(1)], 3)
    for path, grid in zip(written, grids, strict=True):
        streamed, _, names = read(path)
        expected = project(grid.transpose(1, 2, 0), mean, components).transpose(2, 0, 1)
        np.testing.assert_allclose(streamed, expected, rtol=1e-6, atol=1e-6)
        assert names == ("pc1", "pc2", "pc3")
        with rasterio.open(path) as src:
            assert src.tags()["pca_components"] == "3"
            assert [c.name for c in src.colorinterp] == ["red", "green", "blue"]


def test_ranks_embed_disjoint_shares_equal_to_one_process(
    tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rasters = [write_raster(tmp_path / f"s{i}.tif", 56, 56, seed=10 + i) for i in range(3)]
    (tmp_path / "one").mkdir()
    single = embed(tiny_export, rasters, tmp_path / "one" / "e.tif", chip_size=28, progress=False)
    out = tmp_path / "many" / "e.tif"
    out.parent.mkdir()
    first = embed(tiny_export, rasters, out, chip_size=28, progress=False, rank=0, world_size=2)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    second = embed(tiny_export, rasters, out, chip_size=28, progress=False)
    assert [p.name for p in first] == ["e_s0.tif", "e_s2.tif"]
    assert [p.name for p in second] == ["e_s1.tif"]
    for path in first + second:
        np.testing.assert_array_equal(read(path)[0], read(single[0].parent / path.name)[0])
    with pytest.raises(DataError, match="one table of all rasters"):
        embed(tiny_export, rasters, tmp_path / "t.parquet", progress=False)
    with pytest.raises(DataError, match="PCA fitted on all rasters"):
        embed(tiny_export, rasters, tmp_path / "p.tif", pca=3, progress=False)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(DataError, match="rank 2 is not one of the 2 processes"):
        process_share(None, None)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert process_share(None, None) == (3, 4)


def test_progress_runs_until_the_file_is_complete(
    tiny_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raster = write_raster(tmp_path / "scene.tif", 56, 84, seed=4)
    embed(tiny_export, [raster], tmp_path / "emb.tif", chip_size=28, batch_size=2)
    err = capsys.readouterr().err
    # 3 saved batches (6 windows) + 32 bands' statistics + the overviews + the translation
    assert "writing emb.tif: 100%" in err and "37/37" in err


def test_cog_is_band_interleaved_with_the_overviews_gdal_builds(tmp_path: Path) -> None:
    # a staged grid as embed stages it (band-interleaved strips), wider than one tile, NaN
    # in places: the overviews built band by band are the COG driver's levels, the first
    # equal to its own (it resamples the next ones in another order)
    from rasterio.shutil import copy

    from geodino.inference.cog import finish_cog, staging_profile

    data = np.random.default_rng(0).normal(size=(5, 300, 530)).astype(np.float32)
    data[:, :37, :101] = np.nan
    data[2, 200:] = np.nan
    transform = from_origin(500_000.0, 5_200_000.0, 140.0, 140.0)
    profile = staging_profile(530, 300, 5, "float32", CRS, transform, rows_per_strip=16)
    staged = tmp_path / "staged.tif"
    with rasterio.open(staged, "w", **profile) as dst:
        dst.write(data)
    reference = tmp_path / "reference.tif"
    copy(staged, reference, driver="COG", BLOCKSIZE=256, OVERVIEWS="AUTO", RESAMPLING="AVERAGE")
    out = finish_cog(staged, tmp_path / "out.tif", [f"e{j}" for j in range(5)], {})
    with rasterio.open(out) as src, rasterio.open(reference) as ref:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.tags(ns="IMAGE_STRUCTURE")["INTERLEAVE"] == "BAND"
        assert src.overviews(1) == ref.overviews(1) == [2, 4]
        np.testing.assert_array_equal(src.read(), data)
        shape = (5, 150, 265)
        np.testing.assert_array_equal(src.read(out_shape=shape), ref.read(out_shape=shape))
    assert not staged.exists()
