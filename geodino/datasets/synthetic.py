"""The synthetic demo catalog: Sentinel-2-like scenes in two UTM zones, S1, labels and an AOI.

Scenes are mosaics of field-like parcels (Voronoi cells) of six land-cover classes built from
plausible endmember spectra. Two pairs of classes are made of the *same* endmembers in the
*same* proportions and differ only in how those pixels are arranged:

- ``meadow`` (vegetation and soil pixels mixed at random) vs ``row_crops`` (the same two
  materials in parallel stripes, at a parcel-specific orientation);
- ``bare_soil`` (soil and asphalt-like pixels mixed at random) vs ``street_grid`` (the same
  materials as a regular street grid around soil blocks).

Per-pixel spectra and chip-mean spectra cannot tell the members of a pair apart; spatial
features can. That is what shows pretraining learned something.
"""

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from pyproj import CRS, Transformer
from rasterio.transform import from_origin
from scipy.spatial import cKDTree
from torchgeo.datasets import RasterDataset

from geodino.datasets.sentinel import S2_BANDS, Sentinel1, Sentinel2
from geodino.errors import DataError

CLASSES: tuple[str, ...] = ("water", "forest", "meadow", "row_crops", "bare_soil", "street_grid")
LABEL_NODATA: int = 255
DEFAULT_ROOT: Path = Path("geodino_demo/data")

#: Endmember reflectance x 10000 in S2_BANDS order (B01..B12 with B8A after B08).
ENDMEMBERS: dict[str, np.ndarray] = {
    "water": np.array([1150, 980, 820, 620, 520, 420, 370, 320, 300, 210, 30, 110, 80]),
    "vegetation": np.array([980, 620, 880, 420, 1250, 3000, 3750, 3950, 4100, 4000, 50, 2050, 1000]),
    "forest": np.array([900, 420, 640, 300, 900, 2350, 2950, 3150, 3300, 3200, 40, 1500, 700]),
    "soil": np.array([1300, 1230, 1520, 1830, 2100, 2280, 2380, 2480, 2580, 2600, 60, 3250, 2850]),
    "asphalt": np.array([1050, 960, 1000, 1050, 1100, 1150, 1180, 1220, 1230, 1240, 40, 1380, 1290]),
}
#: Sentinel-1 linear backscatter (VV, VH) of each endmember.
BACKSCATTER: dict[str, tuple[float, float]] = {
    "water": (0.004, 0.0006),
    "vegetation": (0.06, 0.016),
    "forest": (0.09, 0.025),
    "soil": (0.035, 0.006),
    "asphalt": (0.012, 0.002),
}
#: Fraction of vegetation in meadow/row crops and of asphalt in bare soil/street grid.
VEGETATION_FRACTION = 0.6
STREET_PERIOD, STREET_WIDTH = 15, 2
ASPHALT_FRACTION = 1 - ((STREET_PERIOD - STREET_WIDTH) / STREET_PERIOD) ** 2

#: Scenes: (name, EPSG code, upper-left easting, upper-left northing), either side of 6 deg E.
SCENES: tuple[tuple[str, int, float, float], ...] = (
    ("zone31_north", 32631, 718000.0, 4990000.0),
    ("zone31_south", 32631, 718000.0, 4984000.0),
    ("zone32_north", 32632, 272000.0, 4990000.0),
    ("zone32_south", 32632, 272000.0, 4984000.0),
)
RES = 10.0


@dataclass(frozen=True)
class DemoCatalog:
    """Paths of a written demo catalog.

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
    def at(cls, root: str | Path) -> "DemoCatalog":
        """Paths of a catalog at ``root`` (written or not).

        Args:
            root: the catalog folder.

        Returns:
            the catalog's paths.
        """
        root = Path(root)
        return cls(root, root / "s2", root / "s1", root / "labels", root / "aoi.gpkg")

    def complete(self) -> bool:
        """Whether every part of the catalog is on disk."""
        return (self.root / "classes.json").is_file() and self.aoi.is_file() and all(
            len(list(folder.glob("*.tif"))) == len(SCENES)
            for folder in (self.s2, self.s1, self.labels)
        )

    @classmethod
    def load(cls, root: str | Path = DEFAULT_ROOT) -> "DemoCatalog":
        """Paths of an existing catalog.

        Args:
            root: the catalog folder.

        Returns:
            the catalog.

        Raises:
            DataError: if it is missing or incomplete, saying how to write it.
        """
        catalog = cls.at(root)
        if not catalog.complete():
            raise DataError(
                f"the demo catalog {catalog.root} is missing or incomplete; write it with "
                f"`geodino demo-data {catalog.root}` (or `make demo`)."
            )
        return catalog


def _parcels(rng: np.random.Generator, size: int, mean_side: float) -> tuple[np.ndarray, int]:
    n = max(len(CLASSES) * 2, int(size * size / mean_side**2))
    seeds = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    _, parcel = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], 1))
    return parcel.reshape(size, size), n


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    coarse = rng.normal(0, 1, (size // scale + 2, size // scale + 2))
    up = np.kron(coarse, np.ones((scale, scale)))[:size, :size]
    # a 3-tap box blur in each direction softens the blocks into blobs
    for axis in (0, 1):
        up = (np.roll(up, 1, axis) + up + np.roll(up, -1, axis)) / 3
    return up


def _scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: S2 reflectance (13, H, W) float, S1 power (2, H, W), labels (H, W)."""
    parcel, n = _parcels(rng, size, mean_side=90.0)
    # every class appears: shuffle a balanced assignment of parcels to classes
    parcel_class = rng.permutation(np.arange(n) % len(CLASSES))
    labels = parcel_class[parcel].astype(np.uint8)
    # stripes along integer lattice directions: (a x + b y) mod period is uniform, so the
    # vegetation fraction is exactly VEGETATION_FRACTION whatever the orientation
    directions = np.array([(1, 0), (0, 1), (1, 1), (1, -1), (1, 2), (2, 1), (2, -1), (1, -2)])
    direction = directions[rng.integers(0, len(directions), n)][parcel]
    period = rng.choice([5, 10], n)[parcel]
    yy, xx = np.mgrid[0:size, 0:size]

    # material of every pixel: 0 water, 1 vegetation, 2 forest, 3 soil, 4 asphalt
    material = np.zeros((size, size), dtype=np.int64)
    material[labels == CLASSES.index("water")] = 0
    material[labels == CLASSES.index("forest")] = 2
    random_mix = rng.uniform(size=(size, size))
    meadow = labels == CLASSES.index("meadow")
    material[meadow] = np.where(random_mix[meadow] < VEGETATION_FRACTION, 1, 3)
    rows = labels == CLASSES.index("row_crops")
    phase = (direction[..., 0] * xx + direction[..., 1] * yy) % period
    material[rows] = np.where(phase[rows] < VEGETATION_FRACTION * period[rows], 1, 3)
    soil = labels == CLASSES.index("bare_soil")
    material[soil] = np.where(random_mix[soil] < ASPHALT_FRACTION, 4, 3)
    grid = labels == CLASSES.index("street_grid")
    street = (xx % STREET_PERIOD < STREET_WIDTH) | (yy % STREET_PERIOD < STREET_WIDTH)
    material[grid] = np.where(street[grid], 4, 3)

    names = ("water", "vegetation", "forest", "soil", "asphalt")
    spectra = np.stack([ENDMEMBERS[m] for m in names]).astype(float)  # (5, 13)
    s2 = spectra[material].transpose(2, 0, 1)  # (13, H, W)
    # parcel-wise illumination and moisture, smooth texture, then sensor noise
    brightness = rng.uniform(0.95, 1.05, n)[parcel]
    texture = 1 + 0.04 * _smooth_noise(rng, size, 8)
    s2 = s2 * brightness * texture
    s2 = s2 * (1 + rng.normal(0, 0.02, s2.shape)) + rng.normal(0, 15, s2.shape)

    power = np.array([BACKSCATTER[m] for m in names])  # (5, 2)
    s1 = power[material].transpose(2, 0, 1) * brightness
    looks = 4.0
    s1 = s1 * rng.gamma(looks, 1 / looks, s1.shape)
    return s2, s1, labels


def _nodata_mask(size: int, kind: int) -> np.ndarray:
    """Realistic no-data margins: a slanted orbit edge or a clipped corner."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    if kind == 0:
        return xx < 0.12 * size + 0.15 * yy  # slanted swath edge on the west
    if kind == 1:
        return (size - xx) + (size - yy) < 0.3 * size  # south-east corner
    if kind == 2:
        return yy < 0.06 * size  # a few missing lines at the top
    return np.zeros((size, size), dtype=bool)


def _write(path: Path, data: np.ndarray, crs: int, x0: float, y0: float, nodata: float,
           descriptions: Iterable[str] | None = None) -> None:
    profile = {
        "driver": "GTiff", "height": data.shape[1], "width": data.shape[2],
        "count": data.shape[0], "dtype": data.dtype, "crs": CRS.from_epsg(crs).to_wkt(),
        "transform": from_origin(x0, y0, RES, RES), "nodata": nodata, "compress": "deflate",
        "tiled": True, "blockxsize": 256, "blockysize": 256,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions is not None:
            dst.descriptions = tuple(descriptions)


def _aoi(size: int) -> gpd.GeoDataFrame:
    """Train polygons on the northern 55 % of scenes, validation on the southern 40 %."""
    extent = size * RES
    parts: dict[str, list[Any]] = {}
    for name, epsg, x0, y0 in SCENES:
        to_wgs84 = Transformer.from_crs(epsg, 4326, always_xy=True)
        inset = 0.04 * extent
        top = shapely.box(x0 + inset, y0 - 0.55 * extent, x0 + extent - inset, y0 - inset)
        bottom = shapely.box(x0 + inset, y0 - extent + inset, x0 + extent - inset, y0 - 0.6 * extent)
        for split, box in (("train", top), ("val", bottom)):
            ring = shapely.segmentize(box, extent / 8)
            parts.setdefault(f"{name}_{split}", []).append(
                shapely.transform(ring, lambda xy, t=to_wgs84: np.column_stack(t.transform(*xy.T)))
            )
    # one multipolygon spans both UTM zones; one polygon sticks out of the data to the east
    east = parts.pop("zone32_north_train")[0]
    sticking_out = shapely.affinity.scale(east, xfact=1.3, yfact=1.0, origin=(east.bounds[0], 0))
    rows = [
        ("west_fields", "train", 1.0, parts.pop("zone31_north_train")[0]),
        ("cross_zone", "train", 2.0,
         shapely.MultiPolygon([parts.pop("zone31_south_train")[0], parts.pop("zone32_south_train")[0]])),
        ("east_fields", "train", 1.0, sticking_out),
        ("val_west", "val", 1.0,
         shapely.MultiPolygon([parts.pop("zone31_north_val")[0], parts.pop("zone31_south_val")[0]])),
        ("val_east", "val", 1.0,
         shapely.MultiPolygon([parts.pop("zone32_north_val")[0], parts.pop("zone32_south_val")[0]])),
    ]
    return gpd.GeoDataFrame(
        {"name": [r[0] for r in rows], "split": [r[1] for r in rows],
         "weight": [r[2] for r in rows]},
        geometry=[r[3] for r in rows], crs="EPSG:4326",
    )


def write_demo_catalog(
    root: str | Path = DEFAULT_ROOT, seed: int = 0, scene_size: int = 512, overwrite: bool = False
) -> DemoCatalog:
    """Write the demo catalog (deterministic for a seed).

    Args:
        root: folder to write into.
        seed: seed of every random choice.
        scene_size: side of each scene in pixels (10 m).
        overwrite: rewrite an existing complete catalog.

    Returns:
        the catalog's paths.
    """
    catalog = DemoCatalog.at(root)
    meta_path = catalog.root / "classes.json"
    if catalog.complete() and not overwrite:
        meta = json.loads(meta_path.read_text())
        if meta.get("seed") == seed and meta.get("scene_size") == scene_size:
            return catalog
    for folder in (catalog.s2, catalog.s1, catalog.labels):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.tif"):
            old.unlink()
    rng = np.random.default_rng(seed)
    for kind, (name, epsg, x0, y0) in enumerate(SCENES):
        s2, s1, labels = _scene(rng, scene_size)
        missing = _nodata_mask(scene_size, kind)
        s2 = np.clip(s2, 1, 65535).astype(np.uint16)
        s2[:, missing] = 0
        s1 = s1.astype(np.float32)
        s1[:, missing] = 0
        labels[missing] = LABEL_NODATA
        _write(catalog.s2 / f"{name}.tif", s2, epsg, x0, y0, 0, S2_BANDS)
        _write(catalog.s1 / f"{name}.tif", s1, epsg, x0, y0, 0, ("VV", "VH"))
        _write(catalog.labels / f"{name}.tif", labels[None], epsg, x0, y0, LABEL_NODATA)
    if catalog.aoi.exists():
        catalog.aoi.unlink()
    _aoi(scene_size).to_file(catalog.aoi, driver="GPKG")
    meta_path.write_text(json.dumps({
        "classes": list(CLASSES), "label_nodata": LABEL_NODATA, "seed": seed,
        "scene_size": scene_size, "matched_pairs": [["meadow", "row_crops"],
                                                    ["bare_soil", "street_grid"]],
    }, indent=1))
    (catalog.root / "README.md").write_text(
        "# geodino demo catalog\n\nSynthetic: s2/ (13-band uint16 reflectance x10000, nodata 0), "
        "s1/ (VV, VH linear power, nodata 0), labels/ (uint8, classes in classes.json, nodata "
        "255), aoi.gpkg (EPSG:4326, columns name, split, weight). Written by "
        f"`geodino demo-data` with seed {seed}.\n"
    )
    return catalog


class _DemoSource:
    """Resolves a demo catalog root to one of its folders, with a helpful error."""

    folder: ClassVar[str] = "s2"

    @classmethod
    def _folder(cls, paths: str | Path) -> Path:
        root = Path(paths)
        if (root / "classes.json").exists() or not (root.is_dir() and any(root.glob("*.tif"))):
            return getattr(DemoCatalog.load(root), cls.folder)
        return root


class DemoSentinel2(_DemoSource, Sentinel2):
    """The demo catalog's Sentinel-2-like scenes (``paths``: the catalog root)."""

    def __init__(self, paths: str | Path = DEFAULT_ROOT, **kwargs: Any) -> None:
        """Open the catalog's ``s2`` folder; a missing catalog says how to write it."""
        super().__init__(self._folder(paths), **kwargs)


class DemoSentinel1(_DemoSource, Sentinel1):
    """The demo catalog's Sentinel-1-like scenes (``paths``: the catalog root)."""

    folder = "s1"

    def __init__(self, paths: str | Path = DEFAULT_ROOT, to_db: bool = True, **kwargs: Any) -> None:
        """Open the catalog's ``s1`` folder, in dB by default."""
        super().__init__(self._folder(paths), to_db=to_db, **kwargs)


class DemoLandCover(RasterDataset):
    """The demo catalog's land-cover rasters (``sample["mask"]``, nodata 255).

    Args:
        paths: the catalog's ``labels`` folder (or the catalog root).
        crs: CRS to work in.
        res: resolution.
        transforms: applied to each sample.
        cache: keep file handles open.
    """

    is_image = False
    filename_glob = "*.tif"

    def __init__(
        self,
        paths: str | Path = DEFAULT_ROOT / "labels",
        crs: CRS | None = None,
        res: float | tuple[float, float] | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        cache: bool = True,
    ) -> None:
        """Index the label rasters."""
        root = Path(paths)
        if (root / "classes.json").exists():
            root = DemoCatalog.load(root).labels
        if not any(root.glob("*.tif")):
            raise DataError(
                f"no label rasters in {root}; write the catalog with `geodino demo-data`."
            )
        self.classes = CLASSES
        super().__init__(root, crs=crs, res=res, transforms=transforms, cache=cache)

    @property
    def resampling(self) -> Literal[0]:  # type: ignore[override]
        """Nearest neighbour: labels are categories."""
        return rasterio.enums.Resampling.nearest
