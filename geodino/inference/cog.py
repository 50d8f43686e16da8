"""Cloud-Optimised GeoTIFFs of embeddings and similarities."""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine


def write_cog(
    path: Path,
    data: np.ndarray,
    crs: Any,
    transform: Affine,
    names: Sequence[str],
    tags: dict[str, Any],
) -> Path:
    """Write a float32 Cloud-Optimised GeoTIFF (DEFLATE, overviews, NaN as nodata).

    Args:
        path: the file.
        data: (bands, H, W) values.
        crs: its CRS.
        transform: its transform.
        names: band descriptions.
        tags: metadata tags (non-strings stored as JSON).

    Returns:
        the path.
    """
    from rasterio.shutil import copy as copy_raster

    tmp = path.with_name(path.name + ".tmp.tif")
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": len(data),
        "dtype": "float32",
        "crs": crs,
        "transform": transform,
        "nodata": float("nan"),
    }
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data.astype(np.float32))
        dst.descriptions = tuple(names)
        dst.update_tags(
            **{k: json.dumps(v) if not isinstance(v, str) else v for k, v in tags.items()}
        )
    copy_raster(
        tmp,
        path,
        driver="COG",
        COMPRESS="DEFLATE",
        PREDICTOR="YES",
        BLOCKSIZE=256,
        OVERVIEWS="AUTO",
        RESAMPLING="AVERAGE",
    )
    tmp.unlink()
    return path
