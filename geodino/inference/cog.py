"""Cloud-Optimised GeoTIFFs of embeddings, principal components and similarities.

Each file carries what a GIS needs to style it at once: band descriptions, GDAL band
statistics (``STATISTICS_MINIMUM/MAXIMUM/MEAN/STDDEV``, which QGIS reads for its default
min/max stretch instead of scanning the file), overviews, and for three principal components
the red/green/blue colour interpretation, so that the file opens as a colour image.
"""

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling

#: GDAL's block cache (bytes) while an output is assembled and translated to a COG.
COG_CACHE_BYTES = 64 * 2**20
#: Side of a COG's tiles in pixels; overviews are built until the smallest fits one tile.
COG_BLOCK = 256
#: Rows per strip of a staged GeoTIFF written whole (:func:`write_cog`).
STAGING_ROWS = 64


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


def staging_profile(
    width: int,
    height: int,
    count: int,
    dtype: str,
    crs: Any,
    transform: Affine,
    rgb: bool = False,
    rows_per_strip: int | None = None,
) -> dict[str, Any]:
    """Profile of the GeoTIFF an output is assembled in before :func:`finish_cog`.

    Floating-point data is float32 with NaN as nodata (blocks never written read as NaN);
    uint8 data has no nodata.

    Args:
        width: pixels per row.
        height: rows.
        count: bands.
        dtype: ``float32`` or ``uint8``.
        crs: its CRS.
        transform: its transform.
        rgb: three bands to be marked red, green and blue.
        rows_per_strip: rows per strip, one strip per band (``INTERLEAVE=BAND``), so that a
            window of all bands touches one strip of each, a band reads whole and GDAL builds
            the overviews band by band; None: pixel-interleaved strips.

    Returns:
        the rasterio profile.
    """
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": None if dtype == "uint8" else float("nan"),
    }
    if rows_per_strip is not None:
        profile |= {"blockysize": rows_per_strip, "interleave": "band"}
    if rgb:
        profile["photometric"] = "RGB"
    return profile


def cache_bytes(minimum: int = 0) -> int:
    """GDAL's block cache while an output is assembled and translated.

    Args:
        minimum: bytes the writer needs cached at once (e.g. a row of windows).

    Returns:
        :data:`COG_CACHE_BYTES`, or ``minimum`` where that is larger.
    """
    return max(COG_CACHE_BYTES, minimum)


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
    if rgb and len(data) != 3:
        raise ValueError(f"an RGB GeoTIFF has three bands, not {len(data)} ({path}).")
    if data.dtype != np.uint8:
        data = data.astype(np.float32)
    staged = path.with_name(path.name + ".tmp.tif")
    height = data.shape[1]
    profile = staging_profile(
        data.shape[2],
        height,
        len(data),
        data.dtype.name,
        crs,
        transform,
        rgb,
        rows_per_strip=min(height, STAGING_ROWS),
    )
    with rasterio.open(staged, "w", **profile) as dst:
        dst.write(data)
    return finish_cog(staged, path, names, tags, rgb)


def overview_factors(width: int, height: int, block: int = COG_BLOCK) -> list[int]:
    """The overview levels GDAL's COG driver builds with ``OVERVIEWS=AUTO``.

    Halving (rounding down, as the driver counts) until neither side exceeds one tile.

    Args:
        width: pixels per row.
        height: rows.
        block: the tile side.

    Returns:
        the decimation factors, ``[2, 4, ...]``; empty when the raster fits one tile.
    """
    factors: list[int] = []
    while width > block or height > block:
        width, height = width // 2, height // 2
        factors.append(2 ** (len(factors) + 1))
    return factors


def finish_cog(
    staged: Path,
    path: Path,
    names: Sequence[str],
    tags: Mapping[str, Any],
    rgb: bool = False,
    advance: Callable[[int], object] | None = None,
) -> Path:
    """Describe an assembled GeoTIFF and translate it to a Cloud-Optimised GeoTIFF.

    Band statistics are computed one band at a time from the file, the overviews are built
    in it (average, NaN ignored; band by band where ``staged`` is band-interleaved, as
    :func:`staging_profile` lays it out with ``rows_per_strip``), and GDAL copies it into
    the COG, band-interleaved (``INTERLEAVE=BAND``: a tile holds one band, so a viewer
    showing three bands of an embedding reads three tiles, not all of them), or
    pixel-interleaved for the three bands of a colour image. GDAL's block cache is capped
    at :func:`cache_bytes` (GDAL's default is 5 % of the machine's memory), so memory stays
    flat whatever the raster's size.

    Why not the COG driver's own overviews and default layout: it builds missing overviews
    from all bands at once and writes pixel-interleaved tiles of all bands (100 MB per
    256-px tile at 384 float32 bands), so with a capped cache each block is written many
    times over (a 384-band grid of 586 x 586 pixels was not written after 45 minutes).
    Built and copied band by band, the same file takes seconds (docs/performance.md).
    ``staged`` is removed.

    Args:
        staged: the assembled GeoTIFF (see :func:`staging_profile`).
        path: the COG to write.
        names: band descriptions.
        tags: metadata tags (non-strings stored as JSON).
        rgb: mark the three bands as red, green and blue.
        advance: called with 1 after each band's statistics, after the overviews and
            after the translation (a progress bar's ``update``).

    Returns:
        the path.

    Raises:
        ValueError: if ``rgb`` is asked for another number of bands than three.
    """
    from rasterio.shutil import copy as copy_raster

    step = advance or (lambda n: None)
    with rasterio.Env(GDAL_CACHEMAX=cache_bytes()), rasterio.open(staged, "r+") as dst:
        if rgb and dst.count != 3:
            raise ValueError(f"an RGB GeoTIFF has three bands, not {dst.count} ({path}).")
        dst.descriptions = tuple(names)
        dst.update_tags(
            **{k: json.dumps(v) if not isinstance(v, str) else v for k, v in tags.items()}
        )
        for index in range(1, dst.count + 1):
            statistics = band_statistics(dst.read(index))
            if statistics:
                dst.update_tags(index, **statistics)
            step(1)
        if rgb:
            dst.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        factors = overview_factors(dst.width, dst.height)
        if factors:
            dst.build_overviews(factors, Resampling.average)
        step(1)
    with rasterio.Env(GDAL_CACHEMAX=cache_bytes()):
        copy_raster(
            staged,
            path,
            driver="COG",
            COMPRESS="DEFLATE",
            PREDICTOR="YES",
            BLOCKSIZE=COG_BLOCK,
            INTERLEAVE="PIXEL" if rgb else "BAND",
            OVERVIEWS="FORCE_USE_EXISTING",
        )
    staged.unlink()
    step(1)
    return path
