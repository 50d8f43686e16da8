"""``geodino embed``: embeddings of real GeoTIFFs as COGs and GeoParquet, on the input's grid."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from shapely.geometry import Point, Polygon, box

import geodino.inference.embedding as embedding
from geodino.cli import main
from geodino.errors import DataError
from geodino.export import load_backbone
from geodino.inference import embed, plan_regions
from geodino.models import forward_tokens

CRS = "EPSG:32633"
ORIGIN = (500_000.0, 5_200_000.0)


def write_raster(
    path: Path,
    height: int,
    width: int,
    count: int = 4,
    seed: int = 0,
    descriptions: list[str] | None = None,
    nodata_rows: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.integers(300, 3000, size=(count, height, width)).astype("uint16")
    data[:, :nodata_rows] = 0
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": "uint16",
        "crs": CRS,
        "transform": from_origin(*ORIGIN, 10.0, 10.0),
        "nodata": 0,
        "tiled": True,
        "blockxsize": 64,
        "blockysize": 64,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = tuple(descriptions)
    return path


def direct_patches(export: Path, raster: Path, row: int, col: int, size: int) -> np.ndarray:
    """Patch embeddings (D, h, w) of one window by a plain forward pass of the backbone."""
    backbone = load_backbone(export)
    with rasterio.open(raster) as src:
        pixels = src.read(window=((row, row + size), (col, col + size))).astype("float32")
        pixels[pixels == src.nodata] = np.nan
    x = backbone.normalize(torch.from_numpy(pixels)[None])
    with torch.no_grad():
        tokens = forward_tokens(backbone.model, x)
    n = size // backbone.patch_size
    patches = tokens[0, backbone.model.num_prefix_tokens :].reshape(n, n, -1)
    return patches.permute(2, 0, 1).numpy()


def test_cog_on_the_raster_grid_equals_a_direct_forward_pass(
    tiny_export: Path, tmp_path: Path
) -> None:
    raster = write_raster(
        tmp_path / "scene.tif", 84, 112, descriptions=["B02", "B03", "B04", "B08"]
    )
    out = tmp_path / "emb.tif"
    assert (
        main(
            [
                "embed",
                str(tiny_export),
                str(raster),
                "--out",
                str(out),
                "--chip_size",
                "28",
                "--batch_size",
                "1",
            ]
        )
        == 0
    )
    with rasterio.open(raster) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs
        assert dst.transform == src.transform @ src.transform.scale(14)
        assert dst.bounds == src.bounds
        assert (dst.height, dst.width) == (6, 8)
        assert dst.count == 32 and dst.dtypes[0] == "float32"
        assert dst.driver == "GTiff" and dst.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        grid = dst.read()
    # window (row 28, col 56) is the second row, third column of 28-px windows
    expected = direct_patches(tiny_export, raster, 28, 56, 28)
    np.testing.assert_array_equal(grid[:, 2:4, 4:6], expected)
    assert np.isfinite(grid).all()


def test_batched_and_edge_windows_match_direct_passes(tiny_export: Path, tmp_path: Path) -> None:
    # 90 x 100 px: neither side a multiple of the 28-px window nor of the 14-px patch
    raster = write_raster(tmp_path / "odd.tif", 90, 100, nodata_rows=14)
    out = tmp_path / "odd.tif.emb.tif"
    embed(tiny_export, [raster], out, chip_size=28, batch_size=4, progress=False)
    with rasterio.open(raster) as src, rasterio.open(out) as dst:
        assert (dst.height, dst.width) == (7, 8)  # ceil(90 / 14), ceil(100 / 14)
        assert dst.transform == src.transform @ src.transform.scale(14)
        left, bottom, right, top = dst.bounds
        assert (left, top) == (src.bounds.left, src.bounds.top)
        assert src.bounds.right <= right < src.bounds.right + 140
        assert src.bounds.bottom - 140 < bottom <= src.bounds.bottom
        grid = dst.read()
    # the first patch row is all nodata: no embedding there
    assert np.isnan(grid[:, 0]).all() and np.isfinite(grid[:, 1:6, :6]).all()
    expected = direct_patches(tiny_export, raster, 28, 28, 28)
    np.testing.assert_allclose(grid[:, 2:4, 2:4], expected, rtol=1e-5, atol=1e-5)


def test_aoi_clips_the_output_and_masks_outside(tiny_export: Path, tmp_path: Path) -> None:
    raster = write_raster(tmp_path / "scene.tif", 112, 112)
    x0, y0 = ORIGIN
    # a triangle over x 200..760 m, y -980..-280 m from the origin, stored in EPSG:4326
    triangle = Polygon([(x0 + 200, y0 - 980), (x0 + 760, y0 - 980), (x0 + 200, y0 - 280)])
    aoi = gpd.GeoDataFrame({"name": ["a"]}, geometry=[triangle], crs=CRS).to_crs("EPSG:4326")
    aoi_path = tmp_path / "aoi.geojson"
    aoi.to_file(aoi_path)
    out = tmp_path / "clip.tif"
    embed(tiny_export, [raster], out, aoi=aoi_path, chip_size=28, progress=False)
    with rasterio.open(out) as dst:
        # the AOI's bounds snapped outward to the raster's 14-px (140 m) patch grid
        assert dst.crs.to_string() == CRS
        assert dst.bounds.left == x0 + 140 and dst.bounds.right == x0 + 840
        assert dst.bounds.top == y0 - 280 and dst.bounds.bottom == y0 - 980
        assert dst.transform.a == 140 and dst.transform.e == -140
        grid = dst.read(1)
    assert grid.shape == (5, 5)
    # cells the triangle touches hold embeddings, the far corner does not
    assert np.isfinite(grid[-1, 0]) and np.isnan(grid[0, -1])
    assert np.isfinite(grid).sum() < grid.size


def test_geoparquet_of_chip_polygons_with_cls(tiny_export: Path, tmp_path: Path) -> None:
    raster = write_raster(tmp_path / "scene.tif", 56, 84)
    out = tmp_path / "chips.parquet"
    embed(tiny_export, [raster], out, chip_size=28, progress=False)
    table = gpd.read_parquet(out)
    assert table.crs.to_string() == CRS and len(table) == 6
    emb = table[[c for c in table.columns if c.startswith("emb_")]].to_numpy()
    assert emb.shape == (6, 32)
    with rasterio.open(raster) as src:
        assert table.union_all().equals(box(*src.bounds))
    backbone = load_backbone(tiny_export)
    first = table.iloc[0]
    with rasterio.open(raster) as src:
        pixels = src.read(
            window=((first["row"], first["row"] + 28), (first["col"], first["col"] + 28))
        ).astype("float32")
    cls = backbone.tokens(torch.from_numpy(pixels)[None])[0, 0].numpy()
    np.testing.assert_allclose(emb[0], cls, rtol=1e-5, atol=1e-5)
    reduced = tmp_path / "pca.parquet"
    embed(tiny_export, [raster], reduced, chip_size=28, pca=3, progress=False)
    assert [c for c in gpd.read_parquet(reduced).columns if c.startswith("pc")] == [
        "pc1",
        "pc2",
        "pc3",
    ]


def test_pca_bands_and_resume(
    tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raster = write_raster(tmp_path / "scene.tif", 56, 56)
    out = tmp_path / "pca.tif"
    embed(
        tiny_export,
        [raster],
        tmp_path / "reference.tif",
        chip_size=28,
        batch_size=2,
        pca=3,
        progress=False,
    )
    with rasterio.open(tmp_path / "reference.tif") as dst:
        assert dst.count == 3 and dst.descriptions == ("pc1", "pc2", "pc3")
        reference = dst.read()
    # a run interrupted after its first batch leaves that batch in OUT.parts/
    save_part = embedding._save_part
    saved: list[Path] = []

    def save_then_stop(path: Path, **arrays: np.ndarray) -> None:
        save_part(path, **arrays)
        saved.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(embedding, "_save_part", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        embed(tiny_export, [raster], out, chip_size=28, batch_size=2, pca=3, progress=False)
    parts = tmp_path / "pca.tif.parts"
    assert [p.name for p in parts.glob("*.npz")] == [saved[0].name] and not out.exists()
    # the rerun computes only the other batch, then writes the same raster
    monkeypatch.setattr(
        embedding,
        "_save_part",
        lambda path, **arrays: (saved.append(path), save_part(path, **arrays)),
    )
    embed(tiny_export, [raster], out, chip_size=28, batch_size=2, pca=3, progress=False)
    assert len(saved) == 2 and saved[1] != saved[0] and not parts.exists()
    with rasterio.open(out) as dst:
        np.testing.assert_array_equal(dst.read(), reference)
    # other arguments do not silently reuse parts of another run
    parts.mkdir()
    (parts / "manifest.json").write_text('{"key": "other"}')
    out.unlink()
    with pytest.raises(DataError, match="other arguments"):
        embed(tiny_export, [raster], out, chip_size=28, batch_size=2, progress=False)


def test_bad_input_is_refused(tiny_export: Path, tmp_path: Path, capsys) -> None:
    three = write_raster(tmp_path / "three.tif", 56, 56, count=3)
    with pytest.raises(DataError, match="has 3 bands but the backbone"):
        embed(tiny_export, [three], tmp_path / "x.tif", progress=False)
    named = write_raster(tmp_path / "named.tif", 56, 56, descriptions=["B02", "B03", "B04", "B05"])
    with pytest.raises(DataError, match="was trained on"):
        embed(tiny_export, [named], tmp_path / "x.tif", progress=False)
    raster = write_raster(tmp_path / "scene.tif", 56, 56)
    far = gpd.GeoDataFrame(geometry=[Point(ORIGIN[0] + 50_000, ORIGIN[1]).buffer(500)], crs=CRS)
    far_path = tmp_path / "far.gpkg"
    far.to_file(far_path)
    with pytest.raises(DataError, match="outside every raster"):
        embed(tiny_export, [raster], tmp_path / "x.tif", aoi=far_path, progress=False)
    with pytest.raises(DataError, match="--pca 33 must lie between 1 and the embedding size 32"):
        embed(tiny_export, [raster], tmp_path / "x.tif", pca=33, progress=False)
    with pytest.raises(DataError, match=r"x\.png: give a \.tif .*\.gpkg, \.fgb, \.parquet"):
        embed(tiny_export, [raster], tmp_path / "x.png", progress=False)
    # through the command: exit status 2 and a one-paragraph message
    assert main(["embed", str(tiny_export), str(three), "--out", str(tmp_path / "y.tif")]) == 2
    assert "has 3 bands" in capsys.readouterr().err
    assert not (tmp_path / "y.tif").exists()


def test_several_rasters_write_one_file_each(tiny_export: Path, tmp_path: Path) -> None:
    a = write_raster(tmp_path / "a.tif", 28, 28, seed=1)
    b = write_raster(tmp_path / "b.tif", 28, 56, seed=2)
    backbone = load_backbone(tiny_export)
    assert len(plan_regions(backbone, [a, b])) == 2
    paths = embed(tiny_export, [a, b], tmp_path / "emb.tif", chip_size=28, progress=False)
    assert [p.name for p in paths] == ["emb_a.tif", "emb_b.tif"]
    with rasterio.open(paths[1]) as dst:
        assert (dst.height, dst.width) == (2, 4)


def test_qgis_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    monkeypatch.chdir(tmp_path)
    page = Path(__file__).resolve().parents[1] / "docs" / "qgis.md"
    text = page.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks
    namespace: dict = {"__name__": "docs"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"docs/qgis.md snippet {number}", "exec"), namespace)
    assert gpd.read_file(namespace["matches"]).shape[0] == 5
    figure = page.parent / "figures" / "qgis_pca_demo.png"
    assert "figures/qgis_pca_demo.png" in text and 0 < figure.stat().st_size < 300_000


def test_patch16_backbone_with_registers(tmp_path: Path, tiny_export_writer) -> None:
    export = tiny_export_writer(tmp_path / "p16", patch=16)
    raster = write_raster(tmp_path / "scene.tif", 64, 96)
    (out,) = embed(
        export, [raster], tmp_path / "emb.tif", chip_size=32, batch_size=1, progress=False
    )
    with rasterio.open(out) as dst, rasterio.open(raster) as src:
        assert dst.transform == src.transform @ src.transform.scale(16)
        assert (dst.height, dst.width, dst.count) == (4, 6, 32)
        grid = dst.read()
    np.testing.assert_array_equal(grid[:, 2:4, 2:4], direct_patches(export, raster, 32, 32, 32))
