"""A synthetic seasonal catalog: dated S2 and S1 scenes whose classes live in time only.

Every parcel of the scene follows a vegetation cycle over the year, ``v(t) = 0.5 + a cos(2 pi
(f doy / 365 - phase))``, with ``f`` growing seasons per year set by its class (1, 2 or 3)
and a phase drawn uniformly per parcel. With a uniform phase, the distribution of ``v`` on any
single date is the same for every class (the arcsine law of a cosine at a random phase), and
so are the spectra, the texture and the radar backscatter: one acquisition cannot tell the
classes apart, the trajectory over the year can. Sentinel-2-like reflectances mix a soil and a
vegetation spectrum by ``v``; Sentinel-1-like VV/VH backscatter (dB) grows with ``v``.

The catalog holds ``s2/S2_YYYYMMDD.tif`` (13 bands, uint16, nodata 0), ``s1/S1_YYYYMMDD.tif``
(VV, VH in dB, float32, nodata NaN, two days after each S2 date) and ``parcels.gpkg`` (one
polygon per parcel with ``label``, ``class`` and ``split``: ``train`` or ``val``).
:class:`SeriesSentinel2` and :class:`SeriesSentinel1` read the scenes with their dates, for
:class:`~geodino.datasets.TimeSeries`.
"""

import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from shapely.geometry import box

from geodino.datasets import MultiBandGeoTIFF
from geodino.datasets.sentinel import S1_BANDS, S2_BANDS
from geodino.errors import ConfigError
from geodino.seeding import numpy_rng

log = logging.getLogger(__name__)

#: Class names, index == label value: growing seasons per year.
SEASONAL_CLASSES: tuple[str, ...] = ("one_season", "two_seasons", "three_seasons")
#: Where ``geodino demo-data --series`` writes the catalog and the series configs read it.
SERIES_ROOT: Path = Path("geodino_demo/series")
#: Pixel size in metres, CRS and upper-left corner of the scene.
_RES, _EPSG, _WEST, _NORTH = 10.0, 32631, 600_000.0, 5_000_000.0
#: Reflectance (x 10,000) of bare soil and of full vegetation in the 13 S2 bands.
_SOIL = np.array([1300, 1500, 1800, 2200, 2400, 2500, 2600, 2700, 2800, 300, 3200, 3400, 2900])
_VEGETATION = np.array([300, 400, 700, 350, 900, 2800, 3600, 4000, 4200, 300, 2200, 1200, 4100])
#: S1 backscatter (dB) of bare soil and its gain at full vegetation, VV then VH.
_S1_SOIL, _S1_GAIN = np.array([-13.0, -22.0]), np.array([4.0, 8.0])


@dataclass(frozen=True)
class SeriesCatalog:
    """Where the seasonal catalog's parts lie.

    Args:
        root: the catalog folder.
        dates: the S2 acquisition dates, in order.
    """

    root: Path
    dates: tuple[datetime.date, ...]

    @property
    def s2(self) -> Path:
        """Folder of the S2 scenes."""
        return self.root / "s2"

    @property
    def s1(self) -> Path:
        """Folder of the S1 scenes."""
        return self.root / "s1"

    @property
    def parcels(self) -> Path:
        """The parcels' GeoPackage (``label``, ``class``, ``split``)."""
        return self.root / "parcels.gpkg"


def _smooth_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Values in [-1, 1] varying over ``cell`` pixels: bilinear upsampling of coarse noise."""
    coarse = rng.uniform(-1, 1, (size // cell + 2, size // cell + 2))
    u = np.arange(size) / cell
    i, f = u.astype(int), (u % 1)[:, None]
    rows = coarse[i] * (1 - f) + coarse[i + 1] * f
    j, g = u.astype(int), u % 1
    return np.asarray(rows[:, j] * (1 - g) + rows[:, j + 1] * g)


def vegetation(
    doy: np.ndarray, label: np.ndarray, phase: np.ndarray, amplitude: np.ndarray
) -> np.ndarray:
    """The vegetation fraction of parcels on days of year.

    Args:
        doy: days of year, shape (T,).
        label: class of each parcel (seasons per year minus 1), shape (P,).
        phase: phase of each parcel in [0, 1), shape (P,).
        amplitude: amplitude of each parcel's cycle, shape (P,).

    Returns:
        (T, P) vegetation fractions around 0.5.
    """
    seasons = label + 1
    angle = 2 * np.pi * (seasons[None] * doy[:, None] / 365.0 - phase[None])
    return np.asarray(0.5 + amplitude[None] * np.cos(angle))


def write_series_catalog(
    root: Path | str = SERIES_ROOT,
    seed: int = 0,
    scene_size: int = 256,
    parcel_size: int = 32,
    dates: int = 8,
    year: int = 2023,
) -> SeriesCatalog:
    """Write the seasonal catalog (see the module docs).

    Args:
        root: folder to write into (created).
        seed: seed of the parcels, phases and noise; the same seed writes the same catalog.
        scene_size: side of the scene in pixels (a multiple of ``parcel_size``).
        parcel_size: side of each square parcel in pixels.
        dates: S2 acquisitions over the year, evenly spread (at least 7, so that three
            seasons a year are sampled above their Nyquist rate).
        year: year of the acquisitions.

    Returns:
        where the parts lie.

    Raises:
        ConfigError: for sizes that do not tile or too few dates.
    """
    if parcel_size < 1 or scene_size % parcel_size or scene_size < 2 * parcel_size:
        raise ConfigError(
            f"scene_size={scene_size} must be a multiple of parcel_size={parcel_size} and hold "
            "at least 2 x 2 parcels."
        )
    if dates < 7:
        raise ConfigError(f"dates={dates}: give at least 7 acquisitions a year.")
    root = Path(root)
    catalog = SeriesCatalog(
        root,
        tuple(
            datetime.date(year, 1, 1) + datetime.timedelta(days=int(10 + 365 * k / dates))
            for k in range(dates)
        ),
    )
    catalog.s2.mkdir(parents=True, exist_ok=True)
    catalog.s1.mkdir(parents=True, exist_ok=True)
    rng = numpy_rng(seed)
    side = scene_size // parcel_size
    n = side * side
    label = rng.permutation(np.arange(n) % len(SEASONAL_CLASSES))
    phase = rng.uniform(0, 1, n)
    amplitude = rng.uniform(0.3, 0.42, n)
    # half of each class's parcels are held out
    split = np.empty(n, dtype=object)
    for c in range(len(SEASONAL_CLASSES)):
        members = rng.permutation(np.flatnonzero(label == c))
        split[members[: len(members) // 2]] = "train"
        split[members[len(members) // 2 :]] = "val"
    parcel = np.arange(n).reshape(side, side).repeat(parcel_size, 0).repeat(parcel_size, 1)
    texture = 0.08 * _smooth_noise(rng, scene_size, 8)
    doys = np.array([d.timetuple().tm_yday for d in catalog.dates], dtype=float)
    cover = vegetation(doys, label, phase, amplitude)  # (T, parcels)
    transform = from_origin(_WEST, _NORTH, _RES, _RES)
    for t, day in enumerate(catalog.dates):
        v = np.clip(cover[t][parcel] + texture + rng.normal(0, 0.03, parcel.shape), 0, 1)
        reflectance = (1 - v)[None] * _SOIL[:, None, None] + v[None] * _VEGETATION[:, None, None]
        reflectance = reflectance * rng.normal(1, 0.02, reflectance.shape)
        s2 = np.clip(reflectance, 1, 10_000).astype(np.uint16)
        _write(catalog.s2 / f"S2_{day:%Y%m%d}.tif", s2, transform, 0, S2_BANDS)
        speckle = 10 * np.log10(rng.gamma(4.4, 1 / 4.4, (2, *v.shape)))
        s1 = _S1_SOIL[:, None, None] + _S1_GAIN[:, None, None] * v[None] + speckle
        s1_day = day + datetime.timedelta(days=2)
        _write(
            catalog.s1 / f"S1_{s1_day:%Y%m%d}.tif",
            s1.astype(np.float32),
            transform,
            float("nan"),
            S1_BANDS,
        )
    cells = [
        box(
            _WEST + c * parcel_size * _RES,
            _NORTH - (r + 1) * parcel_size * _RES,
            _WEST + (c + 1) * parcel_size * _RES,
            _NORTH - r * parcel_size * _RES,
        )
        for r in range(side)
        for c in range(side)
    ]
    parcels = gpd.GeoDataFrame(
        {
            "label": label.astype(np.int64),
            "class": [SEASONAL_CLASSES[c] for c in label],
            "split": list(split),
        },
        geometry=cells,
        crs=f"EPSG:{_EPSG}",
    )
    parcels.to_file(catalog.parcels, driver="GPKG")
    log.info("wrote the seasonal catalog to %s (%d dates, %d parcels)", root, dates, n)
    return catalog


def _write(
    path: Path, data: np.ndarray, transform: Any, nodata: float, descriptions: tuple[str, ...]
) -> None:
    """A DEFLATE GeoTIFF, written beside ``path`` then moved onto it."""
    partial = path.with_name(f".{path.name}.partial")
    with rasterio.open(
        partial,
        "w",
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype=data.dtype,
        crs=CRS.from_epsg(_EPSG).to_wkt(),
        transform=transform,
        nodata=nodata,
        compress="deflate",
    ) as dst:
        dst.write(data)
        dst.descriptions = descriptions
    os.replace(partial, path)


class _SeriesSource(MultiBandGeoTIFF):
    """A folder of the seasonal catalog (``paths``: the catalog root or the folder)."""

    folder: ClassVar[str] = "s2"

    def __init__(self, paths: Path | str = SERIES_ROOT, **kwargs: Any) -> None:
        """Open the catalog's folder of this sensor.

        Args:
            paths: the catalog root or the sensor's folder.
            **kwargs: passed to :class:`~geodino.datasets.MultiBandGeoTIFF`.
        """
        root = Path(paths)
        if (root / self.folder).is_dir():
            root = root / self.folder
        super().__init__(root, **kwargs)


class SeriesSentinel2(_SeriesSource):
    """The seasonal catalog's dated S2-like scenes (13 bands)."""

    filename_regex = r"^S2_(?P<date>\d{8})"
    date_format = "%Y%m%d"


class SeriesSentinel1(_SeriesSource):
    """The seasonal catalog's dated S1-like scenes (VV, VH in dB)."""

    folder = "s1"
    band_kind = "sar"
    filename_regex = r"^S1_(?P<date>\d{8})"
    date_format = "%Y%m%d"


__all__ = [
    "SEASONAL_CLASSES",
    "SERIES_ROOT",
    "SeriesCatalog",
    "SeriesSentinel1",
    "SeriesSentinel2",
    "vegetation",
    "write_series_catalog",
]
