"""``geodino embed`` on STAC items: the outputs of local GeoTIFFs of the items' bands."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.warp import transform_bounds

from geodino.cli import main
from geodino.datasets import STACCatalog
from geodino.datasets.remote import RemoteSettings
from geodino.errors import DataError
from geodino.inference import embed, embed_items
from tests.stac_catalogs import Scene, two_zone_scenes, write_items

#: The export's bands: three 10 m bands and a 20 m one, named as the items' eo:bands.
BANDS = ["B02", "B04", "B08", "B11"]
IDS = ["S2A_31_a", "S2B_31_b", "S2A_32_c"]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DINOv2 ViT export (patch 14, width 32) of the catalog's bands."""
    import timm
    import torch

    from geodino.export import write_export

    kwargs = {"img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 2}
    torch.manual_seed(0)
    name = "vit_small_patch14_reg4_dinov2"
    model = timm.create_model(name, pretrained=False, in_chans=len(BANDS), **kwargs)
    statistics = {
        "band_names": BANDS,
        "mean": [1000.0] * 4,
        "std": [500.0] * 4,
        "nodata": 0.0,
    }
    out = tmp_path_factory.mktemp("stac_export")
    write_export(
        model.state_dict(),
        out,
        name,
        len(BANDS),
        model_kwargs=kwargs,
        bands=BANDS,
        statistics=statistics,
    )
    return out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Scene]]:
    root = tmp_path_factory.mktemp("stac_embed")
    return root, two_zone_scenes(root / "cogs", side=64)


@pytest.fixture(scope="module")
def catalog(scenes: tuple[Path, list[Scene]]) -> Path:
    root, items = scenes
    return write_items(items, root / "items.parquet")


@pytest.fixture(scope="module")
def local_rasters(scenes: tuple[Path, list[Scene]], catalog: Path) -> list[Path]:
    """Each item as a local GeoTIFF: the pixels training reads of it, on its own grid."""
    root, items = scenes
    paths = []
    for scene in items:
        one = STACCatalog(
            catalog, bands=BANDS, crs=f"EPSG:{scene.epsg}", query=f"id == '{scene.id}'"
        )
        t = one.bounds[2]
        with rasterio.open(scene.files["blue"]) as src:
            profile = src.profile | {"driver": "GTiff", "count": 4, "dtype": "float32"}
            left, bottom, right, top = src.bounds
        image = one[(slice(left, right, 10), slice(bottom, top, 10), t)]["image"].numpy()
        path = root / "local" / f"{scene.id}.tif"
        path.parent.mkdir(exist_ok=True)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(image)
            dst.descriptions = tuple(BANDS)
        paths.append(path)
    return paths


def read(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        return src.read(), src.tags()


def test_items_embed_as_local_geotiffs_of_their_bands(
    export: Path, catalog: Path, local_rasters: list[Path], tmp_path: Path
) -> None:
    # three items in two UTM zones, bands at 10 and 20 m: each on its own grid, as a local
    # GeoTIFF of the pixels training reads of it gives
    local = embed(export, local_rasters, tmp_path / "local" / "e.tif", chip_size=28, progress=False)
    written = embed_items(
        export, catalog, tmp_path / "stac" / "e.tif", chip_size=28, progress=False
    )
    assert [p.name for p in written] == [f"e_{i}.tif" for i in IDS]
    for mine, theirs, item in zip(written, local, IDS, strict=True):
        values, tags = read(mine)
        expected, _ = read(theirs)
        np.testing.assert_array_equal(values, expected)
        assert np.isfinite(values).all()
        assert tags["source_raster"] == f"item {item} of {catalog}"
    # a chip table of all items, and processes sharing the items (each reads only its own)
    table = embed_items(export, catalog, tmp_path / "chips.parquet", chip_size=28, progress=False)
    import geopandas as gpd

    chips = gpd.read_parquet(table[0])
    assert sorted(set(chips["raster"])) == sorted(f"item {i} of {catalog}" for i in IDS)
    shared = tmp_path / "shared" / "e.tif"
    first = embed_items(export, catalog, shared, chip_size=28, progress=False, rank=0, world_size=2)
    second = embed_items(
        export, catalog, shared, chip_size=28, progress=False, rank=1, world_size=2
    )
    assert [p.name for p in first + second] == [
        "e_S2A_31_a.tif",
        "e_S2A_32_c.tif",
        "e_S2B_31_b.tif",
    ]
    for path in first + second:
        np.testing.assert_array_equal(read(path)[0], read(written[0].parent / path.name)[0])


def test_cli_embeds_named_items_an_aoi_of_the_catalog_or_a_config(
    export: Path,
    scenes: tuple[Path, list[Scene]],
    catalog: Path,
    local_rasters: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference = embed_items(
        export, catalog, tmp_path / "all" / "e.tif", chip_size=28, progress=False
    )
    expected = {p.name.removeprefix("e_"): read(p)[0] for p in reference}
    args = ["embed", str(export), "--catalog", str(catalog), "--chip_size", "28"]
    # one item named: its COG is OUT itself
    assert main([*args, "--items", "S2A_32_c", "--out", str(tmp_path / "c.tif")]) == 0
    np.testing.assert_array_equal(read(tmp_path / "c.tif")[0], expected["S2A_32_c.tif"])
    # a bbox in degrees over the middle of the 32N item only
    with rasterio.open(scenes[1][2].files["blue"]) as src:
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    middle = [west + (east - west) / 3, south + (north - south) / 3]
    middle += [west + (east - west) * 2 / 3, south + (north - south) * 2 / 3]
    bbox = [str(v) for v in middle]
    assert main([*args, "--bbox", *bbox, "--out", str(tmp_path / "b.tif")]) == 0
    with rasterio.open(tmp_path / "b.tif") as src:
        assert src.tags()["source_raster"].startswith("item S2A_32_c ")
    # the same bbox over the item's local GeoTIFF: the same embeddings
    local = ["embed", str(export), str(local_rasters[2]), "--chip_size", "28", "--bbox", *bbox]
    assert main([*local, "--out", str(tmp_path / "local_b.tif")]) == 0
    np.testing.assert_array_equal(read(tmp_path / "local_b.tif")[0], read(tmp_path / "b.tif")[0])
    # a training config's catalog, with its filters
    config = tmp_path / "config.yaml"
    dataset = {
        "class_path": "geodino.datasets.STACCatalog",
        "init_args": {
            "catalog": str(catalog),
            "bands": BANDS,
            "query": "platform == 'sentinel-2b'",
        },
    }
    config.write_text(yaml.safe_dump({"data": {"init_args": {"dataset": dataset}}}))
    out = tmp_path / "cfg" / "e.tif"
    out.parent.mkdir()
    assert (
        main(
            ["embed", str(export), "--catalog", str(config), "--chip_size", "28", "--out", str(out)]
        )
        == 0
    )
    np.testing.assert_array_equal(read(out)[0], expected["S2B_31_b.tif"])
    capsys.readouterr()
    # bad input: named, exit 2
    assert main([*args, "--items", "S2A_nope", "--out", str(tmp_path / "n.tif")]) == 2
    assert "items ['S2A_nope'] are not in" in capsys.readouterr().err
    assert main([*args, "--bbox", "20", "10", "21", "11", "--out", str(tmp_path / "n.tif")]) == 2
    assert "covers none of the 3 items" in capsys.readouterr().err
    assert main(["embed", str(export), "x.tif", "--catalog", str(catalog)]) == 2
    assert "give rasters or --catalog, not both" in capsys.readouterr().err
    assert main([*args, "--bbox", "6", "45", "7", "--out", str(tmp_path / "n.tif")]) == 2
    assert "must be west south east north in degrees" in capsys.readouterr().err


def test_items_in_s3_embed_as_local_ones(
    export: Path, scenes: tuple[Path, list[Scene]], catalog: Path, tmp_path: Path, s3_server
) -> None:
    root, items = scenes

    def href(path: Path) -> str:
        return s3_server.upload(path, "geodino-embed", str(path.relative_to(root / "cogs")))

    remote = write_items(items[:1], tmp_path / "s3.parquet", href)
    settings = RemoteSettings(endpoint=s3_server.endpoint, https=False, virtual_hosting=False)
    source = STACCatalog(remote, bands=BANDS, remote=settings)
    (written,) = embed_items(export, source, tmp_path / "s3.tif", chip_size=28, progress=False)
    (local,) = embed_items(
        export, catalog, tmp_path / "local.tif", items=[items[0].id], chip_size=28, progress=False
    )
    np.testing.assert_array_equal(read(written)[0], read(local)[0])
    with pytest.raises(DataError, match=r"s3://geodino-embed/.*cannot be read"):
        broken = write_items(items[1:2], tmp_path / "gone.parquet", lambda p: href(p) + ".gone")
        embed_items(
            export,
            STACCatalog(broken, bands=BANDS, remote=settings),
            tmp_path / "gone.tif",
            progress=False,
        )
