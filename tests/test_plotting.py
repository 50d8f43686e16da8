"""Visual checks: PCA maps, attention maps of CLS and registers, similarity search."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from geodino.cli import main
from geodino.errors import DataError
from geodino.export import load_backbone
from geodino.inference import embed, similarity_search
from geodino.plotting import attention_maps, pca_rgb, rgb_bands

CRS = "EPSG:32633"


def write_two_halves(path: Path, size: int = 56) -> Path:
    """A 4-band scene: smooth dark left half, bright noisy right half."""
    rng = np.random.default_rng(0)
    data = np.empty((4, size, size))
    data[:, :, : size // 2] = 600 + rng.normal(0, 20, (4, size, size // 2))
    data[:, :, size // 2 :] = 2500 + rng.normal(0, 600, (4, size, size // 2))
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=4,
        dtype="uint16",
        crs=CRS,
        transform=from_origin(400_000, 5_000_000, 10, 10),
        nodata=0,
    ) as dst:
        dst.write(data.clip(1, 60000).astype("uint16"))
    return path


def test_attention_maps_equal_timm_attention_weights(tiny_export: Path) -> None:
    backbone = load_backbone(tiny_export)
    model = backbone.model
    x = torch.randn(2, 4, 42, 28)
    maps = attention_maps(model, x)
    assert maps.shape == (2, 5, 3, 2)  # CLS + 4 registers over a 3 x 2 patch grid
    captured = {}
    attn = model.blocks[-1].attn
    attn.fused_attn = False
    hook = attn.attn_drop.register_forward_hook(lambda m, i, o: captured.update(w=o))
    try:
        with torch.no_grad():
            model.forward_features(x)
    finally:
        hook.remove()
        attn.fused_attn = True
    expected = captured["w"].mean(1)[:, :5, 5:].reshape(2, 5, 3, 2)
    torch.testing.assert_close(maps, expected)
    assert (maps.sum((2, 3)) < 1).all()


def test_pca_rgb_colours_clusters_apart_and_leaves_gaps_white() -> None:
    rng = np.random.default_rng(0)
    grid = np.empty((8, 6, 6), dtype=np.float32)
    grid[:, :, :3] = rng.normal(0, 0.1, (8, 6, 3)) + 5
    grid[:, :, 3:] = rng.normal(0, 0.1, (8, 6, 3)) - 5
    grid[:, 0, 0] = np.nan
    rgb = pca_rgb(grid)
    assert rgb.shape == (6, 6, 3) and (rgb >= 0).all() and (rgb <= 1).all()
    assert (rgb[0, 0] == 1).all()
    left, right = rgb[1:, :3].reshape(-1, 3).mean(0), rgb[1:, 3:].reshape(-1, 3).mean(0)
    assert abs(left[0] - right[0]) > 0.8  # the first component separates the clusters
    assert rgb_bands(["B02", "B03", "B04", "B08"]) == [2, 1, 0]
    assert rgb_bands(["VV", "VH"]) is None


def test_maps_command_writes_pngs_and_a_georeferenced_pca(
    tiny_export: Path, tmp_path: Path
) -> None:
    raster = write_two_halves(tmp_path / "scene.tif")
    out = tmp_path / "maps"
    assert (
        main(
            [
                "maps",
                str(tiny_export),
                str(raster),
                "--out",
                str(out),
                "--chip_size",
                "28",
                "--x",
                "400100",
                "--y",
                "4999900",
            ]
        )
        == 0
    )
    for name in ("pca_map.png", "attention.png"):
        assert (out / name).stat().st_size > 2000
    with rasterio.open(out / "pca_map.tif") as dst, rasterio.open(raster) as src:
        assert dst.count == 3 and dst.dtypes[0] == "uint8" and dst.crs == src.crs
        assert dst.bounds == src.bounds and (dst.height, dst.width) == (4, 4)
        colours = dst.read().astype(int)
    # the two halves of the scene get different colours
    assert np.abs(colours[:, :, :2].mean((1, 2)) - colours[:, :, 2:].mean((1, 2))).max() > 60
    assert (
        main(["maps", str(tiny_export), str(raster), "--out", str(out), "--x", "0", "--y", "0"])
        == 2
    )


def test_similarity_search_names_a_missing_or_unreadable_embeddings_file(tmp_path: Path) -> None:
    missing, text = tmp_path / "missing.tif", tmp_path / "notes.tif"
    text.write_text("not a raster")
    for path, reason in ((missing, "no such embeddings file"), (text, "not a GeoTIFF")):
        with pytest.raises(DataError, match=reason) as error:
            similarity_search(path, tmp_path / "sim.tif", point=(0.0, 0.0))
        assert str(path) in str(error.value) and "geodino embed" in str(error.value)
    assert (
        main(["similar", str(missing), "--out", str(tmp_path / "s.tif"), "--x", "0", "--y", "0"])
        == 2
    )


def test_similarity_search_finds_the_query_half(tiny_export: Path, tmp_path: Path) -> None:
    raster = write_two_halves(tmp_path / "scene.tif")
    emb = tmp_path / "emb.tif"
    embed(tiny_export, [raster], emb, chip_size=28, progress=False)
    # query: the patch at pixel (row 7, col 7) of the dark half, given in EPSG:4326
    x, y = 400_000 + 7 * 10, 5_000_000 - 7 * 10
    query = gpd.GeoSeries(gpd.points_from_xy([x], [y]), crs=CRS).to_crs("EPSG:4326")
    lon, lat = query.iloc[0].coords[0]
    out = tmp_path / "sim.tif"
    assert (
        main(
            [
                "similar",
                str(emb),
                "--x",
                str(lon),
                "--y",
                str(lat),
                "--crs",
                "EPSG:4326",
                "--out",
                str(out),
                "--top_k",
                "5",
            ]
        )
        == 0
    )
    with rasterio.open(out) as dst, rasterio.open(emb) as src:
        assert dst.count == 1 and dst.crs == src.crs and dst.transform == src.transform
        similarity = dst.read(1)
        grid = src.read()
    assert similarity[0, 0] == pytest.approx(1.0, abs=1e-5)
    expected = (
        grid[:, 1, 3]
        @ grid[:, 0, 0]
        / np.linalg.norm(grid[:, 1, 3])
        / np.linalg.norm(grid[:, 0, 0])
    )
    assert similarity[1, 3] == pytest.approx(expected, abs=1e-5)
    assert similarity[:, :2].mean() > similarity[:, 2:].mean()
    matches = gpd.read_file(tmp_path / "sim_matches.geojson")
    assert list(matches["rank"]) == [1, 2, 3, 4, 5]
    assert (np.diff(matches["similarity"]) <= 0).all()
    assert not ((matches["row"] == 0) & (matches["col"] == 0)).any()
    ranked = np.sort(np.delete(similarity.ravel(), 0))[::-1][:5]
    np.testing.assert_allclose(matches["similarity"], ranked, atol=1e-6)

    # a query chip (box): its mean embedding
    box_out = tmp_path / "box.tif"
    similarity_search(emb, box_out, bbox=(400_000, 4_999_720, 400_280, 5_000_000))
    with rasterio.open(box_out) as dst:
        assert dst.read(1)[:, :2].mean() > dst.read(1)[:, 2:].mean()
    with pytest.raises(DataError, match="falls on no embedding pixel"):
        similarity_search(emb, tmp_path / "x.tif", point=(0.0, 0.0))
    with pytest.raises(DataError, match="not both"):
        similarity_search(emb, tmp_path / "x.tif")
