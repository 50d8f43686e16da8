"""The part of each raster to embed, on the raster's own patch grid, and its windows."""

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from affine import Affine
from geopandas import GeoDataFrame
from rasterio.windows import Window

from geodino.aoi import read_aoi
from geodino.bands import described_band_names
from geodino.errors import DataError

if TYPE_CHECKING:
    from geodino.export import PretrainedBackbone

log = logging.getLogger(__name__)

#: Fraction of a patch by which AOI bounds may cross a patch edge and still snap inside it.
_SNAP = 1e-6


@dataclass
class RasterRegion:
    """The part of a raster to embed, on the raster's patch grid.

    Args:
        path: the raster file.
        crs: its CRS.
        transform: its pixel-to-CRS transform.
        row: first pixel row of the region (a multiple of the patch size).
        col: first pixel column of the region (a multiple of the patch size).
        height: region height in patches.
        width: region width in patches.
        patch: patch side in pixels.
        mask: (height, width) bool, True for embedding pixels to keep (inside the AOI).
        label: what outputs name as the region's source (default: the path), e.g. ``item
            ID of CATALOG`` for a STAC item read through a VRT in memory.
    """

    path: Path
    crs: Any
    transform: Affine
    row: int
    col: int
    height: int
    width: int
    patch: int
    mask: np.ndarray
    label: str | None = None

    @property
    def source(self) -> str:
        """The region's source as outputs name it: its label, else its path."""
        return self.label or str(self.path)

    @property
    def out_transform(self) -> Affine:
        """Transform of the embedding grid.

        The raster's transform, moved to the region and scaled by the patch size.
        """
        return self.transform @ Affine.translation(self.col, self.row) @ Affine.scale(self.patch)

    def windows(self, chip: int) -> list[tuple[int, int, int, int]]:
        """Windows that cover the region, in patch units relative to it.

        Args:
            chip: window side in patches.

        Returns:
            ``(row, col, height, width)`` of each window overlapping the mask, row-major.
        """
        h, w = min(chip, self.height), min(chip, self.width)

        def starts(size: int, step: int) -> list[int]:
            out = list(range(0, size - step + 1, step))
            if out[-1] + step < size:
                out.append(size - step)  # the last window moves back inside the region
            return out

        return [
            (r, c, h, w)
            for r in starts(self.height, h)
            for c in starts(self.width, w)
            if self.mask[r : r + h, c : c + w].any()
        ]

    def polygon(self, window: tuple[int, int, int, int]) -> Any:
        """The window's footprint in the raster's CRS.

        Args:
            window: ``(row, col, height, width)`` in patch units.

        Returns:
            a shapely box.
        """
        from shapely.geometry import box

        r, c, h, w = window
        x0, y0 = self.out_transform @ (c, r)
        x1, y1 = self.out_transform @ (c + w, r + h)
        return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def plan_region(path: Path, patch: int, aoi: GeoDataFrame | None = None) -> RasterRegion | None:
    """The region of a raster to embed: all of it, or the AOI's bounds snapped to patches.

    Args:
        path: the raster.
        patch: patch side in pixels.
        aoi: AOI polygons (any CRS), or None for the whole raster.

    Returns:
        the region, or None when the AOI does not touch the raster.

    Raises:
        DataError: if the raster cannot be read, has no CRS or a rotated grid.
    """
    from rasterio.features import geometry_mask

    try:
        with rasterio.open(path) as src:
            crs, transform, height, width = src.crs, src.transform, src.height, src.width
    except rasterio.errors.RasterioIOError as error:
        raise DataError(f"raster {path} cannot be read ({error}); check the path.") from None
    if crs is None:
        raise DataError(
            f"raster {path} has no CRS; georeference it (QGIS: Raster > Projections > Assign "
            "Projection, or gdal_edit.py -a_srs) before embedding it."
        )
    if transform.b != 0 or transform.d != 0:
        raise DataError(
            f"raster {path} has a rotated grid ({transform}); warp it north-up first (gdalwarp)."
        )
    rows, cols = math.ceil(height / patch), math.ceil(width / patch)
    if aoi is None:
        return RasterRegion(
            path, crs, transform, 0, 0, rows, cols, patch, np.ones((rows, cols), dtype=bool)
        )
    import shapely
    from shapely.geometry import box

    shape = shapely.union_all(aoi.to_crs(crs).geometry.to_numpy())
    x0, y0 = transform @ (0, 0)
    x1, y1 = transform @ (width, height)
    inside = shape.intersection(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    if inside.is_empty or inside.area == 0:
        return None
    minx, miny, maxx, maxy = inside.bounds
    inverse = ~transform
    cs, rs = zip(*(inverse @ (x, y) for x in (minx, maxx) for y in (miny, maxy)), strict=True)
    # AOI vertices that went through a CRS round trip are off by ~1e-9 px: not a patch more
    r0 = max(0, math.floor(min(rs) / patch + _SNAP))
    c0 = max(0, math.floor(min(cs) / patch + _SNAP))
    r1 = min(rows, math.ceil(max(rs) / patch - _SNAP))
    c1 = min(cols, math.ceil(max(cs) / patch - _SNAP))
    region = RasterRegion(
        path,
        crs,
        transform,
        r0 * patch,
        c0 * patch,
        r1 - r0,
        c1 - c0,
        patch,
        np.ones((r1 - r0, c1 - c0), dtype=bool),
    )
    region.mask = geometry_mask(
        [inside],
        (region.height, region.width),
        region.out_transform,
        all_touched=True,
        invert=True,
    )
    return region


def read_window(src: Any, region: RasterRegion, window: tuple[int, int, int, int]) -> np.ndarray:
    """Raw pixels of a window as float32, nodata and pixels past the raster's edge as NaN.

    Args:
        src: the open rasterio dataset of ``region``.
        region: the region the window belongs to.
        window: ``(row, col, height, width)`` in patch units relative to the region.

    Returns:
        (C, H, W) float32 array.
    """
    p = region.patch
    r, c, h, w = window
    pixels = Window(region.col + c * p, region.row + r * p, w * p, h * p)
    past_edge = pixels.row_off + pixels.height > src.height or (
        pixels.col_off + pixels.width > src.width
    )
    fill = src.nodata if src.nodata is not None else np.nan
    data: np.ndarray = src.read(
        window=pixels, boundless=past_edge, fill_value=fill, out_dtype="float32"
    )
    if src.nodata is not None:
        data[data == np.float32(src.nodata)] = np.nan
    return data


def _raster_bands(src: Any) -> list[str] | None:
    return described_band_names(src.descriptions)


def _check_raster(backbone: "PretrainedBackbone", path: Path) -> None:
    try:
        with rasterio.open(path) as src:
            backbone.check_bands(_raster_bands(src), src.count, f"raster {path}")
    except rasterio.errors.RasterioIOError as error:
        raise DataError(f"raster {path} cannot be read ({error}); check the path.") from None


def for_rasters(
    backbone: "PretrainedBackbone", rasters: Sequence[str | Path]
) -> "PretrainedBackbone":
    """The backbone ready for the bands of the rasters (named by the first one's descriptions).

    A wavelength-aware backbone comes back restricted to those bands; a fixed-band one as it
    is (:func:`plan_regions` checks every raster against it).

    Args:
        backbone: the frozen backbone.
        rasters: the raster files.

    Returns:
        the backbone for the rasters' bands.

    Raises:
        DataError: if the first raster cannot be read or its bands do not fit.
    """
    if not rasters:
        return backbone
    path = Path(rasters[0])
    try:
        with rasterio.open(path) as src:
            return backbone.for_bands(_raster_bands(src), src.count, f"raster {path}")
    except rasterio.errors.RasterioIOError as error:
        raise DataError(f"raster {path} cannot be read ({error}); check the path.") from None


def plan_regions(
    backbone: "PretrainedBackbone", rasters: Sequence[str | Path], aoi: Any = None
) -> list[RasterRegion]:
    """Check the rasters' bands and plan the region of each inside the AOI.

    Args:
        backbone: the frozen backbone.
        rasters: the raster files.
        aoi: AOI file or GeoDataFrame, or None for whole rasters.

    Returns:
        one region per raster the AOI touches.

    Raises:
        DataError: for rasters with other bands than the backbone's, or an AOI that touches
            none of them.
    """
    if not rasters:
        raise DataError("no raster given; pass one or more GeoTIFFs to embed.")
    polygons = read_aoi(aoi) if aoi is not None else None
    regions, outside = [], []
    for path in map(Path, rasters):
        _check_raster(backbone, path)
        region = plan_region(path, backbone.patch_size, polygons)
        if region is None:
            outside.append(str(path))
        else:
            regions.append(region)
    if not regions:
        bounds = [round(v, 6) for v in polygons.total_bounds] if polygons is not None else []
        raise DataError(
            f"the AOI {aoi} (bounds {bounds} in {polygons.crs if polygons is not None else ''}) "
            f"lies outside every raster ({', '.join(outside)}); draw the AOI over the imagery "
            "or pass the rasters that cover it."
        )
    if outside:
        log.warning("the AOI does not touch %d rasters, not embedded: %s", len(outside), outside)
    return regions


def chip_pixels(backbone: "PretrainedBackbone", chip_size: int | None) -> int:
    """The window side: ``chip_size`` (default: the backbone's) floored to whole patches.

    Args:
        backbone: the frozen backbone.
        chip_size: the window side asked for, in pixels.

    Returns:
        the window side in pixels.

    Raises:
        DataError: if it is smaller than one patch.
    """
    p = backbone.patch_size
    size = chip_size or backbone.chip_size
    if size < p:
        raise DataError(f"chip_size {size} is smaller than the backbone's patch ({p} px).")
    return size // p * p


def point_in_crs(crs: Any, x: float, y: float, point_crs: Any) -> tuple[float, float]:
    """A point's coordinates in ``crs``.

    Args:
        crs: the CRS wanted.
        x: the point's x.
        y: the point's y.
        point_crs: the CRS the point is in (None: already ``crs``).

    Returns:
        ``(x, y)`` in ``crs``.
    """
    if point_crs is None:
        return x, y
    from pyproj import Transformer

    return Transformer.from_crs(point_crs, crs, always_xy=True).transform(x, y)
