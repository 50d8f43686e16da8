"""The synthetic demo catalog: Sentinel-2-like scenes in two UTM zones, S1, labels and an AOI.

Scenes are mosaics of field-like parcels (jittered Voronoi cells) of seven land-cover classes,
mixed linearly from plausible endmember spectra and backscatter. Two pairs of classes are
built from the *same* endmembers in the *same* proportions and differ only in where those
pixels are:

- ``row_crops``: vegetation and soil in anti-aliased stripes at a parcel-specific orientation,
  period and phase; ``meadow``: a row-crop pattern of its own whose pixels were rearranged
  within the parcel into random blobs;
- ``street_grid``: asphalt streets on a parcel-specific rotated grid among soil blocks;
  ``bare_soil``: such a grid whose pixels were rearranged into random blobs.

Rearranging keeps the multiset of per-pixel mixtures of each parcel, so the members of a pair
have the same mean spectra and the same per-pixel histograms in every band of S2 and S1; only
spatial features tell them apart. That is what shows that pretraining learned something.
"""

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from pyproj import CRS, Transformer
from rasterio.transform import from_origin
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree
from torchgeo.datasets import DatasetNotFoundError, RasterDataset

from geodino.datasets.sentinel import S1_BANDS, S2_BANDS, Sentinel1, Sentinel2
from geodino.errors import ConfigError, DataError
from geodino.seeding import numpy_rng

log = logging.getLogger(__name__)

#: Land-cover classes; the index is the label value.
CLASSES: tuple[str, ...] = (
    "water",
    "forest",
    "meadow",
    "row_crops",
    "bare_soil",
    "street_grid",
    "urban",
)
#: Label value outside the S2 data.
LABEL_NODATA: int = 255
#: Where the CLI and the demo write the catalog, relative to the working directory.
DEFAULT_ROOT: Path = Path("geodino_demo/data")
#: (unstructured, structured) classes with the same per-pixel distributions.
MATCHED_PAIRS: tuple[tuple[str, str], ...] = (("meadow", "row_crops"), ("bare_soil", "street_grid"))
#: Scene names; two scenes per UTM zone either side of 6 deg E.
SCENE_NAMES: tuple[str, ...] = ("zone31_north", "zone31_south", "zone32_north", "zone32_south")
#: Pixel size in metres.
RES: float = 10.0
#: Bumped whenever the content of a catalog changes for the same seed.
FORMAT_VERSION: int = 2
MIN_SCENE_SIZE, MAX_SCENE_SIZE = 64, 2048
#: Train AOIs cover rows above 55 % of a scene, validation AOIs rows below 60 %; parcels are
#: cut at 57.5 % so that no parcel lies in both.
TRAIN_END, SPLIT_ROW, VAL_START = 0.55, 0.575, 0.60
#: RGBA colours of the classes in the label rasters' colour table.
CLASS_COLORS: tuple[tuple[int, int, int, int], ...] = (
    (31, 120, 180, 255),
    (20, 90, 40, 255),
    (150, 200, 90, 255),
    (230, 200, 60, 255),
    (170, 120, 80, 255),
    (120, 120, 120, 255),
    (220, 50, 50, 255),
)


@dataclass(frozen=True)
class Material:
    """An endmember: what one pure 10 m pixel of a material looks like.

    Args:
        name: material name.
        reflectance: surface reflectance x 10000 in ``S2_BANDS`` order (B01..B12, B8A after
            B08); B09 (water vapour) and B10 (cirrus) are attenuated as over a clear sky.
        backscatter: Sentinel-1 linear power (VV, VH).
    """

    name: str
    reflectance: tuple[int, ...]
    backscatter: tuple[float, float]


MATERIALS: tuple[Material, ...] = (
    # low everywhere, NIR and SWIR absorbed; specular: very low backscatter
    Material(
        "water", (620, 560, 520, 330, 260, 190, 160, 130, 110, 40, 8, 60, 40), (0.003, 0.0004)
    ),
    # green peak, red absorption, red-edge rise, NIR plateau, SWIR water dip
    Material(
        "vegetation",
        (420, 380, 720, 330, 1150, 2900, 3550, 3800, 3950, 1350, 15, 2050, 1000),
        (0.055, 0.012),
    ),
    Material(
        "forest",
        (300, 240, 450, 220, 680, 1950, 2500, 2700, 2850, 950, 12, 1300, 560),
        (0.085, 0.022),
    ),
    # rises steadily from blue to SWIR
    Material(
        "soil",
        (980, 1100, 1420, 1780, 1990, 2150, 2280, 2380, 2500, 880, 20, 3250, 2750),
        (0.030, 0.005),
    ),
    # dark and flat; smooth: low backscatter
    Material(
        "asphalt",
        (820, 800, 830, 850, 870, 890, 910, 930, 950, 330, 14, 1000, 960),
        (0.005, 0.0008),
    ),
    # bright and flat; walls and ground make a dihedral: strong double-bounce VV
    Material(
        "roof",
        (1300, 1400, 1480, 1560, 1600, 1620, 1640, 1660, 1680, 590, 18, 1750, 1600),
        (0.45, 0.035),
    ),
)
_M = {m.name: i for i, m in enumerate(MATERIALS)}
_C = {c: i for i, c in enumerate(CLASSES)}
#: Materials of urban blocks and their shares.
URBAN_MIX: tuple[tuple[str, float], ...] = (("roof", 0.55), ("asphalt", 0.30), ("vegetation", 0.15))
#: Share of vegetation in row crops (and so in meadows).
VEGETATION_DUTY = 0.6
#: Equivalent number of looks of the S1 speckle (Sentinel-1 IW GRD high resolution).
LOOKS = 4.4


@dataclass(frozen=True)
class SceneGrid:
    """Where a scene lies.

    Args:
        name: scene name (file stem).
        epsg: UTM CRS.
        west: easting of the west edge, metres.
        north: northing of the north edge, metres.
    """

    name: str
    epsg: int
    west: float
    north: float


def scene_grids(scene_size: int) -> tuple[SceneGrid, ...]:
    """The four scenes: two in EPSG:32631 just west of 6 deg E, two in EPSG:32632 just east.

    Args:
        scene_size: side of each scene in pixels.

    Returns:
        one grid per name in ``SCENE_NAMES``.
    """
    extent = scene_size * RES
    north, gap = 4_990_000.0, 2_000.0
    south = north - extent - gap
    edges = {}
    for epsg in (32631, 32632):
        to_utm = Transformer.from_crs(4326, epsg, always_xy=True)
        # the 6 deg E meridian is slanted in both grids (meridian convergence)
        to_lonlat = Transformer.from_crs(epsg, 4326, always_xy=True)
        lats = [to_lonlat.transform(500_000.0, y)[1] for y in (north, south - extent)]
        edges[epsg] = [to_utm.transform(6.0, lat)[0] for lat in lats]
    west31 = np.floor((min(edges[32631]) - gap - extent) / 100) * 100
    west32 = np.ceil((max(edges[32632]) + gap) / 100) * 100
    return (
        SceneGrid(SCENE_NAMES[0], 32631, float(west31), north),
        SceneGrid(SCENE_NAMES[1], 32631, float(west31), south),
        SceneGrid(SCENE_NAMES[2], 32632, float(west32), north),
        SceneGrid(SCENE_NAMES[3], 32632, float(west32), south),
    )


@dataclass(frozen=True)
class DemoCatalog:
    """Paths of a demo catalog.

    Args:
        root: the catalog folder.
        s2: folder of 13-band S2-like uint16 scenes.
        s1: folder of VV/VH float32 linear-power scenes on the same grids.
        labels: folder of uint8 land-cover rasters on the same grids.
        aoi: GeoPackage of AOI polygons in EPSG:4326.
        classes: class names, index == label value.
    """

    root: Path
    s2: Path
    s1: Path
    labels: Path
    aoi: Path
    classes: tuple[str, ...] = CLASSES

    @classmethod
    def at(cls, root: Path | str) -> "DemoCatalog":
        """Paths of a catalog at ``root``, written or not.

        Args:
            root: the catalog folder.

        Returns:
            the catalog's paths.
        """
        root = Path(root)
        return cls(root, root / "s2", root / "s1", root / "labels", root / "aoi.gpkg")

    @property
    def metadata_path(self) -> Path:
        """``classes.json``: classes, pairs, seed, scene size and grids; written last."""
        return self.root / "classes.json"

    def rasters(self) -> list[Path]:
        """Every raster file of the catalog (s2, s1, labels), existing or not."""
        return [
            folder / f"{name}.tif"
            for folder in (self.s2, self.s1, self.labels)
            for name in SCENE_NAMES
        ]

    def missing(self) -> list[str]:
        """Parts of the catalog that are absent, relative to ``root``.

        Returns:
            relative paths; empty when the catalog is complete.
        """
        parts = [*self.rasters(), self.aoi, self.metadata_path]
        return [str(p.relative_to(self.root)) for p in parts if not p.is_file()]

    def metadata(self) -> dict[str, Any]:
        """What ``classes.json`` says.

        Returns:
            the parsed file.

        Raises:
            DataError: if it is missing or not valid JSON.
        """
        try:
            meta = json.loads(self.metadata_path.read_text())
        except (OSError, ValueError) as error:
            raise DataError(
                f"cannot read {self.metadata_path} ({error}); rewrite the demo catalog with "
                f"`geodino demo-data --out {self.root} --overwrite true`."
            ) from error
        if not isinstance(meta, dict):
            raise DataError(
                f"{self.metadata_path} is not a JSON object; rewrite the demo catalog with "
                f"`geodino demo-data --out {self.root} --overwrite true`."
            )
        return meta

    def complete(self) -> bool:
        """Whether every part of the catalog is on disk."""
        return not self.missing()

    @classmethod
    def load(cls, root: Path | str = DEFAULT_ROOT) -> "DemoCatalog":
        """Paths of an existing, complete catalog written by this version of geodino.

        Args:
            root: the catalog folder.

        Returns:
            the catalog.

        Raises:
            DataError: if it is missing, incomplete or of another format, saying how to
                write it.
        """
        catalog = cls.at(root)
        missing = catalog.missing()
        if missing:
            what = (
                "missing"
                if not catalog.root.is_dir()
                else (
                    f"incomplete (no {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})"
                )
            )
            raise DataError(
                f"the demo catalog {catalog.root} is {what}; run `geodino demo-data --out "
                f"{catalog.root}` to write it (or `make demo`)."
            )
        meta = catalog.metadata()
        same_classes = tuple(meta.get("classes", ())) == CLASSES
        if meta.get("format_version") != FORMAT_VERSION or not same_classes:
            raise DataError(
                f"the demo catalog {catalog.root} has format {meta.get('format_version')} and "
                f"classes {meta.get('classes')}, this geodino writes format {FORMAT_VERSION} "
                f"with classes {list(CLASSES)}; rewrite it with `geodino demo-data --out "
                f"{catalog.root} --overwrite true`."
            )
        return catalog


# ---------------------------------------------------------------------------------------------
# Scene synthesis (vectorised; one random generator per scene)


def _parcels(rng: np.random.Generator, size: int) -> np.ndarray:
    """Field-like parcels: Voronoi cells of jittered grid seeds, ~80 px, cut at the split."""
    cells = max(4, round(size / 80))
    spacing = size / cells
    grid = np.stack(np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij"), -1)
    seeds = (grid.reshape(-1, 2) + 0.5 + rng.uniform(-0.35, 0.35, (cells * cells, 2))) * spacing
    yy, xx = np.mgrid[0:size, 0:size]
    _, cell = cKDTree(seeds).query(np.column_stack([yy.ravel() + 0.5, xx.ravel() + 0.5]))
    cell = cell.reshape(size, size) + cells * cells * (yy >= round(SPLIT_ROW * size))
    return np.unique(cell, return_inverse=True)[1].reshape(size, size)


def _stripes(u: np.ndarray, period: np.ndarray, duty: np.ndarray) -> np.ndarray:
    """Share of a 1-px window around ``u`` covered by the 'on' part of a square wave."""
    on = duty * period

    def integral(t: np.ndarray) -> np.ndarray:
        covered: np.ndarray = np.floor(t / period) * on + np.minimum(np.mod(t, period), on)
        return covered

    share: np.ndarray = integral(u + 0.5) - integral(u - 0.5)
    return share


def _rotated(
    rng: np.random.Generator,
    n: int,
    parcel: np.ndarray,
    max_angle: float,
    period: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: coordinates along and across a parcel-specific direction, and a period."""
    angle = rng.uniform(0, max_angle, n)[parcel]
    p = rng.uniform(*period, n)[parcel]
    phase_u, phase_v = rng.uniform(0, 1, (2, n))
    yy, xx = np.mgrid[0 : parcel.shape[0], 0 : parcel.shape[1]] + 0.5
    cos, sin = np.cos(angle), np.sin(angle)
    u = xx * cos + yy * sin + phase_u[parcel] * p
    v = -xx * sin + yy * cos + phase_v[parcel] * p
    return u, v, p


def _row_crop_vegetation(rng: np.random.Generator, n: int, parcel: np.ndarray) -> np.ndarray:
    """Vegetation share of each pixel: stripes with a parcel's orientation, period 5-10 px."""
    u, _, period = _rotated(rng, n, parcel, np.pi, (5.0, 10.0))
    return _stripes(u, period, np.full_like(period, VEGETATION_DUTY))


def _street_asphalt(rng: np.random.Generator, n: int, parcel: np.ndarray) -> np.ndarray:
    """Asphalt share of each pixel: a rotated street grid, 12-16 px apart, 2-3 px wide."""
    u, v, period = _rotated(rng, n, parcel, np.pi / 2, (12.0, 16.0))
    duty = rng.uniform(2.0, 3.0, n)[parcel] / period
    across, along = _stripes(u, period, duty), _stripes(v, period, duty)
    share: np.ndarray = across + along - across * along
    return share


def _rearranged(values: np.ndarray, groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Within each group, the same values, the largest given to the pixels of largest key."""
    by_value = np.lexsort((values, groups))
    by_key = np.lexsort((keys, groups))
    out = np.empty_like(values)
    out[by_key] = values[by_value]
    return out


def _unit_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation."""
    field: np.ndarray = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return field / field.std()


def _materials(
    rng: np.random.Generator, labels: np.ndarray, parcel: np.ndarray, n: int
) -> np.ndarray:
    """Share of each material in each pixel, (materials, H, W); shares sum to 1."""
    size = labels.shape[0]
    weights = np.zeros((len(MATERIALS), size, size), dtype=np.float64)
    # patterns for every pixel (cheap when vectorised), used where a parcel's class needs them
    vegetation = _row_crop_vegetation(rng, n, parcel)
    asphalt = _street_asphalt(rng, n, parcel)
    blobs = _unit_noise(rng, size, 1.2)
    sediment = 0.08 * np.clip(_unit_noise(rng, size, 16.0), 0, 2) / 2

    water = labels == _C["water"]
    weights[_M["water"], water] = 1 - sediment[water]
    weights[_M["soil"], water] = sediment[water]
    weights[_M["forest"], labels == _C["forest"]] = 1

    for unstructured, structured, share, material in (
        ("meadow", "row_crops", vegetation, "vegetation"),
        ("bare_soil", "street_grid", asphalt, "asphalt"),
    ):
        ordered = labels == _C[structured]
        weights[_M[material], ordered] = share[ordered]
        weights[_M["soil"], ordered] = 1 - share[ordered]
        # the same kind of pattern, scrambled within the parcel: same multiset of shares
        blobby = labels == _C[unstructured]
        mixed = _rearranged(share[blobby], parcel[blobby], blobs[blobby])
        weights[_M[material], blobby] = mixed
        weights[_M["soil"], blobby] = 1 - mixed

    urban = np.flatnonzero(labels == _C["urban"])
    if urban.size:
        # buildings, yards and streets as small cells of about 5 px
        blocks = max(1, size * size // 25)
        seeds = rng.uniform(0, size, (blocks, 2))
        use = rng.choice(len(URBAN_MIX), blocks, p=[share for _, share in URBAN_MIX])
        _, nearest = cKDTree(seeds).query(np.column_stack(np.unravel_index(urban, labels.shape)))
        for k, (material, _) in enumerate(URBAN_MIX):
            weights[_M[material]].flat[urban[use[nearest] == k]] = 1
    return weights


def _stratified(
    rng: np.random.Generator, parcel_class: np.ndarray, low: float, high: float
) -> np.ndarray:
    """A factor per parcel, stratified within each class over [low, high).

    Every class gets the same spread of factors, so the members of a matched pair do not
    differ by the luck of a few draws.
    """
    out = np.empty(len(parcel_class))
    for c in range(len(CLASSES)):
        members = np.flatnonzero(parcel_class == c)
        strata = (rng.permutation(len(members)) + rng.uniform(0, 1, len(members))) / len(members)
        out[members] = low + (high - low) * strata
    return out


def _synthesise(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: S2 reflectance (13, H, W), S1 linear power (2, H, W), labels (H, W)."""
    parcel = _parcels(rng, size)
    n = int(parcel.max()) + 1
    # a balanced shuffle, so every class gets parcels in every scene
    parcel_class = rng.permutation(np.arange(n) % len(CLASSES))
    labels = parcel_class[parcel].astype(np.uint8)
    weights = _materials(rng, labels, parcel, n)

    reflectance = np.array([m.reflectance for m in MATERIALS], dtype=np.float64)  # (M, 13)
    s2 = np.einsum("mb,mhw->bhw", reflectance, weights)
    forest = labels == _C["forest"]
    # crowns and their shadows
    s2[:, forest] *= 1 + 0.12 * _unit_noise(rng, size, 1.0)[forest]
    # the same for every class: parcel illumination/moisture, haze, sensor noise
    s2 *= _stratified(rng, parcel_class, 0.92, 1.08)[parcel]
    s2 *= 1 + 0.03 * _unit_noise(rng, size, 24.0)
    s2 *= 1 + 0.015 * rng.standard_normal(s2.shape)
    s2 += 8 * rng.standard_normal(s2.shape)

    backscatter = np.array([m.backscatter for m in MATERIALS], dtype=np.float64)  # (M, 2)
    s1 = np.einsum("mp,mhw->phw", backscatter, weights)
    s1 *= _stratified(rng, parcel_class, 0.8, 1.25)[parcel]  # soil moisture and roughness
    s1 *= rng.gamma(LOOKS, 1 / LOOKS, s1.shape)
    return s2, s1, labels


def _nodata_mask(size: int, kind: int) -> np.ndarray:
    """No-data margins as in real scenes: a slanted swath edge, a clipped corner, a granule edge."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    mask: np.ndarray
    if kind == 0:
        mask = xx < 0.12 * size + 0.15 * yy
    elif kind == 1:
        mask = (size - xx) + (size - yy) < 0.3 * size
    elif kind == 2:
        mask = yy < 0.06 * size + 0.02 * xx
    else:
        mask = np.zeros((size, size), dtype=bool)
    return mask


# ---------------------------------------------------------------------------------------------
# Writing


def _write_raster(
    path: Path,
    data: np.ndarray,
    grid: SceneGrid,
    nodata: float,
    descriptions: tuple[str, ...],
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
) -> None:
    """A DEFLATE GeoTIFF with 256-px tiles, written beside ``path`` then moved onto it."""
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype,
        "crs": CRS.from_epsg(grid.epsg).to_wkt(),
        "transform": from_origin(grid.west, grid.north, RES, RES),
        "nodata": nodata,
        "compress": "deflate",
        "predictor": 3 if data.dtype.kind == "f" else 2,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    partial = path.with_name(f".{path.name}.partial")
    with rasterio.open(partial, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = descriptions
        if colormap is not None:
            dst.write_colormap(1, colormap)
    os.replace(partial, path)


def _aoi(grids: tuple[SceneGrid, ...], size: int) -> gpd.GeoDataFrame:
    """AOI polygons in EPSG:4326: train in the north of scenes, validation in the south."""
    extent = size * RES
    inset = 0.04 * extent
    parts: dict[str, shapely.Polygon] = {}
    for grid in grids:
        to_wgs84 = Transformer.from_crs(grid.epsg, 4326, always_xy=True)
        x0, x1 = grid.west + inset, grid.west + extent - inset
        boxes = {
            "train": shapely.box(x0, grid.north - TRAIN_END * extent, x1, grid.north - inset),
            "val": shapely.box(
                x0, grid.north - extent + inset, x1, grid.north - VAL_START * extent
            ),
        }
        if grid.name == "zone31_north":
            # real AOIs have holes: leave out the middle of the west fields
            cx, cy = grid.west + 0.5 * extent, grid.north - 0.3 * extent
            dx, dy = 0.1 * extent, 0.08 * extent
            hole = shapely.box(cx - dx, cy - dy, cx + dx, cy + dy)
            boxes["train"] = boxes["train"].difference(hole)
        for split, box in boxes.items():
            dense = shapely.segmentize(box, extent / 16)
            parts[f"{grid.name}_{split}"] = shapely.transform(
                dense, lambda xy, t=to_wgs84: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))
            )
    east = parts["zone32_north_train"]
    # stretched 30 % eastwards, past the data
    sticking_out = shapely.affinity.scale(east, xfact=1.3, yfact=1.0, origin=(east.bounds[0], 0))
    rows = [
        ("west_fields", "train", 1.0, parts["zone31_north_train"]),
        (
            "cross_zone",
            "train",
            2.0,
            shapely.MultiPolygon([parts["zone31_south_train"], parts["zone32_south_train"]]),
        ),
        ("east_fields", "train", 1.0, sticking_out),
        (
            "val_west",
            "val",
            1.0,
            shapely.MultiPolygon([parts["zone31_north_val"], parts["zone31_south_val"]]),
        ),
        (
            "val_east",
            "val",
            1.0,
            shapely.MultiPolygon([parts["zone32_north_val"], parts["zone32_south_val"]]),
        ),
    ]
    return gpd.GeoDataFrame(
        {
            "name": [r[0] for r in rows],
            "split": [r[1] for r in rows],
            "weight": [r[2] for r in rows],
        },
        geometry=[r[3] for r in rows],
        crs="EPSG:4326",
    )


def _readme(seed: int, size: int) -> str:
    pairs = "; ".join(f"`{a}` vs `{b}`" for a, b in MATCHED_PAIRS)
    return (
        "# geodino demo catalog\n\n"
        f"Synthetic, written by `geodino demo-data` (seed {seed}, {len(SCENE_NAMES)} scenes of "
        f"{size} x {size} px at {RES:g} m, EPSG:32631 and EPSG:32632 either side of 6 deg E).\n\n"
        "- `s2/<scene>.tif`: 13-band S2-like reflectance x 10000 (uint16, B01..B12 with B8A "
        "after B08, named in the band descriptions), nodata 0.\n"
        "- `s1/<scene>.tif`: VV, VH linear power (float32), speckled, same grid, nodata 0.\n"
        f"- `labels/<scene>.tif`: uint8 land cover, nodata {LABEL_NODATA}; classes (index = "
        f"value): {', '.join(CLASSES)}.\n"
        "- `aoi.gpkg`: EPSG:4326 polygons with columns `name`, `split` (train/val), `weight`.\n"
        "- `classes.json`: classes, matched pairs, seed, grids.\n\n"
        f"Matched pairs (same per-pixel spectra, different spatial structure): {pairs}.\n"
    )


def _check_arguments(seed: int, scene_size: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(
            f"seed={seed!r}: the demo catalog needs a non-negative integer seed; use e.g. 0."
        )
    if (
        isinstance(scene_size, bool)
        or not isinstance(scene_size, int | np.integer)
        or not MIN_SCENE_SIZE <= scene_size <= MAX_SCENE_SIZE
    ):
        raise ConfigError(
            f"scene_size={scene_size!r}: demo scenes are {MIN_SCENE_SIZE} to {MAX_SCENE_SIZE} "
            "px (smaller leaves too few parcels per class, larger needs GBs of memory); "
            "use e.g. 512 (the default) or 256."
        )


def _refuse_foreign_files(catalog: DemoCatalog) -> None:
    if catalog.root.exists() and not catalog.root.is_dir():
        raise DataError(
            f"{catalog.root} is a file, not a folder; write the demo catalog to a folder path."
        )
    ours = set(catalog.rasters())
    for folder in (catalog.s2, catalog.s1, catalog.labels):
        if not folder.is_dir():
            continue
        foreign = sorted(p.name for p in folder.glob("*.tif") if p not in ours)
        if foreign:
            raise DataError(
                f"{folder} holds GeoTIFFs that are not part of the demo catalog "
                f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); readers of the "
                "catalog would mix them in. Write the demo catalog to an empty folder or move "
                "those files elsewhere."
            )


def write_demo_catalog(
    root: Path | str = DEFAULT_ROOT, seed: int = 0, scene_size: int = 512, overwrite: bool = False
) -> DemoCatalog:
    """Write the demo catalog; the same seed and size give byte-identical rasters.

    ``classes.json`` is written last, so an interrupted write is incomplete and is rewritten
    by the next call.

    Args:
        root: folder to write into (created if needed).
        seed: seed of every random choice (a non-negative integer).
        scene_size: side of each of the four scenes in pixels at 10 m (64 to 2048).
        overwrite: rewrite a complete catalog already at ``root``.

    Returns:
        the catalog's paths.

    Raises:
        ConfigError: if ``seed`` or ``scene_size`` is out of range.
        DataError: if ``root`` is a file, holds other GeoTIFFs in ``s2``/``s1``/``labels``, or
            holds a complete catalog of another seed, size or format and ``overwrite`` is
            False.
    """
    _check_arguments(seed, scene_size)
    seed, scene_size = int(seed), int(scene_size)
    catalog = DemoCatalog.at(root)
    _refuse_foreign_files(catalog)
    if catalog.complete() and not overwrite:
        meta = catalog.metadata()
        wanted = {
            "format_version": FORMAT_VERSION,
            "seed": seed,
            "scene_size": scene_size,
            "classes": list(CLASSES),
        }
        if all(meta.get(k) == v for k, v in wanted.items()):
            log.info("demo catalog %s already written with seed %d; kept", catalog.root, seed)
            return catalog
        raise DataError(
            f"{catalog.root} already holds a demo catalog (format {meta.get('format_version')},"
            f" seed {meta.get('seed')}, scene_size {meta.get('scene_size')}), not the one asked "
            f"for (format {FORMAT_VERSION}, seed {seed}, scene_size {scene_size}); pass "
            f"overwrite=True (`geodino demo-data --out {catalog.root} --overwrite true`) to "
            "replace it, or choose another folder."
        )

    for folder in (catalog.s2, catalog.s1, catalog.labels):
        folder.mkdir(parents=True, exist_ok=True)
    catalog.metadata_path.unlink(missing_ok=True)
    grids = scene_grids(scene_size)
    colormap = {i: color for i, color in enumerate(CLASS_COLORS)} | {LABEL_NODATA: (0, 0, 0, 0)}
    for index, grid in enumerate(grids):
        rng = numpy_rng(seed, index)
        s2, s1, labels = _synthesise(rng, scene_size)
        missing = _nodata_mask(scene_size, index)
        s2 = np.clip(np.rint(s2), 1, 65535).astype(np.uint16)
        s2[:, missing] = 0
        s1 = np.maximum(s1, 1e-6).astype(np.float32)
        s1[:, missing] = 0
        labels[missing] = LABEL_NODATA
        _write_raster(catalog.s2 / f"{grid.name}.tif", s2, grid, 0, S2_BANDS)
        _write_raster(catalog.s1 / f"{grid.name}.tif", s1, grid, 0, S1_BANDS)
        _write_raster(
            catalog.labels / f"{grid.name}.tif",
            labels[None],
            grid,
            LABEL_NODATA,
            ("land_cover",),
            colormap,
        )

    partial = catalog.root / ".aoi.partial.gpkg"
    partial.unlink(missing_ok=True)
    # keep Polygon and MultiPolygon rows as they are, as in real AOI files
    # GeoPackage 1.2: what QGIS 3.22 LTR (Debian stable) opens without a warning
    _aoi(grids, scene_size).to_file(
        partial, driver="GPKG", layer="aoi", promote_to_multi=False, VERSION="1.2"
    )
    os.replace(partial, catalog.aoi)
    (catalog.root / "README.md").write_text(_readme(seed, scene_size))
    extent = scene_size * RES
    meta = {
        "format_version": FORMAT_VERSION,
        "classes": list(CLASSES),
        "label_nodata": LABEL_NODATA,
        "matched_pairs": [list(p) for p in MATCHED_PAIRS],
        "seed": seed,
        "scene_size": scene_size,
        "resolution": RES,
        "s2_bands": list(S2_BANDS),
        "s1_bands": list(S1_BANDS),
        "scenes": [
            {
                "name": g.name,
                "crs": f"EPSG:{g.epsg}",
                "bounds": [g.west, g.north - extent, g.west + extent, g.north],
            }
            for g in grids
        ],
    }
    partial_meta = catalog.metadata_path.with_name(".classes.json.partial")
    partial_meta.write_text(json.dumps(meta, indent=1))
    os.replace(partial_meta, catalog.metadata_path)
    log.info("wrote the demo catalog to %s (seed %d, %d px scenes)", catalog.root, seed, scene_size)
    return catalog


# ---------------------------------------------------------------------------------------------
# Readers


class _DemoSource:
    """Resolves a catalog root (or one of its folders) to the folder a reader needs."""

    folder: ClassVar[str] = "s2"

    @classmethod
    def _folder(cls, paths: Path | str) -> Path:
        root = Path(paths)
        if (root / "classes.json").exists() or not (root.is_dir() and any(root.glob("*.tif"))):
            folder: Path = getattr(DemoCatalog.load(root), cls.folder)
            return folder
        return root


class DemoSentinel2(_DemoSource, Sentinel2):
    """The demo catalog's Sentinel-2-like scenes (``paths``: the catalog root or its s2 folder)."""

    def __init__(self, paths: Path | str = DEFAULT_ROOT, **kwargs: Any) -> None:
        """Open the catalog's ``s2`` folder; a missing catalog says how to write it.

        Args:
            paths: the catalog root or its ``s2`` folder.
            **kwargs: passed to ``Sentinel2``.
        """
        super().__init__(self._folder(paths), **kwargs)


class DemoSentinel1(_DemoSource, Sentinel1):
    """The demo catalog's Sentinel-1-like scenes (``paths``: the catalog root or its s1 folder)."""

    folder = "s1"

    def __init__(self, paths: Path | str = DEFAULT_ROOT, to_db: bool = True, **kwargs: Any) -> None:
        """Open the catalog's ``s1`` folder, in dB by default.

        Args:
            paths: the catalog root or its ``s1`` folder.
            to_db: convert linear power to dB.
            **kwargs: passed to ``Sentinel1``.
        """
        super().__init__(self._folder(paths), to_db=to_db, **kwargs)


class DemoLandCover(_DemoSource, RasterDataset):
    """The demo catalog's land-cover rasters: ``sample["mask"]``, nodata ``LABEL_NODATA``.

    Read with nearest-neighbour resampling (TorchGeo's choice for integer masks), so labels
    warped into the other UTM zone stay class values.

    Args:
        paths: the catalog root or its ``labels`` folder.
        crs: CRS to work in (default: the first scene's).
        res: resolution (default: the first scene's, 10 m).
        transforms: applied to each sample.
        cache: keep file handles open between reads.

    Raises:
        DataError: if the catalog is missing or a label raster cannot be opened.
    """

    folder = "labels"
    is_image = False
    filename_glob = "*.tif"
    classes: tuple[str, ...] = CLASSES

    def __init__(
        self,
        paths: Path | str = DEFAULT_ROOT,
        crs: CRS | None = None,
        res: float | tuple[float, float] | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        cache: bool = True,
    ) -> None:
        """Index the label rasters; none is skipped silently."""
        folder = self._folder(paths)
        files = sorted(folder.glob("*.tif"))
        if not files:
            raise DataError(
                f"no label rasters (*.tif) in {folder}; run `geodino demo-data --out "
                f"{folder.parent}` to write the demo catalog."
            )
        try:
            super().__init__(str(folder), crs=crs, res=res, transforms=transforms, cache=cache)
        except DatasetNotFoundError as error:  # raised by TorchGeo when no file opens
            raise DataError(
                f"no label raster in {folder} can be opened ({error}); rewrite the demo "
                f"catalog with `geodino demo-data --out {folder.parent} --overwrite true`."
            ) from error
        indexed = {os.path.realpath(p) for p in self.index["filepath"]}
        skipped = [p.name for p in files if os.path.realpath(p) not in indexed]
        if skipped:
            raise DataError(
                f"label rasters {', '.join(skipped)} in {folder} cannot be opened (damaged or "
                f"not GeoTIFFs); rewrite the demo catalog with `geodino demo-data --out "
                f"{folder.parent} --overwrite true`."
            )
