"""A clean run prints what the user needs: no INFO chatter of rasterio's merge (it logs every
file it skips for a chip that only touches it), no loader warning about more workers than
cores, none of Lightning's adverts or notices about its own packaging; checked on the output
of a real short ``geodino fit`` and a real ``geodino knn``."""

import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import yaml
from rasterio.transform import from_origin
from shapely.geometry import Point

from geodino.datamodules import available_cpus

ROOT = Path(__file__).resolve().parents[1]
NOISE = (
    "Skipping source",
    "suggested max number of worker",
    "rasterio",
    "args parameter",
    # Lightning's adverts and notices about its own packaging and internals
    "Tip:",
    "tensorboardX",
    "LeafSpec",
    "Total length of `list` across ranks is zero",
    "will override existing callbacks",
    # files left open at exit closed by GDAL after Python's teardown
    "Error in sys.excepthook",
    "Original exception was",
)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "geodino", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def write_tiles(root: Path) -> Path:
    """Two 4-band tiles side by side: chips at their common edge touch the other tile."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        with rasterio.open(
            root / f"tile{i}.tif",
            "w",
            driver="GTiff",
            width=56,
            height=56,
            count=4,
            dtype="uint16",
            crs="EPSG:32631",
            nodata=0,
            transform=from_origin(600_000 + i * 560, 5_000_000, 10, 10),
        ) as dst:
            dst.write(rng.integers(500, 3000, (4, 56, 56), dtype="uint16"))
            dst.descriptions = ("B02", "B03", "B04", "B08")
    return root


def test_knn_over_touching_tiles_prints_no_merge_chatter(tiny_export: Path, tmp_path: Path) -> None:
    tiles = write_tiles(tmp_path / "tiles")
    rows = []
    for i, x in enumerate((600_140, 600_280, 600_420, 600_700, 600_840, 600_980)):
        for j, y in enumerate((4_999_860, 4_999_720, 4_999_580)):
            rows.append({"label": f"c{i % 2}", "geometry": Point(x, y), "group_id": f"{i}{j}"})
    labels = tmp_path / "points.gpkg"
    gpd.GeoDataFrame(rows, crs="EPSG:32631").to_file(labels)
    out = run(
        "knn",
        str(tiny_export),
        str(labels),
        "--rasters",
        str(tiles),
        "--chip_size",
        "28",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for noise in NOISE:
        assert noise not in out.stderr, out.stderr[-3000:]


def test_short_fit_prints_no_merge_chatter_nor_worker_warning(tmp_path: Path) -> None:
    tiles = write_tiles(tmp_path / "tiles")
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["trainer"].update(max_steps=2, default_root_dir=str(tmp_path / "runs"))
    model = config["model"]["init_args"]
    model.update(in_chans=4, head_out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16)
    model["model_kwargs"].update(img_size=28, embed_dim=32, depth=1)
    data = config["data"]["init_args"]
    data.update(
        dataset={
            "class_path": "geodino.datasets.MultiBandGeoTIFF",
            "init_args": {"paths": str(tiles)},
        },
        aoi=None,
        aoi_query=None,
        chip_size=28,
        batch_size=4,
        num_workers=8,  # more than any test machine's cores
        statistics_chips=16,
    )
    data["multicrop"].update(global_crops_size=28, local_crops_size=14, local_crops_number=2)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = run("fit", "--config", str(path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for noise in NOISE:
        assert noise not in out.stderr, out.stderr[-3000:]
    # geodino's own messages still reach the user, each once
    if available_cpus() < 8:
        assert out.stderr.count("num_workers 8 capped at the") == 1, out.stderr[-3000:]
    assert out.stderr.count("Trainer.fit` stopped") == 1, out.stderr[-3000:]
