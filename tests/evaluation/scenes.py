"""Labelled GeoTIFF chips and scenes the evaluation tests share, written with rasterio."""

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from shapely.geometry import Point

#: Mean reflectance of each class in the four bands (B02, B03, B04, B08).
CLASS_MEANS = {
    "water": [600, 500, 300, 200],
    "crop": [500, 800, 400, 3500],
    "urban": [1500, 1500, 1600, 1800],
}


def write_tif(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=data.shape[2],
            height=data.shape[1],
            count=data.shape[0],
            dtype="uint16",
        ) as dst:
            dst.write(data)


def chip(rng: np.random.Generator, name: str, size: int = 28) -> np.ndarray:
    mean = np.asarray(CLASS_MEANS[name], dtype=float)[:, None, None]
    return (mean * rng.uniform(0.8, 1.2) + rng.normal(0, 120, (4, size, size))).clip(1, None)


def write_labelled_scene(
    tmp_path: Path, descriptions: tuple[str | None, ...] = ("B02", "B03", "B04", "B08")
) -> tuple[Path, gpd.GeoDataFrame]:
    """A 4-band UTM GeoTIFF with three class strips and labelled points in six fields."""
    rng = np.random.default_rng(1)
    size = 168
    data = np.zeros((4, size, size))
    names = list(CLASS_MEANS)
    for j, name in enumerate(names):
        data[:, :, j * 56 : (j + 1) * 56] = chip(rng, name, size)[:, :, :56]
    path = tmp_path / "scene.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=4,
        dtype="uint16",
        crs="EPSG:32631",
        nodata=0,
        transform=from_origin(600_000, 4_500_000, 10, 10),
    ) as dst:
        dst.write(data.clip(1, None).astype("uint16"))
        dst.descriptions = descriptions
    rows = []
    for j, name in enumerate(names):
        for field in range(2):  # two fields (groups) per class, one above the other
            for k in range(4):
                x = 600_000 + (j * 56 + 14 + 9 * k) * 10
                y = 4_500_000 - (14 + field * 84 + 11 * k) * 10
                rows.append({"label": name, "group_id": f"{name}-{field}", "geometry": Point(x, y)})
    gdf = gpd.GeoDataFrame(rows, crs="EPSG:32631")
    # every other feature is a small field polygon: its chip is centred on its inner point
    gdf.loc[::2, "geometry"] = gdf.geometry[::2].buffer(25.0)
    return path, gdf.to_crs("EPSG:4326")
