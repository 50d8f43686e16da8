"""Chips inside areas of interest: AOI polygons from QGIS exports or GeoDataFrames."""

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import torch
from geopandas import GeoDataFrame
from pyproj import CRS
from torchgeo.datasets import GeoDataset
from torchgeo.samplers import GeoSampler, Units

from geodino.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Query = tuple[slice, slice, slice]


def read_aoi(
    aoi: str | Path | GeoDataFrame, crs: CRS | Any | None = None, query: str | None = None
) -> GeoDataFrame:
    """Read AOI polygons, repair them and put them in ``crs``.

    Args:
        aoi: a GeoPackage/GeoJSON/Shapefile path or a GeoDataFrame.
        crs: CRS to reproject to (default: keep the AOI's).
        query: pandas query selecting rows, e.g. ``"split == 'train'"``.

    Returns:
        the polygons (only Polygon/MultiPolygon parts), invalid ones repaired, empty ones
        dropped, with the original row order preserved.

    Raises:
        DataError: naming the file and the fix, for a missing file, no CRS, no polygons,
            a bad query.
    """
    name = str(aoi) if not isinstance(aoi, GeoDataFrame) else "the AOI GeoDataFrame"
    if isinstance(aoi, GeoDataFrame):
        gdf = aoi.copy()
    else:
        path = Path(aoi)
        if not path.is_file():
            raise DataError(f"AOI file {path} does not exist.")
        try:
            gdf = gpd.read_file(path)
        except Exception as error:
            raise DataError(
                f"AOI file {path} cannot be read as vector data ({error}); export it from QGIS "
                "as GeoPackage, GeoJSON or Shapefile."
            ) from None
    if gdf.crs is None:
        raise DataError(
            f"{name} has no CRS; set it in QGIS (Layer > Set CRS, then export again) or with "
            "gdf.set_crs('EPSG:4326')."
        )
    if query:
        try:
            gdf = gdf.query(query)
        except Exception as error:
            raise DataError(
                f"AOI query {query!r} failed on {name} ({error}); columns are "
                f"{[c for c in gdf.columns if c != 'geometry']}."
            ) from None
        if gdf.empty:
            raise DataError(f"AOI query {query!r} selects no polygon of {name}.")
    invalid = ~gdf.geometry.is_valid & ~gdf.geometry.isna()
    if invalid.any():
        log.warning("%s: repaired %d invalid geometries (shapely.make_valid)", name, int(invalid.sum()))
        gdf.loc[invalid, "geometry"] = shapely.make_valid(gdf.geometry[invalid].values)
    gdf["geometry"] = [_polygonal(g) for g in gdf.geometry]
    empty = gdf.geometry.isna() | gdf.geometry.is_empty
    if empty.any():
        log.warning("%s: dropped %d empty or non-polygon geometries", name, int(empty.sum()))
        gdf = gdf[~empty]
    if gdf.empty:
        raise DataError(
            f"{name} holds no polygons; draw the AOI as (multi)polygons, not points or lines."
        )
    if crs is not None:
        gdf = gdf.to_crs(crs)
    return gdf


def _polygonal(geometry: Any) -> Any:
    if geometry is None or geometry.is_empty:
        return None
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    parts = [g for g in getattr(geometry, "geoms", []) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else None


def _label(aoi: GeoDataFrame, row: int) -> str:
    name = aoi.iloc[row].get("name") if "name" in aoi.columns else None
    return f"polygon {row}" + (f" ({name})" if name is not None else "")


class AOISampler(GeoSampler):
    """Chips whose footprints lie inside AOI polygons, drawn at random or on a grid.

    Random mode: a polygon is picked with probability proportional to its area inside the
    data (or to ``weight_column``), then a chip is placed uniformly inside it, snapped to the
    dataset's pixel grid, and kept only if at least ``min_coverage`` of its area lies inside
    the AOI union and the data. Chip ``i`` is a pure function of ``(seed, i, attempt)``, so any
    process can draw it without drawing the others. Grid mode (``stride``) covers the AOI
    systematically, row by row, for inference.

    Args:
        dataset: the dataset the queries index.
        aoi: AOI file or GeoDataFrame in any CRS; None samples the data footprint.
        size: chip size ``(height, width)`` or one number.
        length: chips per iteration (random mode; default: enough to cover the AOI once).
        units: whether ``size`` and ``stride`` are pixels or CRS units.
        min_coverage: least fraction of a chip inside the AOI union and the data, in (0, 1].
        weight_column: AOI column weighting polygons instead of their area.
        generator: seeds the sampler (``generator.initial_seed()``).
        stride: grid mode step ``(y, x)`` or one number.
        query: pandas query selecting AOI rows.
        max_tries: placement attempts per chip before giving up.
    """

    def __init__(
        self,
        dataset: GeoDataset,
        aoi: str | Path | GeoDataFrame | None,
        size: float | tuple[float, float],
        length: int | None = None,
        units: Units = Units.PIXELS,
        min_coverage: float = 1.0,
        weight_column: str | None = None,
        generator: torch.Generator | None = None,
        stride: float | tuple[float, float] | None = None,
        query: str | None = None,
        max_tries: int = 100,
    ) -> None:
        """Prepare the polygons, their weights and the grid."""
        if not 0 < min_coverage <= 1:
            raise ConfigError(f"min_coverage must lie in (0, 1], got {min_coverage}.")
        self.res = tuple(float(r) for r in dataset.res)
        self.size = self._to_crs_units(size, units, "size")
        self.min_coverage = min_coverage
        self.max_tries = max_tries
        self.t = dataset.bounds[2]
        x, y, _ = dataset.bounds
        self.origin = (float(x.start), float(y.start))
        self.seed = int(generator.initial_seed()) if generator is not None else int(
            torch.randint(0, 2**62, (1,)).item()
        )
        self.epoch = 0

        footprint = shapely.union_all(dataset.index.geometry.values)
        if aoi is None:
            self.aoi = GeoDataFrame({"name": ["data footprint"]}, geometry=[footprint],
                                    crs=dataset.index.crs)
            aoi_name = "the data footprint"
        else:
            self.aoi = read_aoi(aoi, dataset.index.crs, query)
            aoi_name = str(aoi) if not isinstance(aoi, GeoDataFrame) else "the AOI"
        regions = self.aoi.geometry.intersection(footprint)
        if regions.is_empty.all():
            ab, db = self.aoi.total_bounds, footprint.bounds
            raise DataError(
                f"{aoi_name} does not intersect the data: AOI bounds {tuple(np.round(ab, 1))} vs "
                f"data bounds {tuple(np.round(db, 1))} in {dataset.index.crs.to_string()}. Check "
                "that the AOI covers the rasters (and its CRS)."
            )
        self.regions = list(regions.values)
        self.union = shapely.union_all(self.regions)
        shapely.prepare(self.union)
        self.aoi = self.aoi.assign(weight=self._weights(weight_column, regions))

        self.stride = None if stride is None else self._to_crs_units(stride, units, "stride")
        if self.stride is not None:
            self.grid = self._grid()
            if not self.grid:
                raise DataError(
                    f"no grid chip of {self.size} covers {min_coverage:.0%} of {aoi_name}; use a "
                    "smaller size or min_coverage."
                )
            self.length = len(self.grid)
        else:
            self._prepare_random()
            area = self.size[0] * self.size[1]
            self.length = length if length is not None else max(1, int(self.union.area / area))

    # --- set-up --------------------------------------------------------------------
    def _to_crs_units(self, value: float | tuple[float, float], units: Units, what: str) -> tuple[float, float]:
        h, w = (value, value) if isinstance(value, int | float) else value
        if h <= 0 or w <= 0:
            raise ConfigError(f"chip {what} must be positive, got {value}.")
        if units == Units.PIXELS:
            return (h * self.res[1], w * self.res[0])
        return (float(h), float(w))

    def _weights(self, column: str | None, regions: gpd.GeoSeries) -> np.ndarray:
        if column is None:
            weights = regions.area.to_numpy(dtype=float)
        else:
            if column not in self.aoi.columns:
                raise DataError(
                    f"weight_column {column!r} is not an AOI column; columns are "
                    f"{[c for c in self.aoi.columns if c != 'geometry']}."
                )
            weights = pd.to_numeric(self.aoi[column], errors="coerce").to_numpy(dtype=float)
            bad = [i for i, w in enumerate(weights) if not (w >= 0)]
            if bad:
                raise DataError(
                    f"weight_column {column!r} has negative or missing values in "
                    f"{_label(self.aoi, bad[0])} (value {self.aoi[column].iloc[bad[0]]!r}); "
                    "weights must be numbers >= 0."
                )
            weights = np.where(regions.is_empty.to_numpy(), 0.0, weights)
        if weights.sum() <= 0:
            raise DataError("every AOI polygon has zero weight inside the data.")
        return weights

    def _prepare_random(self) -> None:
        half = min(self.size) / 2
        self._centres = []
        for row, region in enumerate(self.regions):
            if self.aoi["weight"].iloc[row] <= 0 or region.is_empty:
                self._centres.append(None)
                continue
            # Centres of chips that fit entirely lie in the region eroded by half a chip.
            inner = region.buffer(-half, join_style="mitre") if self.min_coverage >= 1 else region
            if inner.is_empty:
                inner = region
            shapely.prepare(inner)
            self._centres.append(inner)
        self._probs = self.aoi["weight"].to_numpy(float) / self.aoi["weight"].sum()

    def _grid(self) -> list[Query]:
        assert self.stride is not None
        h, w = self.size
        xmin, ymin, xmax, ymax = self.union.bounds
        x0 = self._snap(xmin, 0)
        y0 = self._snap(ymin, 1)
        xs = np.arange(x0, xmax, self.stride[1])
        ys = np.arange(y0, ymax, self.stride[0])[::-1]  # north to south, as images read
        chips = []
        for yy in ys:
            boxes = shapely.box(xs, yy, xs + w, yy + h)
            cover = shapely.area(shapely.intersection(boxes, self.union)) / (h * w)
            chips += [self._query(float(xx), float(yy)) for xx, c in zip(xs, cover, strict=True)
                      if c >= self.min_coverage - 1e-9]
        return chips

    # --- drawing -------------------------------------------------------------------
    def _snap(self, value: float, axis: int) -> float:
        res = self.res[axis]
        origin = self.origin[axis]
        return origin + math.floor((value - origin) / res + 0.5) * res

    def _query(self, x0: float, y0: float) -> Query:
        h, w = self.size
        return (slice(x0, x0 + w, self.res[0]), slice(y0, y0 + h, self.res[1]), self.t)

    def coverage(self, query: Query) -> float:
        """Fraction of a chip inside the AOI union and the data.

        Args:
            query: the chip.

        Returns:
            the covered fraction of its area.
        """
        x, y, _ = query
        box = shapely.box(x.start, y.start, x.stop, y.stop)
        return shapely.area(shapely.intersection(box, self.union)) / box.area

    def _draw(self, index: int, attempt: int) -> tuple[int, Query]:
        rng = np.random.default_rng([self.seed, index, attempt])
        row = int(rng.choice(len(self._probs), p=self._probs))
        inner = self._centres[row]
        h, w = self.size
        xmin, ymin, xmax, ymax = inner.bounds
        for _ in range(self.max_tries):
            cx = rng.uniform(xmin, xmax, 64)
            cy = rng.uniform(ymin, ymax, 64)
            for px, py in zip(cx[shapely.contains_xy(inner, cx, cy)],
                              cy[shapely.contains_xy(inner, cx, cy)], strict=True):
                query = self._query(self._snap(px - w / 2, 0), self._snap(py - h / 2, 1))
                if self.coverage(query) >= self.min_coverage - 1e-9:
                    return row, query
        raise DataError(
            f"no chip of {w:g} x {h:g} CRS units fits {self.min_coverage:.0%} inside "
            f"{_label(self.aoi, row)} after {self.max_tries * 64} tries; lower min_coverage, use "
            "smaller chips, or drop that polygon from the AOI."
        )

    def sample(self, index: int, attempt: int = 0) -> Query:
        """The chip at an index (random mode: a pure function of seed, index and attempt).

        Args:
            index: chip index (any non-negative integer in random mode).
            attempt: redraw number (random mode), giving an independent chip.

        Returns:
            the query ``(x slice, y slice, t slice)`` in the dataset CRS.
        """
        if self.stride is not None:
            if attempt:
                raise ConfigError("grid chips are fixed: attempt must be 0 in grid mode.")
            return self.grid[index]
        return self._draw(index, attempt)[1]

    def polygon_of(self, index: int, attempt: int = 0) -> int:
        """Row (in :attr:`aoi`) of the polygon a random chip was drawn from.

        Args:
            index: chip index.
            attempt: redraw number.

        Returns:
            the row position.
        """
        return self._draw(index, attempt)[0]

    def __iter__(self) -> Iterator[Query]:
        """Chips of one iteration; each new iteration (epoch) draws new random chips."""
        if self.stride is not None:
            yield from self.grid
            return
        start = self.epoch * self.length
        self.epoch += 1
        for i in range(self.length):
            yield self.sample(start + i)

    def __len__(self) -> int:
        """Chips per iteration."""
        return self.length
