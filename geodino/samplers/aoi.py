"""Chips inside areas of interest: AOI polygons from QGIS exports or GeoDataFrames.

TorchGeo's ``RandomGeoSampler(roi=polygon)`` only clips its file index to the polygon and
draws chips in the clipped bounding box, so chips land outside non-rectangular AOIs.
:class:`AOISampler` places every chip inside the polygons themselves.
"""

import bisect
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import shapely
import torch
from geopandas import GeoDataFrame
from torchgeo.datasets import GeoDataset
from torchgeo.samplers import GeoSampler, Units

from geodino.aoi import polygonal, read_aoi
from geodino.datasets.footprints import FootprintGrid
from geodino.errors import DataError
from geodino.samplers.blocks import align_to_blocks, block_grids
from geodino.samplers.geometry import erode_by_box, grow, triangulate
from geodino.seeding import numpy_rng

log = logging.getLogger(__name__)

Query = tuple[slice, slice, slice]

#: Candidate chips evaluated together while looking for a valid placement.
_BATCH = 8
#: Relative slack on coverage comparisons, for floating-point areas.
_EPS = 1e-9
#: Pixels a chip may stick out of the AOI at ``min_coverage=1``: AOI vertices that went
#: through a CRS round trip (UTM -> EPSG:4326 file -> UTM) move by ~1e-9 m.
_SLACK = 1e-6
#: Parts of the AOI union above which chips are tested against the parts under them (an
#: R-tree query) instead of the whole union, whose test visits every part.
_MANY_PARTS = 64


def _distinct(geometries: np.ndarray) -> np.ndarray:
    """The geometries without repeats (a file per date over the same tiles repeats each)."""
    # repeats are often one object (a STAC catalog's acquisitions of a tile share one
    # polygon): dropping those first leaves few geometries to compare by their WKB
    ids = np.fromiter((id(g) for g in geometries), dtype=np.int64, count=len(geometries))
    _, once = np.unique(ids, return_index=True)
    once = np.sort(once)
    # fixed-width bytes sort many times faster than Python bytes objects (NumPy drops
    # trailing zero bytes, which cannot tell two WKBs apart: their headers fix their length)
    wkb = np.asarray(shapely.to_wkb(geometries[once]).tolist(), dtype=bytes)
    _, first = np.unique(wkb, return_index=True)
    distinct: np.ndarray = geometries[once[np.sort(first)]]
    return distinct


def _disjoint(polygons: np.ndarray) -> bool:
    """Whether no two polygons' bounding boxes meet (then they are the parts of their union)."""
    if not (shapely.get_type_id(polygons) == 3).all():  # multipolygons: no shortcut
        return False
    left, right = shapely.STRtree(polygons).query(polygons)
    return bool((left == right).all())


def footprint_union(geometries: np.ndarray) -> Any:
    """The union of the files' footprints, normalised (the same vertices whatever the method).

    A catalog's footprints are mostly a coverage (tiles that touch or leave gaps, none
    overlapping): their coverage union costs a small part of a general union (10^5 tiles:
    0.5 s instead of 8 s) and gives the same area with the vertices in another order. It is
    kept where it is valid and keeps the footprints' total area, which overlapping
    footprints or edges that do not share vertices break; otherwise the general union is
    taken. Both are normalised, so that the geometry, and every chip drawn from it, is the
    same whichever was used.

    Args:
        geometries: the footprints (repeats allowed).

    Returns:
        their union, normalised.
    """
    distinct = _distinct(geometries)
    union = None
    if len(distinct) > 1 and _disjoint(distinct):
        union = shapely.multipolygons(shapely.get_parts(distinct))
    elif len(distinct) > 1:
        union = shapely.coverage_union_all(distinct)
        total = float(shapely.area(distinct).sum())
        if not (shapely.is_valid(union) and abs(union.area - total) <= 1e-9 * total):
            union = None
    if union is None:
        union = shapely.union_all(distinct)
    return shapely.normalize(union)


class AOISampler(GeoSampler):
    """Chips whose footprints lie inside AOI polygons, drawn at random or on a grid.

    Random mode: a polygon is picked with probability proportional to its area inside the
    data footprint (or to ``weight_column``), a chip centre is drawn uniformly where a chip
    centred there can meet ``min_coverage`` (for ``min_coverage=1`` the polygon eroded by the
    chip, computed exactly; otherwise the polygon), the chip is snapped to the dataset's pixel
    grid and kept if at least ``min_coverage`` of its area lies inside the AOI union and the
    data. Chip ``i`` is a pure function of ``(seed, i, attempt)``, so any process can draw it
    without drawing the others. Grid mode (``stride``) covers the AOI row by row, north to
    south, for inference.

    ``block_aligned`` moves each random chip onto the internal tiling of the file under it,
    so that it spans as few of the file's blocks as it can: a 224-px chip inside one 256-px
    block instead of ~3.5 blocks at a random offset, each of which a compressed GeoTIFF
    decodes whole. The chip keeps the block it was drawn in and is shifted by less than a
    block; chips then start at ``slack + 1`` offsets per block and axis (``slack`` = the
    blocks it spans times the block size minus the chip size, 32 px above), fewer distinct
    placements than the pixel grid. Where no aligned candidate meets ``min_coverage`` (small
    polygons, AOI edges) the first valid unaligned one is kept. Chips no longer cross block
    edges, so pixels near them fall into fewer chips (a pixel ``k < slack`` px from an edge
    into ``(k + 1) / (slack + 1)`` as many as an inner one): hence off by default.

    Sizes and strides are rounded to whole pixels so that reads need no resampling. At
    ``min_coverage=1`` a chip may cross the AOI border by at most 1e-6 pixel, the noise a CRS
    round trip leaves on AOI vertices.

    Args:
        dataset: the dataset the queries index (its ``index`` holds file footprints).
        aoi: AOI file or GeoDataFrame in any CRS; None samples the data footprint.
        size: chip size ``(height, width)`` or one number, in ``units``.
        length: chips per iteration (random mode; default: enough to cover the AOI once).
        units: whether ``size`` and ``stride`` are pixels or CRS units.
        min_coverage: least fraction of a chip inside the AOI union and the data, in (0, 1].
        weight_column: AOI column weighting polygons instead of their area.
        generator: seeds the sampler (``generator.initial_seed()``).
        stride: grid mode step ``(y, x)`` or one number, in ``units``; None: random mode.
        query: pandas query selecting AOI rows, e.g. ``"split == 'train'"``.
        max_tries: candidate chips tried per draw before giving up.
        block_aligned: align random chips with the files' internal tiling (see above).

    Raises:
        DataError: for a bad AOI (see :func:`read_aoi`), an AOI that misses the data, a chip
            that fits no polygon, bad weights, or a parameter out of range; each names the
            file or polygon and the fix.
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
        block_aligned: bool = False,
    ) -> None:
        """Read the AOI, weigh its polygons and prepare the placements or the grid."""
        if not 0 < min_coverage <= 1:
            raise DataError(
                f"min_coverage must lie in (0, 1], got {min_coverage}; use 1.0 for chips "
                "entirely inside the AOI, or e.g. 0.9 to allow 10 % outside."
            )
        if max_tries < 1:
            raise DataError(f"max_tries must be at least 1, got {max_tries}.")
        if length is not None and length < 1:
            raise DataError(f"length must be a positive number of chips, got {length}.")
        if stride is not None and length is not None:
            raise DataError(
                "length is set by the grid in grid mode (stride given); leave length unset."
            )
        if aoi is None and query is not None:
            raise DataError(f"query {query!r} selects AOI rows, but no aoi was given; pass one.")
        self.res = (float(dataset.res[0]), float(dataset.res[1]))
        self.size = self._pixels(size, units, "size")
        self.stride = None if stride is None else self._pixels(stride, units, "stride")
        self.min_coverage = float(min_coverage)
        self.max_tries = int(max_tries)
        x, y, self.t = dataset.bounds
        self.origin = (float(x.start), float(y.start))
        self.crs = dataset.index.crs
        self.blocks = block_grids(dataset, self.res) if block_aligned and stride is None else None
        if self.blocks is not None and not len(self.blocks):
            log.warning(
                "block_aligned: no file is read on the dataset's own grid (all are "
                "warped); chips are not aligned"
            )
            self.blocks = None
        self._footprints = None if self.blocks is None else FootprintGrid(self.blocks[:, :4])
        self.seed = (
            int(generator.initial_seed())
            if generator is not None
            else int(torch.randint(0, 2**62, (1,)).item())
        )
        self.epoch = 0

        footprint = footprint_union(dataset.index.geometry.to_numpy())
        if aoi is None:
            self.source = "the data footprint"
            self.aoi = GeoDataFrame(
                {"name": ["data footprint"]}, geometry=[footprint], crs=self.crs
            )
        else:
            self.source = (
                f"AOI file {aoi}" if not isinstance(aoi, GeoDataFrame) else "the AOI GeoDataFrame"
            )
            self.aoi = read_aoi(aoi, self.crs, query)
        if aoi is None:
            self.regions = [footprint]
        else:
            self.regions = [
                polygonal(g) for g in shapely.intersection(self.aoi.geometry.to_numpy(), footprint)
            ]
        outside = [i for i, r in enumerate(self.regions) if r is None]
        if len(outside) == len(self.regions):
            ab, db = self.aoi.total_bounds, footprint.bounds
            raise DataError(
                f"{self.source} does not intersect the data: AOI bounds "
                f"{tuple(round(float(v), 1) for v in ab)} vs data bounds "
                f"{tuple(round(float(v), 1) for v in db)} in {self.crs.to_string()}. Use an AOI "
                "over the rasters, or fix the AOI's CRS (QGIS: Layer > Set CRS)."
            )
        if outside:
            log.warning(
                "%s: %d polygons lie outside the data and get no chips: %s%s",
                self.source,
                len(outside),
                ", ".join(self.label(i) for i in outside[:10]),
                " ..." if len(outside) > 10 else "",
            )
        inside = [r for r in self.regions if r is not None]
        self.union = shapely.normalize(inside[0] if len(inside) == 1 else shapely.union_all(inside))
        self._prepare_union()
        self.aoi = self.aoi.assign(weight=self._weights(weight_column))

        if self.stride is not None:
            self.grid = self._grid()
            self.length = len(self.grid)
        else:
            self._prepare_random()
            h, w = self.size
            self.length = length if length is not None else max(1, int(self.union.area / (h * w)))

    # --- set-up --------------------------------------------------------------------
    def _pixels(
        self, value: float | tuple[float, float], units: Units, what: str
    ) -> tuple[float, float]:
        """``(height, width)`` in CRS units, rounded to whole pixels."""
        if np.ndim(value) == 0:
            h = w = cast(float, value)
        else:
            h, w = cast(tuple[float, float], value)
        if not (h > 0 and w > 0):
            raise DataError(
                f"chip {what} must be positive, got {value}; give it in {units.name.lower()}."
            )
        if units == Units.CRS:
            h, w = h / self.res[1], w / self.res[0]
        rows, cols = round(h), round(w)
        if rows < 1 or cols < 1:
            raise DataError(
                f"chip {what} {value} ({units.name.lower()}) is smaller than a pixel of "
                f"{self.res}; give at least one pixel."
            )
        return (rows * self.res[1], cols * self.res[0])

    def _weights(self, column: str | None) -> np.ndarray:
        inside = np.array([r is not None for r in self.regions])
        if column is None:
            return np.array([0.0 if r is None else r.area for r in self.regions])
        if column not in self.aoi.columns:
            raise DataError(
                f"weight_column {column!r} is not a column of {self.source}; its columns are "
                f"{[c for c in self.aoi.columns if c != self.aoi.geometry.name]}: add it (QGIS: "
                "Field Calculator) or name another."
            )
        values = pd.to_numeric(self.aoi[column], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
        if bad.size:
            raise DataError(
                f"weight_column {column!r} of {self.source} has a negative, missing or "
                f"non-numeric value at {self.label(int(bad[0]))} "
                f"(value {self.aoi[column].iloc[bad[0]]!r}; {bad.size} such rows); weights must "
                "be finite numbers >= 0: fix the attribute table."
            )
        weights = np.where(inside, values, 0.0)
        if weights.sum() <= 0:
            raise DataError(
                f"weight_column {column!r} of {self.source} is 0 for every polygon inside the "
                "data; give some polygons a positive weight."
            )
        return weights

    def _prepare_random(self) -> None:
        """Per polygon: the triangulated region where chip centres are drawn."""
        h, w = self.size
        weights = self.aoi["weight"].to_numpy(dtype=float).copy()
        eroded = erode_by_box(self.union, w / 2, h / 2) if self.min_coverage >= 1 else None
        self._triangles: list[tuple[np.ndarray, np.ndarray] | None] = []
        alone = [r for r in self.regions if r is not None]
        unfit = []
        for row, region in enumerate(self.regions):
            if region is None or weights[row] <= 0:
                self._triangles.append(None)
                continue
            if self.min_coverage >= 1 and (eroded is None or len(alone) == 1):
                centres = eroded  # the only region is the union, which holds the erosion
            elif self.min_coverage >= 1:
                centres = polygonal(shapely.intersection(region, eroded))
            else:
                # A chip centred in the region lies in its bounds grown by half a chip, so it
                # can cover no more of the AOI than that box holds.
                xmin, ymin, xmax, ymax = region.bounds
                reach = shapely.box(xmin - w / 2, ymin - h / 2, xmax + w / 2, ymax + h / 2)
                fits = shapely.intersection(self.union, reach).area >= self.min_coverage * h * w
                centres = region if fits else None
            if centres is None:
                unfit.append(row)
                self._triangles.append(None)
            else:
                # Snapping rounds centres to the pixel grid: half a pixel more on every side
                # gives the outermost grid placements their full share.
                grown = grow(centres, max(self.res) / 2)
                self._triangles.append(triangulate(grown))
        if len(unfit) == int((weights > 0).sum()):
            parts = [
                (part.area, row, part)
                for row in unfit
                for part in shapely.get_parts(self.regions[row])
            ]
            _, largest, part = max(parts, key=lambda p: p[0])
            xmin, ymin, xmax, ymax = part.bounds
            raise DataError(
                f"{self._chip()} is larger than every polygon of {self.source} inside the data "
                f"(at min_coverage {self.min_coverage:g}; the largest, in {self.label(largest)}, "
                f"spans {xmax - xmin:.0f} x {ymax - ymin:.0f} {self._unit()} inside the data); "
                "use a smaller chip size or a lower min_coverage."
            )
        if unfit:
            # No chip can be drawn from them anyway; their area still counts for neighbours.
            log.warning(
                "%s: %s fits in no place of %d polygons, which get no chips (weight 0): %s%s; "
                "use a smaller chip size or a lower min_coverage (now %g) to sample them",
                self.source,
                self._chip(),
                len(unfit),
                ", ".join(self.label(r) for r in unfit[:10]),
                " ..." if len(unfit) > 10 else "",
                self.min_coverage,
            )
            weights[unfit] = 0.0
            self.aoi["weight"] = weights
        self._cumulative = np.cumsum(weights) / weights.sum()

    def _chip(self) -> str:
        h, w = self.size
        return (
            f"a chip of {round(h / self.res[1])} x {round(w / self.res[0])} px "
            f"({h:g} x {w:g} {self._unit()})"
        )

    def _unit(self) -> str:
        return f"{self.crs.axis_info[0].unit_name}s"

    def _grid(self) -> list[Query]:
        assert self.stride is not None
        xmin, ymin, xmax, ymax = self.union.bounds
        xs = np.arange(self._floor(xmin, 0), xmax, self.stride[1])
        ys = np.arange(self._floor(ymin, 1), ymax, self.stride[0])[::-1]  # north to south
        chips = []
        for y0 in ys:
            keep = self._covers(xs, np.full_like(xs, y0))
            chips += [self._query(float(x0), float(y0)) for x0 in xs[keep]]
        if not chips:
            raise DataError(
                f"no grid chip ({self._chip()}, stride {self.stride[0]:g} x "
                f"{self.stride[1]:g} {self._unit()}) covers {self.min_coverage:.0%} of "
                f"{self.source} inside the data; use a smaller size or a lower min_coverage."
            )
        return chips

    # --- geometry ------------------------------------------------------------------
    def label(self, row: int) -> str:
        """Human-readable name of an AOI polygon, for messages.

        Args:
            row: row position in :attr:`aoi`.

        Returns:
            e.g. ``"row 3 (name 'pond')"`` (the row label of the file, and its name if any).
        """
        name = self.aoi["name"].iloc[row] if "name" in self.aoi.columns else None
        return f"row {self.aoi.index[row]}" + (f" (name {name!r})" if name is not None else "")

    def _snap(self, values: np.ndarray | float, axis: int) -> np.ndarray:
        res, origin = self.res[axis], self.origin[axis]
        snapped: np.ndarray = origin + np.round((values - origin) / res) * res
        return snapped

    def _floor(self, value: float, axis: int) -> float:
        res, origin = self.res[axis], self.origin[axis]
        return origin + math.floor((value - origin) / res + _EPS) * res

    def _query(self, x0: float, y0: float) -> Query:
        h, w = self.size
        return (slice(x0, x0 + w, self.res[0]), slice(y0, y0 + h, self.res[1]), self.t)

    def _align(self, x0: np.ndarray, y0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower-left corners moved onto the tiling of the file under each chip's centre."""
        assert self.blocks is not None
        return align_to_blocks(self.blocks, x0, y0, self.size, self.res, self._footprints)

    def _prepare_union(self) -> None:
        """Prepare the union for containment tests; an R-tree of its parts if it has many."""
        shapely.prepare(self.union)
        parts = shapely.get_parts(self.union)
        self._parts = shapely.STRtree(parts) if len(parts) > _MANY_PARTS else None

    def _covers(self, x0: np.ndarray | float, y0: np.ndarray | float) -> np.ndarray:
        """Whether chips with these lower-left corners meet ``min_coverage``."""
        h, w = self.size
        x0, y0 = np.asarray(x0, dtype=np.float64), np.asarray(y0, dtype=np.float64)
        if self.min_coverage >= 1:
            dx, dy = _SLACK * self.res[0], _SLACK * self.res[1]
            inner = shapely.box(x0 + dx, y0 + dy, x0 + w - dx, y0 + h - dy)
            if self._parts is None:
                inside: np.ndarray = shapely.contains(self.union, inner)
                return inside
            # a box lies inside the union iff it lies inside one of its parts
            chips, _ = self._parts.query(np.atleast_1d(inner), predicate="within")
            found = np.zeros(np.size(inner), dtype=bool)
            found[chips] = True
            return found.reshape(np.shape(inner))
        boxes = shapely.box(x0, y0, x0 + w, y0 + h)
        covered = shapely.area(shapely.intersection(boxes, self.union)) / (h * w)
        enough: np.ndarray = covered >= self.min_coverage - _EPS
        return enough

    def coverage(self, query: Query) -> float:
        """Fraction of a chip inside the AOI union and the data.

        Args:
            query: the chip.

        Returns:
            the covered fraction of its area.
        """
        x, y, _ = query
        box = shapely.box(x.start, y.start, x.stop, y.stop)
        return float(shapely.area(shapely.intersection(box, self.union)) / box.area)

    # --- drawing -------------------------------------------------------------------
    def _draw(self, index: int, attempt: int) -> tuple[int, Query]:
        if index < 0 or attempt < 0:
            raise IndexError(f"chip index and attempt must be >= 0, got {index}, {attempt}")
        rng = numpy_rng(self.seed, index, attempt)
        row = int(np.searchsorted(self._cumulative, rng.random(), side="right"))
        row = min(row, len(self._cumulative) - 1)
        triangles = self._triangles[row]
        assert triangles is not None
        corners, cumulative = triangles
        h, w = self.size
        fallback: Query | None = None
        for start in range(0, self.max_tries, _BATCH):
            n = min(_BATCH, self.max_tries - start)
            u = rng.random(n) * cumulative[-1]
            s, t = np.sqrt(rng.random((n, 1))), rng.random((n, 1))
            if start == 0:
                first = self._first(
                    corners, cumulative, float(u[0]), float(s[0, 0]), float(t[0, 0])
                )
                if first is not None:
                    return row, first
            pick = np.searchsorted(cumulative, u, side="right")
            a, b, c = (corners[np.minimum(pick, len(corners) - 1), k] for k in range(3))
            centres = (1 - s) * a + s * (1 - t) * b + s * t * c  # uniform in the triangle
            x0 = self._snap(centres[:, 0] - w / 2, 0)
            y0 = self._snap(centres[:, 1] - h / 2, 1)
            if self.blocks is not None:
                ax, ay = self._align(x0, y0)
                ok = np.flatnonzero(self._covers(ax, ay))
                if ok.size:
                    return row, self._query(float(ax[ok[0]]), float(ay[ok[0]]))
                if fallback is None:
                    ok = np.flatnonzero(self._covers(x0, y0))
                    if ok.size:
                        fallback = self._query(float(x0[ok[0]]), float(y0[ok[0]]))
                continue
            ok = np.flatnonzero(self._covers(x0, y0))
            if ok.size:
                return row, self._query(float(x0[ok[0]]), float(y0[ok[0]]))
        if fallback is not None:
            return row, fallback
        raise DataError(
            f"no chip of {h:g} x {w:g} {self._unit()} covering "
            f"{self.min_coverage:.0%} was found inside {self.label(row)} of {self.source} after "
            f"{self.max_tries} tries (chip {index}, attempt {attempt}); lower min_coverage, use "
            "smaller chips, raise max_tries, or leave that polygon out."
        )

    def _first(
        self, corners: np.ndarray, cumulative: np.ndarray, u: float, s: float, t: float
    ) -> Query | None:
        """The first candidate of a draw if it is accepted, else None.

        Most draws keep their first candidate: placing it alone in Python floats, with the
        same operations in the same order as the batch of candidates (so the same chip),
        costs a fraction of placing the batch, a tenth of a chip's cost when its pixels are
        cached.
        """
        k = min(bisect.bisect_right(cumulative, u), len(corners) - 1)
        (ax, ay), (bx, by), (cx, cy) = corners[k].tolist()
        h, w = self.size
        x0 = float(self._snap((1 - s) * ax + s * (1 - t) * bx + s * t * cx - w / 2, 0))
        y0 = float(self._snap((1 - s) * ay + s * (1 - t) * by + s * t * cy - h / 2, 1))
        if self.blocks is not None:
            aligned_x, aligned_y = self._align(np.array([x0]), np.array([y0]))
            x0, y0 = float(aligned_x[0]), float(aligned_y[0])
        return self._query(x0, y0) if self._covers(x0, y0) else None

    def sample(self, index: int, attempt: int = 0) -> Query:
        """The chip at an index (random mode: a pure function of seed, index and attempt).

        Args:
            index: chip index (any integer >= 0 in random mode; below ``len(self)`` on a grid).
            attempt: redraw number (random mode), giving an independent chip.

        Returns:
            the query ``(x slice, y slice, t slice)`` in the dataset CRS.

        Raises:
            DataError: if no placement is found after ``max_tries``, or ``attempt`` is given
                in grid mode.
            IndexError: for a negative index, or one past the grid.
        """
        if self.stride is not None:
            if attempt:
                raise DataError(
                    "grid chips are fixed, so there is nothing to redraw (attempt must be 0 in "
                    "grid mode); use random mode (stride=None) for redraws."
                )
            return self.grid[index]
        return self._draw(index, attempt)[1]

    def polygon_of(self, index: int, attempt: int = 0) -> int:
        """Row position (in :attr:`aoi`) of the polygon a chip belongs to.

        Args:
            index: chip index.
            attempt: redraw number.

        Returns:
            random mode: the polygon the chip was drawn from; grid mode: the polygon that
            overlaps the chip most.
        """
        if self.stride is None:
            return self._draw(index, attempt)[0]
        x, y, _ = self.sample(index, attempt)
        box = shapely.box(x.start, y.start, x.stop, y.stop)
        regions = np.array([shapely.Polygon() if r is None else r for r in self.regions])
        return int(np.argmax(shapely.area(shapely.intersection(regions, box))))

    def __iter__(self) -> Iterator[Query]:
        """Chips of one iteration; each new iteration (epoch) draws new random chips.

        Yields:
            ``sample(epoch * len(self) + i)`` for ``i`` in ``range(len(self))`` (random mode),
            or the grid chips in row-major order.
        """
        if self.stride is not None:
            yield from self.grid
            return
        start = self.epoch * self.length
        self.epoch += 1
        for i in range(self.length):
            yield self.sample(start + i)

    def __len__(self) -> int:
        """Chips per iteration.

        Returns:
            the number of chips one iteration yields.
        """
        return self.length

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled sampler (loader workers) and prepare its geometry again.

        Args:
            state: the pickled attributes.
        """
        self.__dict__.update(state)
        self._prepare_union()

    def __getstate__(self) -> dict[str, Any]:
        """The sampler without its R-tree, which is rebuilt on unpickling.

        Returns:
            the attributes to pickle.
        """
        state = dict(self.__dict__)
        state.pop("_parts", None)
        return state
