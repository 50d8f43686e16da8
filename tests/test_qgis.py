"""QGIS as the client: AOIs QGIS writes, files geodino writes, and the Processing plugin.

A real QGIS (Debian's python3-qgis, headless) runs as a subprocess (tests/qgis_client.py):
its API writes AOI GeoPackages over UTM GeoTIFFs that geodino samples exactly; it opens every
file geodino writes; and it runs the geodino Processing provider of qgis_plugin/ through
``processing.runAndLoadResults``. The module skips, with the reason, only where QGIS's Python
bindings cannot be imported (scripts/qgis_install.sh installs them).
"""

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from rasterio.transform import from_origin

from geodino.cli import main
from geodino.datamodules import GeoDINODataModule
from geodino.datasets import MultiBandGeoTIFF
from geodino.samplers import AOISampler
from tests.conftest import TINY_BANDS
from tests.qgis_client import find_qgis_python, run_qgis

ROOT = Path(__file__).resolve().parents[1]
UTM = "EPSG:32631"
RES = 10.0
X0, Y0 = 600_000.0, 5_600_000.0
#: two 1.6 km scenes side by side (160 x 160 px at 10 m); the seam is at X0 + 1600
SCENES = {"west": X0, "east": X0 + 1600}
SIDE = 160
CHIP = 28
#: Slack for "entirely inside": AOI vertices move ~1e-9 m in a CRS round trip.
TOL = 1e-6

#: The AOI in the rasters' CRS: a ring around a hole, a two-part field (one part across the
#: seam of the scenes) and a validation box.
OUTER = shapely.box(X0 + 100, Y0 - 1500, X0 + 1300, Y0 - 100)
HOLE = shapely.box(X0 + 450, Y0 - 1150, X0 + 950, Y0 - 450)
RING = shapely.MultiPolygon([OUTER.difference(HOLE)])
PARTS = shapely.MultiPolygon(
    [
        shapely.box(X0 + 1450, Y0 - 700, X0 + 2300, Y0 - 150),
        shapely.Polygon([(X0 + 1900, Y0 - 1550), (X0 + 3100, Y0 - 1550), (X0 + 3100, Y0 - 850)]),
    ]
)
VAL = shapely.MultiPolygon([shapely.box(X0 + 2500, Y0 - 650, X0 + 3100, Y0 - 100)])
POLYGONS = {"ring": (RING, "train"), "parts": (PARTS, "train"), "val": (VAL, "val")}
#: The AOI files QGIS writes: geographic, and a projected CRS other than the rasters'.
AOI_CRS = {"aoi_4326.gpkg": "EPSG:4326", "aoi_3857.gpkg": "EPSG:3857"}
#: A query point in the ring's western side.
QUERY = (X0 + 275.0, Y0 - 800.0)


@pytest.fixture(scope="module")
def qgis() -> str:
    """QGIS's Python interpreter; skips the module when there is none."""
    python, reason = find_qgis_python()
    if python is None:
        pytest.skip(reason)
    return python


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qgis")


@pytest.fixture(scope="module")
def scenes(work: Path) -> dict[str, Path]:
    """The UTM GeoTIFFs, written by rasterio with the tiny backbone's bands."""
    rng = np.random.default_rng(0)
    paths = {}
    for name, left in SCENES.items():
        path = work / f"{name}.tif"
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=SIDE,
            height=SIDE,
            count=len(TINY_BANDS),
            dtype="uint16",
            crs=UTM,
            nodata=0,
            transform=from_origin(left, Y0, RES, RES),
        ) as dst:
            dst.write(rng.integers(300, 3000, (len(TINY_BANDS), SIDE, SIDE), dtype="uint16"))
            dst.descriptions = tuple(TINY_BANDS)
        paths[name] = path
    return paths


@pytest.fixture(scope="module")
def aois(qgis: str, work: Path) -> dict[str, Any]:
    """The AOI GeoPackages, written by QGIS's QgsVectorFileWriter, and QGIS's reading of them."""
    payload = {
        "source_crs": UTM,
        "polygons": [
            {"name": name, "split": split, "wkt": geometry.wkt}
            for name, (geometry, split) in POLYGONS.items()
        ],
        "files": [{"path": str(work / name), "crs": crs} for name, crs in AOI_CRS.items()],
    }
    return {
        Path(report["path"]).name: report for report in run_qgis(qgis, "write_aois.py", payload)
    }


@pytest.fixture(scope="module")
def dataset(scenes: dict[str, Path]) -> MultiBandGeoTIFF:
    return MultiBandGeoTIFF(list(scenes.values()))


def chip_box(query: tuple[slice, slice, slice]) -> shapely.Polygon:
    x, y, _ = query
    return shapely.box(x.start, y.start, x.stop, y.stop)


def assert_inside(boxes: list[shapely.Polygon], region: shapely.Geometry) -> None:
    """Every chip lies inside ``region`` and none overlaps the ring's hole."""
    assert boxes
    area = boxes[0].area
    for box in boxes:
        assert shapely.area(shapely.intersection(box, region)) >= area * (1 - TOL), box.bounds
        assert shapely.area(shapely.intersection(box, HOLE)) <= area * TOL, box.bounds


def parts_hit(boxes: list[shapely.Polygon], *geometries: shapely.Geometry) -> list[int]:
    """How many chip centres fall into each polygon part of the geometries."""
    parts = [part for geometry in geometries for part in geometry.geoms]
    return [sum(part.contains(box.centroid) for box in boxes) for part in parts]


# --- QGIS writes AOIs, geodino samples them -------------------------------------------------
@pytest.mark.parametrize("name", list(AOI_CRS))
def test_qgis_writes_the_aoi_as_drawn(aois: dict[str, Any], name: str) -> None:
    report = aois[name]
    assert report["valid"] and report["crs"] == AOI_CRS[name]
    assert report["features"] == 3 and report["types"] == ["MultiPolygon"]
    frame = gpd.read_file(report["path"])
    assert frame.crs == AOI_CRS[name]
    assert list(frame["name"]) == list(POLYGONS) and list(frame["split"]) == [
        split for _, split in POLYGONS.values()
    ]
    back = frame.to_crs(UTM).geometry
    for read, (drawn, _) in zip(back, POLYGONS.values(), strict=True):
        assert read.geom_type == "MultiPolygon" and len(read.geoms) == len(drawn.geoms)
        assert read.symmetric_difference(drawn).area < 1e-3  # m2: QGIS kept the vertices
    assert len(back.iloc[0].geoms[0].interiors) == 1  # the hole


@pytest.mark.parametrize("name", list(AOI_CRS))
def test_grid_chips_cover_every_part_and_stay_inside(
    aois: dict[str, Any], dataset: MultiBandGeoTIFF, name: str
) -> None:
    sampler = AOISampler(dataset, aois[name]["path"], CHIP, stride=CHIP)
    boxes = [chip_box(query) for query in sampler]
    assert_inside(boxes, shapely.union_all([RING, PARTS, VAL]))
    assert all(parts_hit(boxes, RING, PARTS, VAL))
    # the two scenes meet inside the first part: chips are drawn across the seam
    assert any(box.bounds[0] < X0 + 1600 < box.bounds[2] for box in boxes)


@pytest.mark.parametrize("name", list(AOI_CRS))
def test_random_chips_of_the_train_split_stay_inside(
    aois: dict[str, Any], dataset: MultiBandGeoTIFF, name: str
) -> None:
    sampler = AOISampler(
        dataset,
        aois[name]["path"],
        CHIP,
        length=300,
        query="split == 'train'",
        generator=torch.Generator().manual_seed(0),
    )
    boxes = [chip_box(query) for query in sampler]
    assert len(boxes) == 300
    assert_inside(boxes, shapely.union_all([RING, PARTS]))
    assert all(parts_hit(boxes, RING, PARTS))


def test_the_datamodule_draws_train_and_val_chips_from_their_polygons(
    aois: dict[str, Any], dataset: MultiBandGeoTIFF
) -> None:
    dm = GeoDINODataModule(
        dataset,
        aoi=aois["aoi_4326.gpkg"]["path"],
        aoi_query="split == 'train'",
        val_query="split == 'val'",
        chip_size=CHIP,
        val_length=8,
    )
    dm.setup_draws()
    assert dm.train_draw is not None and dm.val_draw is not None
    for draw, region, n in ((dm.train_draw, RING.union(PARTS), 40), (dm.val_draw, VAL, 8)):
        queries = [draw.sampler.sample(i) for i in range(n)]
        assert_inside([chip_box(q) for q in queries], region)
        sample = draw(0)
        assert sample["image"].shape == (len(TINY_BANDS), CHIP, CHIP)
        assert float(sample["bounds"][0]) == pytest.approx(queries[0][0].start, abs=1.0)


# --- QGIS opens what geodino writes ---------------------------------------------------------
def geodino(*arguments: str | Path) -> None:
    assert main([str(a) for a in arguments]) == 0


#: The vector formats geodino writes and what its tables are called here.
TABLES = ("gpkg", "fgb", "parquet")


@pytest.fixture(scope="module")
def outputs(
    tiny_export: Path, scenes: dict[str, Path], aois: dict[str, Any], work: Path
) -> dict[str, Path]:
    """Every file geodino writes, from real CLI runs on the scenes and QGIS's AOI."""
    out = work / "outputs"
    aoi = aois["aoi_4326.gpkg"]["path"]
    west, both = scenes["west"], (scenes["west"], scenes["east"])
    chip = ("--chip_size", CHIP)
    geodino("embed", tiny_export, west, "--aoi", aoi, "--out", out / "emb.tif", *chip)
    geodino("embed", tiny_export, west, "--aoi", aoi, "--out", out / "pca.tif", "--pca", 3, *chip)
    for extension in TABLES:
        table = out / f"chips.{extension}"
        geodino("embed", tiny_export, *both, "--aoi", aoi, "--out", table, *chip)
    x, y = QUERY
    query = ("--x", x, "--y", y, "--top_k", 5)
    geodino(
        "similar",
        out / "emb.tif",
        *query,
        "--out",
        out / "sim.tif",
        "--matches",
        out / "matches.gpkg",
    )
    geodino("maps", tiny_export, west, "--aoi", aoi, "--out", out / "maps", *chip)
    return {
        "emb": out / "emb.tif",
        "pca": out / "pca.tif",
        "sim": out / "sim.tif",
        "pca_map": out / "maps" / "pca_map.tif",
        "matches": out / "matches.gpkg",
        **{extension: out / f"chips.{extension}" for extension in TABLES},
    }


@pytest.fixture(scope="module")
def opened(qgis: str, outputs: dict[str, Path]) -> dict[str, Any]:
    """What QGIS sees in each output, by output name."""
    rasters = ["emb", "pca", "sim", "pca_map"]
    payload = {
        "rasters": [str(outputs[k]) for k in rasters],
        "vectors": [str(p) for k, p in outputs.items() if k not in rasters],
    }
    report = run_qgis(qgis, "open_layers.py", payload)
    seen = {**report["rasters"], **report["vectors"]}
    return {
        "versions": report["versions"],
        **{key: seen[str(path)] for key, path in outputs.items()},
    }


@pytest.mark.parametrize(
    ("key", "bands", "renderer"),
    [
        ("emb", 32, "multibandcolor"),
        ("pca", 3, "multibandcolor"),
        ("sim", 1, "singlebandgray"),
        ("pca_map", 3, "multibandcolor"),
    ],
)
def test_qgis_opens_the_rasters_on_their_grid_and_styled(
    opened: dict[str, Any], outputs: dict[str, Path], key: str, bands: int, renderer: str
) -> None:
    layer = opened[key]
    assert layer["valid"] and layer["gdal_messages"] == [], layer
    with rasterio.open(outputs[key]) as src:
        assert layer["crs"] == f"EPSG:{src.crs.to_epsg()}" == UTM
        assert layer["extent"] == pytest.approx(list(src.bounds), abs=1e-6)
        assert layer["size"] == [src.height, src.width]
        assert layer["bands"] == src.count == bands
        # QGIS names a band "Band 01: <description>": the file's band descriptions
        for name, description in zip(layer["band_names"], src.descriptions, strict=True):
            assert description and name.endswith(f": {description}")
    # the rasters lie over the AOI, within one 140 m patch of its bounds
    left, top = layer["extent"][0], layer["extent"][3]
    assert left <= X0 + 100 < left + 140 and top - 140 < Y0 - 100 <= top
    # styled at once: a colour image of the first three bands, stretched over their values
    assert layer["renderer"] == renderer
    if renderer == "multibandcolor":
        low, high = layer["red_stretch"]
        assert layer["rgb"] == [1, 2, 3] and np.isfinite([low, high]).all() and low < high
    # how it was made, in the layer properties
    assert layer["metadata_keys"] == [
        "geodino_version",
        "geodino_model",
        "geodino_weights",
        "chip_size",
        "date",
    ]


@pytest.mark.parametrize("key", [*TABLES, "matches"])
def test_qgis_opens_the_vector_tables(
    opened: dict[str, Any], outputs: dict[str, Path], key: str
) -> None:
    layer = opened[key]
    if not layer["driver_available"]:
        # GeoParquet needs GDAL >= 3.8 built with Arrow; Debian bookworm's QGIS has GDAL 3.6
        assert not layer["valid"] and layer["gdal_error"]
        versions = opened["versions"]
        pytest.skip(
            f"QGIS {versions['qgis']} (GDAL {versions['gdal']}) has no {layer['driver']} "
            f"driver and reports {outputs[key].name} invalid: {layer['gdal_error']}"
        )
    # opened without a warning in QGIS's log (GDAL 3.6 warns on GeoPackage 1.4 files)
    assert layer["valid"] and layer["gdal_messages"] == [], layer
    frame = gpd.read_file(outputs[key])
    assert layer["crs"] == f"EPSG:{frame.crs.to_epsg()}" == UTM
    assert layer["features"] == len(frame) > 0
    assert layer["extent"] == pytest.approx(list(frame.total_bounds), abs=1e-6)
    assert layer["geometry"] in ("Polygon", "MultiPolygon")
    embedding = [f"emb_{i:03d}" for i in range(32)]
    assert set(frame.columns) - {"geometry"} <= set(layer["fields"])
    assert set(embedding) <= set(layer["fields"])
    if key == "gpkg":  # the layer's description, in QGIS's layer properties
        assert "vit_small_patch14_reg4_dinov2" in layer["abstract"]


def test_the_chip_table_covers_both_scenes_over_the_aoi(outputs: dict[str, Path]) -> None:
    frame = gpd.read_file(outputs["gpkg"])
    assert set(frame["raster"].map(lambda p: Path(p).stem)) == set(SCENES)
    assert frame.geometry.intersects(shapely.union_all([RING, PARTS, VAL])).all()


# --- geodino in QGIS: the Processing provider ------------------------------------------------
@pytest.fixture(scope="module")
def processing_runs(
    qgis: str, tiny_export: Path, scenes: dict[str, Path], aois: dict[str, Any], work: Path
) -> dict[str, Any]:
    """The plugin, installed from its ZIP, run headless by processing.runAndLoadResults."""
    out = work / "processing"
    out.mkdir()
    archive = work / "geodino_processing.zip"
    script = ROOT / "scripts" / "qgis_plugin_zip.py"
    subprocess.run([sys.executable, str(script), str(archive)], check=True, timeout=60)
    plugins = work / "plugins"
    with zipfile.ZipFile(archive) as opened:
        assert {Path(name).parts[0] for name in opened.namelist()} == {"geodino_processing"}
        opened.extractall(plugins)
    payload = {
        "plugins": str(plugins),
        "command": sys.executable,
        "scene": str(scenes["west"]),
        "aoi": aois["aoi_4326.gpkg"]["path"],
        "export": str(tiny_export),
        "out": str(out),
        "point": [*QUERY, UTM],
        "chips": "chips.gpkg",
    }
    return {"out": out, **run_qgis(qgis, "run_processing.py", payload)}


def test_the_provider_registers_three_algorithms(processing_runs: dict[str, Any]) -> None:
    assert processing_runs["algorithms"] == ["geodino:embed", "geodino:maps", "geodino:similar"]
    assert processing_runs["setting"] == ""  # default: geodino on PATH
    assert processing_runs["unloaded"]


def test_embed_writes_the_cog_and_the_geopackage_and_loads_them(
    processing_runs: dict[str, Any], outputs: dict[str, Path]
) -> None:
    run = processing_runs["embed"]
    assert "exception" not in run, run
    out = processing_runs["out"]
    cog, chips = out / "emb.tif", out / "chips.gpkg"
    assert run["results"] == {"OUTPUT": str(cog), "CHIPS": str(chips)}
    # one CLI run per output; their progress bars became Processing progress, up to the end
    assert len(run["commands"]) == 2 and all("--aoi" in c for c in run["commands"])
    assert len(run["progress"]) > 4 and max(run["progress"]) == 100
    layers = {layer["kind"]: layer for layer in run["layers"]}
    assert layers["raster"]["valid"] and layers["raster"]["source"] == str(cog)
    assert layers["raster"]["bands"] == 32 and layers["raster"]["crs"] == UTM
    vector = layers["vector"]
    assert vector["valid"] and vector["source"].split("|")[0] == str(chips)
    assert vector["features"] == len(gpd.read_file(chips)) > 0 and "emb_031" in vector["fields"]
    with rasterio.open(cog) as through_qgis, rasterio.open(outputs["emb"]) as direct:
        assert through_qgis.profile | {"nodata": 0} == direct.profile | {"nodata": 0}
        assert np.isnan(through_qgis.nodata) and np.isnan(direct.nodata)
        np.testing.assert_allclose(through_qgis.read(), direct.read(), rtol=1e-5, atol=1e-6)


def test_similar_and_maps_load_their_outputs(processing_runs: dict[str, Any]) -> None:
    similar, maps = processing_runs["similar"], processing_runs["maps"]
    assert "exception" not in similar and "exception" not in maps, (similar, maps)
    kinds = {layer["kind"]: layer for layer in similar["layers"]}
    assert kinds["raster"]["valid"] and kinds["raster"]["bands"] == 1
    assert kinds["vector"]["valid"] and kinds["vector"]["features"] == 5
    assert kinds["vector"]["crs"] == kinds["raster"]["crs"] == UTM
    (pca,) = maps["layers"]
    assert pca["valid"] and pca["bands"] == 3 and pca["renderer"] == "multibandcolor"
    assert pca["source"] == str(processing_runs["out"] / "maps" / "pca_map.tif")


def test_a_failing_cli_reports_its_message_not_a_traceback(
    processing_runs: dict[str, Any],
) -> None:
    run = processing_runs["missing_export"]
    missing = str(processing_runs["out"] / "no_such_export")
    assert run["exception"].startswith("geodino embed: error: ")
    assert missing in run["exception"] and "Traceback" not in run["exception"]
    assert run["errors"] == [run["exception"]]
    assert not run["layers"] and not (processing_runs["out"] / "never.tif").exists()


def test_a_python_without_geodino_fails_with_the_last_line_not_a_traceback(
    processing_runs: dict[str, Any],
) -> None:
    run = processing_runs["python_without_geodino"]
    assert run["exception"].startswith("geodino failed (exit status 1): ")
    assert "No module named" in run["exception"] and "Traceback" not in run["exception"]
    assert run["errors"] == [run["exception"]] and not run["layers"]
    # its AOI, the second layer of a GeoPackage, went to the command as a file of its own
    passed = processing_runs["aoi_passed"]
    assert passed["layers"] == 1 and passed["names"] == ["ring"]
    assert not passed["path"].endswith("layers.gpkg")


def test_cancel_and_a_wrong_geodino_setting_stop_with_a_message(
    processing_runs: dict[str, Any],
) -> None:
    # canceled while the command ran (at its first progress report): the process is stopped
    canceled = processing_runs["canceled"]
    assert canceled["exception"] == "geodino embed was canceled."
    assert len(canceled["commands"]) == 1 and canceled["progress"] == [0]
    assert not canceled["layers"] and not (processing_runs["out"] / "canceled.tif").exists()
    wrong = processing_runs["not_a_program"]
    assert (
        wrong["exception"].startswith("cannot start ") and "not_geodino.txt" in wrong["exception"]
    )
    assert "Settings > Options > Processing > Providers > geodino" in wrong["exception"]
