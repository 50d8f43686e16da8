"""STAC catalogs of real COGs for the tests: per-band assets at 10 and 20 m in two UTM zones.

The COGs are written by rasterio (GDAL's COG driver) with real CRSs and nodata; the catalog is
written with pyarrow in the stac-geoparquet layout (one row per item, properties as columns,
an ``assets`` struct), or as an ItemCollection JSON. :func:`write_items` takes a function
mapping each local file to its href, so that one set of files gives a local catalog and the
same catalog pointing at a server (``s3://``, ``http://``).
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin

#: Bands of the test items: (asset key, eo:bands name, common name, resolution in m).
BANDS = (
    ("blue", "B02", "blue", 10),
    ("red", "B04", "red", 10),
    ("nir", "B08", "nir", 10),
    ("swir16", "B11", "swir16", 20),
)
#: Side of a 10 m band in pixels (a 20 m band has half).
SIDE = 128


@dataclass
class Scene:
    """One item: its id, CRS, upper-left corner, date, cloud cover and band files."""

    id: str
    epsg: int
    origin: tuple[float, float]
    date: datetime
    cloud: float
    files: dict[str, Path] = field(default_factory=dict)


def write_scene(root: Path, scene: Scene, seed: int, side: int = SIDE) -> Scene:
    """Write a scene's band COGs (uint16, nodata 0, a nodata strip on the west edge)."""
    rng = np.random.default_rng(seed)
    folder = root / scene.id
    folder.mkdir(parents=True, exist_ok=True)
    for key, name, _, res in BANDS:
        n = side * 10 // res
        # blocks of 4x4 px of one value: bilinear 20 -> 10 m resampling stays exact inside
        coarse = rng.integers(100, 5000, size=(n // 4, n // 4)).astype("uint16")
        data = coarse.repeat(4, 0).repeat(4, 1)
        data[:, : n // 16] = 0
        path = folder / f"{name}.tif"
        profile = {
            "driver": "COG",
            "height": n,
            "width": n,
            "count": 1,
            "dtype": "uint16",
            "crs": f"EPSG:{scene.epsg}",
            "nodata": 0,
            "transform": from_origin(*scene.origin, res, res),
            "blocksize": 32,
            "compress": "deflate",
        }
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data[None])
        scene.files[key] = path
    return scene


def two_zone_scenes(root: Path, side: int = SIDE) -> list[Scene]:
    """Three items: two overlapping in UTM 31N (different dates/clouds), one in UTM 32N.

    The 32N item lies just east of 6 degrees E, beside the 31N items once warped.
    """
    to32 = Transformer.from_crs("EPSG:32631", "EPSG:32632", always_xy=True)
    x, y = to32.transform(735000.0 + side * 10 + 200, 4985000.0)
    scenes = [
        Scene("S2A_31_a", 32631, (735000.0, 4985000.0), datetime(2024, 6, 1, tzinfo=UTC), 5.0),
        Scene(
            "S2B_31_b",
            32631,
            (735000.0 + side * 5, 4985000.0 - side * 5),
            datetime(2024, 7, 1, tzinfo=UTC),
            40.0,
        ),
        Scene(
            "S2A_32_c",
            32632,
            (round(x / 20) * 20, round(y / 20) * 20),
            datetime(2024, 6, 15, tzinfo=UTC),
            10.0,
        ),
    ]
    return [write_scene(root, s, i, side) for i, s in enumerate(scenes)]


def item(scene: Scene, href: Callable[[Path], str]) -> dict[str, Any]:
    """The STAC item of a scene (stac-geoparquet row: properties flattened)."""
    assets = {}
    for key, name, common, res in BANDS:
        with rasterio.open(scene.files[key]) as src:
            transform, shape = list(src.transform)[:6], [src.height, src.width]
            bounds = src.bounds
        assets[key] = {
            "href": href(scene.files[key]),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "eo:bands": [{"name": name, "common_name": common}],
            "raster:bands": [{"nodata": 0.0, "data_type": "uint16", "spatial_resolution": res}],
            "proj:shape": shape,
            "proj:transform": transform,
        }
    assets["thumbnail"] = {"href": href(scene.files["red"]) + ".png", "roles": ["thumbnail"]}
    to_lonlat = Transformer.from_crs(f"EPSG:{scene.epsg}", "EPSG:4326", always_xy=True)
    west, south = to_lonlat.transform(bounds.left, bounds.bottom)
    east, north = to_lonlat.transform(bounds.right, bounds.top)
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [],
        "id": scene.id,
        "bbox": {"xmin": west, "ymin": south, "xmax": east, "ymax": north},
        "collection": "sentinel-2-l2a",
        "datetime": scene.date,
        "eo:cloud_cover": scene.cloud,
        "platform": "sentinel-2a" if scene.id.startswith("S2A") else "sentinel-2b",
        "proj:code": f"EPSG:{scene.epsg}",
        "assets": assets,
    }


def features(scenes: list[Scene], href: Callable[[Path], str] = str) -> list[dict[str, Any]]:
    """The scenes' items as STAC API / ItemCollection JSON features."""
    out = []
    for row in (item(s, href) for s in scenes):
        props = {
            k: (v.isoformat().replace("+00:00", "Z") if isinstance(v, datetime) else v)
            for k, v in row.items()
            if k not in ("type", "stac_version", "stac_extensions", "id", "bbox", "assets")
            and k != "collection"
        }
        b = row["bbox"]
        w, s, e, n = b["xmin"], b["ymin"], b["xmax"], b["ymax"]
        out.append(
            {
                "type": "Feature",
                "stac_version": "1.1.0",
                "stac_extensions": [],
                "id": row["id"],
                "collection": row["collection"],
                "bbox": [w, s, e, n],
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]],
                },
                "properties": props,
                "assets": row["assets"],
                "links": [],
            }
        )
    return out


def write_items(scenes: list[Scene], path: Path, href: Callable[[Path], str] = str) -> Path:
    """Write the scenes' items as STAC-GeoParquet (``.parquet``) or ItemCollection JSON."""
    if path.suffix == ".json":
        document = {"type": "FeatureCollection", "features": features(scenes, href)}
        path.write_text(json.dumps(document))
    else:
        pq.write_table(pa.Table.from_pylist([item(s, href) for s in scenes]), path)
    return path
