"""Cloud-Optimised GeoTIFFs of embeddings, principal components and similarities.

Each file carries what a GIS needs to style it at once: band descriptions, GDAL band
statistics (``STATISTICS_MINIMUM/MAXIMUM/MEAN/STDDEV``, which QGIS reads for its default
min/max stretch instead of scanning the file), overviews, and for three principal components
the red/green/blue colour interpretation, so that the file opens as a colour image.
"""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp


def band_statistics(band: np.ndarray) -> dict[str, str] | None:
    """GDAL's statistics metadata items of one band, NaN ignored.

    Args:
        band: (H, W) values.

    Returns:
        ``STATISTICS_MINIMUM``, ``STATISTICS_MAXIMUM``, ``STATISTICS_MEAN``,
        ``STATISTICS_STDDEV`` and ``STATISTICS_VALID_PERCENT`` as text, or None when the band
        holds no finite value.
    """
    values = band[np.isfinite(band)].astype(np.float64)
    if not values.size:
        return None
    return {
        "STATISTICS_MINIMUM": repr(float(values.min())),
        "STATISTICS_MAXIMUM": repr(float(values.max())),
        "STATISTICS_MEAN": repr(float(values.mean())),
        "STATISTICS_STDDEV": repr(float(values.std())),
        "STATISTICS_VALID_PERCENT": repr(100.0 * values.size / band.size),
    }


def write_cog(
    path: Path,
    data: np.ndarray,
    crs: Any,
    transform: Affine,
    names: Sequence[str],
    tags: Mapping[str, Any],
    rgb: bool = False,
) -> Path:
    """Write a Cloud-Optimised GeoTIFF (DEFLATE, overviews, statistics, band descriptions).

    Floating-point data is written as float32 with NaN as nodata; uint8 data as it is,
    without nodata.

    Args:
        path: the file.
        data: (bands, H, W) values.
        crs: its CRS.
        transform: its transform.
        names: band descriptions.
        tags: metadata tags (non-strings stored as JSON).
        rgb: mark the three bands as red, green and blue.

    Returns:
        the path.

    Raises:
        ValueError: if ``rgb`` is asked for another number of bands than three.
    """
    from rasterio.shutil import copy as copy_raster

    if rgb and len(data) != 3:
        raise ValueError(f"an RGB GeoTIFF has three bands, not {len(data)} ({path}).")
    if data.dtype != np.uint8:
        data = data.astype(np.float32)
    tmp = path.with_name(path.name + ".tmp.tif")
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": len(data),
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": None if data.dtype == np.uint8 else float("nan"),
    }
    if rgb:
        profile["photometric"] = "RGB"
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = tuple(names)
        dst.update_tags(
            **{k: json.dumps(v) if not isinstance(v, str) else v for k, v in tags.items()}
        )
        for index, band in enumerate(data, 1):
            statistics = band_statistics(band)
            if statistics:
                dst.update_tags(index, **statistics)
        if rgb:
            dst.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
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
