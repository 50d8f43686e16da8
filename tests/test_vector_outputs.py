"""Outputs a GIS opens and styles at once: chip and match tables, COG statistics and colours."""

import gc
import sqlite3
import weakref
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from shapely.geometry import box

from geodino import __version__
from geodino.cli import main
from geodino.errors import DataError
from geodino.inference import (
    CHUNK_ROWS,
    embed,
    read_metadata,
    similarity_search,
    write_cog,
    write_maps,
    write_table,
)

CRS = "EPSG:32633"
TABLES = (".gpkg", ".fgb", ".parquet")


def write_scene(
    path: Path, height: int = 56, width: int = 84, seed: int = 0, crs: str = CRS
) -> Path:
    """A 4-band uint16 scene of random values on a 10 m UTM grid."""
    data = np.random.default_rng(seed).integers(300, 3000, (4, height, width)).astype("uint16")
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=4,
        dtype="uint16",
        crs=crs,
        transform=from_origin(500_000 if crs == CRS else 300_000, 5_200_000, 10, 10),
        nodata=0,
    ) as dst:
        dst.write(data)
    return path


def read_table(path: Path, order: tuple[str, ...] = ("raster", "row", "col")) -> gpd.GeoDataFrame:
    """A table as GDAL reads it (GeoParquet: as geopandas reads it; this GDAL lacks Parquet).

    FlatGeobuf stores features in the order of its spatial index: the rows come back sorted.
    """
    table = gpd.read_parquet(path) if path.suffix == ".parquet" else pyogrio.read_dataframe(path)
    return table.sort_values(list(order), ignore_index=True)


def emb_columns(table: gpd.GeoDataFrame, prefix: str = "emb_") -> list[str]:
    return [c for c in table.columns if c.startswith(prefix)]


@pytest.mark.parametrize("suffix", TABLES)
def test_chip_table_in_every_format(tiny_export: Path, tmp_path: Path, suffix: str) -> None:
    scene = write_scene(tmp_path / "scene.tif")
    reference = tmp_path / "reference.parquet"
    embed(tiny_export, [scene], reference, chip_size=28, progress=False)
    out = tmp_path / f"chips{suffix}"
    assert embed(tiny_export, [scene], out, chip_size=28, progress=False) == [out]
    table, expected = read_table(out), read_table(reference)
    assert table.crs.to_epsg() == 32633 and len(table) == 6
    names = emb_columns(table)
    assert names == [f"emb_{j:03d}" for j in range(32)]
    assert all(table[name].dtype == np.float32 for name in names)
    np.testing.assert_array_equal(table[names].to_numpy(), expected[names].to_numpy())
    assert list(table["row"]) == list(expected["row"]) and set(table["raster"]) == {str(scene)}
    assert table.geom_type.eq("Polygon").all()
    with rasterio.open(scene) as src:
        assert table.union_all().equals(box(*src.bounds))
    metadata = read_metadata(out)
    assert metadata["geodino_version"] == __version__
    assert metadata["geodino_model"] == "vit_small_patch14_reg4_dinov2"
    assert metadata["bands"] == "B02,B03,B04,B08" and metadata["chip_size"] == "28"
    assert metadata["geodino_weights"] == str(tiny_export)
    assert datetime.fromisoformat(metadata["date"]).tzinfo is not None
    if suffix == ".gpkg":
        # where QGIS shows it: the layer's description and the GeoPackage metadata tables
        with sqlite3.connect(out) as db:
            ((identifier, description),) = db.execute(
                "SELECT identifier, description FROM gpkg_contents"
            ).fetchall()
            stored = " ".join(r[0] for r in db.execute("SELECT metadata FROM gpkg_metadata"))
            # GeoPackage 1.2, which the GDAL 3.6 of Debian's QGIS reads without a warning
            ((version,),) = db.execute("PRAGMA user_version").fetchall()
        assert version == 10200
        assert identifier == "chips" and description.startswith("geodino chip embeddings (CLS)")
        assert f"geodino {__version__}, model vit_small_patch14_reg4_dinov2" in description
        assert "bands B02,B03,B04,B08, chips of 28 px, written 20" in description
        assert "geodino_model" in stored and __version__ in stored
    if suffix == ".fgb":
        layer = pyogrio.read_info(out)["layer_metadata"]
        assert layer["TITLE"] == "chips" and "geodino chip embeddings" in layer["DESCRIPTION"]
    if suffix == ".parquet":
        assert gpd.read_parquet(out).attrs["bands"] == "B02,B03,B04,B08"


def test_chip_table_pca_columns(tiny_export: Path, tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "scene.tif")
    tables = {}
    for suffix in (".gpkg", ".parquet"):
        out = tmp_path / f"pca{suffix}"
        embed(tiny_export, [scene], out, chip_size=28, pca=3, progress=False)
        tables[suffix] = read_table(out)
        assert emb_columns(tables[suffix], "pc") == ["pc1", "pc2", "pc3"]
        assert read_metadata(out)["pca_components"] == "3"
    np.testing.assert_array_equal(
        tables[".gpkg"][["pc1", "pc2", "pc3"]], tables[".parquet"][["pc1", "pc2", "pc3"]]
    )


@pytest.mark.parametrize("suffix", TABLES)
def test_chunk_size_does_not_change_the_table(
    tiny_export: Path, tmp_path: Path, suffix: str
) -> None:
    # two rasters in two CRSs: the table is reprojected chunk by chunk
    a = write_scene(tmp_path / "a.tif", 56, 84, seed=1)
    b = write_scene(tmp_path / "b.tif", 28, 84, seed=2, crs="EPSG:32632")
    tables = []
    for rows in (1, 4, CHUNK_ROWS):
        out = tmp_path / f"chips_{rows}{suffix}"
        embed(tiny_export, [a, b], out, chip_size=28, batch_size=2, chunk_rows=rows, progress=False)
        tables.append(read_table(out))
        if suffix == ".parquet":
            # one row group per chunk: the writer got the table chunk by chunk
            assert pq.ParquetFile(out).num_row_groups == -(-9 // rows)
    assert len(tables[0]) == 9 and tables[0].crs.to_epsg() == 32633
    for table in tables[1:]:
        assert table.drop(columns="geometry").equals(tables[0].drop(columns="geometry"))
        assert table.geometry.geom_equals_exact(tables[0].geometry, 1e-6).all()


@pytest.mark.parametrize("suffix", TABLES)
def test_writer_lets_go_of_written_chunks(tmp_path: Path, suffix: str) -> None:
    alive: list[weakref.ref] = []
    pulled: list[int] = []

    def chunks() -> Iterator[gpd.GeoDataFrame]:
        for i in range(6):
            gc.collect()
            pulled.append(sum(ref() is not None for ref in alive))
            frame = gpd.GeoDataFrame(
                {"id": np.arange(3 * i, 3 * i + 3), "emb_000": np.full(3, i, np.float32)},
                geometry=[box(x, 0, x + 1, 1) for x in range(3 * i, 3 * i + 3)],
                crs=CRS,
            )
            alive.append(weakref.ref(frame))
            yield frame

    out = tmp_path / f"t{suffix}"
    assert write_table(out, chunks(), CRS, {"k": "v"}) == 18
    # each chunk is released once written: never more than the current and the previous held
    assert len(pulled) == 6 and max(pulled) <= 2, pulled
    table = read_table(out, ("id",))
    assert list(table["id"]) == list(range(18)) and read_metadata(out) == {"k": "v"}


@pytest.mark.parametrize("suffix", TABLES)
def test_interrupted_write_leaves_no_table(tmp_path: Path, suffix: str) -> None:
    def chunks() -> Iterator[gpd.GeoDataFrame]:
        yield gpd.GeoDataFrame({"id": [0]}, geometry=[box(0, 0, 1, 1)], crs=CRS)
        raise DataError("part 3 is unreadable")

    out = tmp_path / f"t{suffix}"
    # the producer's own error comes through, not the writer's report of it
    with pytest.raises(DataError, match="part 3 is unreadable"):
        write_table(out, chunks(), CRS, {})
    assert list(tmp_path.iterdir()) == []


def test_bad_table_suffix_is_refused(tiny_export: Path, tmp_path: Path, capsys) -> None:
    frame = gpd.GeoDataFrame({"a": [1]}, geometry=[box(0, 0, 1, 1)], crs=CRS)
    with pytest.raises(DataError, match=r"t\.shp: a vector table must be a \.gpkg .*\.parquet"):
        write_table(tmp_path / "t.shp", [frame], CRS, {})
    scene = write_scene(tmp_path / "scene.tif")
    out = tmp_path / "chips.shp"
    assert main(["embed", str(tiny_export), str(scene), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and ".gpkg, .fgb, .parquet, .geojson" in err


@pytest.mark.parametrize("suffix", TABLES)
def test_similar_matches_table(tiny_export: Path, tmp_path: Path, suffix: str) -> None:
    scene = write_scene(tmp_path / "scene.tif")
    (emb,) = embed(tiny_export, [scene], tmp_path / "emb.tif", chip_size=28, progress=False)
    out, matches = tmp_path / "sim.tif", tmp_path / f"top{suffix}"
    args = ["similar", str(emb), "--x", "500075", "--y", "5199925", "--out", str(out)]
    assert main([*args, "--top_k", "4", "--matches", str(matches)]) == 0
    table = read_table(matches, ("rank",))
    assert table.crs.to_epsg() == 32633 and list(table["rank"]) == [1, 2, 3, 4]
    with rasterio.open(emb) as src, rasterio.open(out) as sim:
        grid, similarity = src.read(), sim.read(1)
        for _, match in table.iterrows():
            r, c = int(match["row"]), int(match["col"])
            np.testing.assert_array_equal(match[emb_columns(table)].to_numpy(float), grid[:, r, c])
            assert match["similarity"] == pytest.approx(similarity[r, c])
            assert match.geometry.equals(box(*src.window_bounds(((r, r + 1), (c, c + 1)))))
    metadata = read_metadata(matches)
    assert metadata["query"] == "point (500075.0, 5199925.0)"
    assert metadata["bands"] == "B02,B03,B04,B08" and metadata["source_embeddings"] == str(emb)
    if suffix != ".parquet":
        description = pyogrio.read_info(matches)["layer_metadata"]["DESCRIPTION"]
        assert description.startswith("geodino similarity search, the point (500075.0")
        assert "model vit_small_patch14_reg4_dinov2, bands B02,B03,B04,B08" in description
    with pytest.raises(DataError, match=r"--matches .*top\.csv: a vector table must be"):
        similarity_search(emb, out, point=(500075.0, 5199925.0), matches=tmp_path / "top.csv")


def test_cogs_carry_descriptions_statistics_and_colours(tiny_export: Path, tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "scene.tif", 56, 56)
    (emb,) = embed(tiny_export, [scene], tmp_path / "emb.tif", chip_size=28, progress=False)
    with rasterio.open(emb) as src:
        assert src.descriptions == tuple(f"emb_{j:03d}" for j in range(32))
        assert ColorInterp.red not in src.colorinterp
        grid = src.read()
        assert src.tags()["bands"] == "B02,B03,B04,B08"
        for index, band in enumerate(grid, 1):
            tags = src.tags(index)
            assert float(tags["STATISTICS_MINIMUM"]) == pytest.approx(np.nanmin(band))
            assert float(tags["STATISTICS_MAXIMUM"]) == pytest.approx(np.nanmax(band))
            assert float(tags["STATISTICS_MEAN"]) == pytest.approx(np.nanmean(band), rel=1e-5)
            assert float(tags["STATISTICS_STDDEV"]) == pytest.approx(np.nanstd(band), rel=1e-4)
    (pca,) = embed(tiny_export, [scene], tmp_path / "pca.tif", chip_size=28, pca=3, progress=False)
    with rasterio.open(pca) as src:
        assert src.descriptions == ("pc1", "pc2", "pc3")
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert all("STATISTICS_STDDEV" in src.tags(i) for i in (1, 2, 3))
    sim, _ = similarity_search(emb, tmp_path / "sim.tif", point=(500_075.0, 5_199_925.0))
    with rasterio.open(sim) as src:
        assert src.descriptions == ("cosine_similarity",)
        assert float(src.tags(1)["STATISTICS_MAXIMUM"]) == pytest.approx(1.0, abs=1e-5)
        assert src.tags()["geodino_model"] == "vit_small_patch14_reg4_dinov2"
    maps = write_maps(tiny_export, scene, tmp_path / "maps", chip_size=28, embeddings=emb)
    with rasterio.open(maps["pca_tif"]) as src:
        assert src.dtypes == ("uint8",) * 3 and src.descriptions == ("pc1", "pc2", "pc3")
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert src.tags(1)["STATISTICS_MAXIMUM"] == repr(float(src.read(1).max()))
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"


@pytest.mark.parametrize(("size", "overviews"), [((100, 120), []), ((600, 700), [2, 4])])
def test_cog_overviews(tmp_path: Path, size: tuple[int, int], overviews: list[int]) -> None:
    data = np.random.default_rng(0).normal(size=(3, *size)).astype(np.float32)
    data[:, :20] = np.nan
    out = write_cog(
        tmp_path / "c.tif", data, CRS, from_origin(0, 0, 10, 10), ["a", "b", "c"], {}, rgb=True
    )
    with rasterio.open(out) as src:
        assert [src.overviews(i) for i in (1, 2, 3)] == [overviews] * 3
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert float(src.tags(1)["STATISTICS_VALID_PERCENT"]) == pytest.approx(
            100 * (1 - 20 / size[0])
        )
    with pytest.raises(ValueError, match="three bands, not 2"):
        write_cog(
            tmp_path / "d.tif", data[:2], CRS, from_origin(0, 0, 10, 10), ["a", "b"], {}, True
        )
