"""An 8-band commercial sensor for the demo: WorldView-3-like scenes derived from its S2 scenes.

Each WorldView-3 multispectral band (``coastal`` ... ``nir2``, :data:`geodino.bands.SENSOR_BANDS`)
is the Sentinel-2 reflectance interpolated linearly in wavelength at the band's centre (B09 and
B10, atmospheric bands, left out), on the same 10 m grids, so that the demo's land-cover labels
hold for it too. A third sensor with its own band set, for mixed-sensor pretraining.
"""

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rasterio

from geodino.bands import SENSOR_BANDS
from geodino.datasets.geotiff import MultiBandGeoTIFF
from geodino.datasets.sentinel import S2_BANDS
from geodino.demo.catalog import DEFAULT_ROOT, DemoCatalog
from geodino.errors import DataError

#: The sensor whose bands the scenes carry.
SENSOR = "worldview3"
#: Its band names, in channel order.
EIGHT_BANDS: tuple[str, ...] = tuple(SENSOR_BANDS[SENSOR])
#: Folder of the scenes inside a demo catalog.
FOLDER = "wv3"
#: Sentinel-2 bands the interpolation reads (atmospheric B09 and B10 left out).
_SURFACE = [b for b in S2_BANDS if b not in ("B09", "B10")]


def resampling_matrix() -> np.ndarray:
    """Weights that map the 13 Sentinel-2 bands to the 8 bands, linear in wavelength.

    Returns:
        (8, 13) float64 weights, each row summing to 1.
    """
    s2 = SENSOR_BANDS["sentinel2"]
    centres = np.array([s2[b] for b in _SURFACE])
    matrix = np.zeros((len(EIGHT_BANDS), len(S2_BANDS)))
    for row, band in enumerate(EIGHT_BANDS):
        wavelength = SENSOR_BANDS[SENSOR][band]
        for col, weight in enumerate(np.eye(len(_SURFACE))):
            # np.interp holds the end values beyond the first and last centres
            share = float(np.interp(wavelength, centres, weight))
            if share:
                matrix[row, S2_BANDS.index(_SURFACE[col])] = share
    return matrix


def write_eightband_scenes(root: Path | str = DEFAULT_ROOT) -> Path:
    """Write (once) the 8-band scenes of a demo catalog into ``<root>/wv3``.

    Args:
        root: a written demo catalog.

    Returns:
        the folder of the scenes.

    Raises:
        DataError: if ``root`` holds no complete demo catalog.
    """
    catalog = DemoCatalog.at(root)
    if not catalog.complete():
        raise DataError(
            f"{catalog.root} holds no complete demo catalog (missing {catalog.missing()[:3]}); "
            f"write it first with `geodino demo-data --out {catalog.root}`."
        )
    out = catalog.root / FOLDER
    out.mkdir(exist_ok=True)
    matrix = resampling_matrix()
    for scene in sorted(catalog.s2.glob("*.tif")):
        target = out / scene.name
        if target.is_file() and target.stat().st_mtime >= scene.stat().st_mtime:
            continue
        with rasterio.open(scene) as src:
            s2 = src.read().astype(np.float64)
            profile = src.profile
            valid = (s2 != src.nodata).all(0)
        eight = np.einsum("es,shw->ehw", matrix, s2)
        data = np.where(valid, np.clip(np.rint(eight), 1, 65535), 0).astype(np.uint16)
        profile.update(count=len(EIGHT_BANDS))
        partial = target.with_name(f".{target.name}.partial")
        with rasterio.open(partial, "w", **profile) as dst:
            dst.write(data)
            dst.descriptions = EIGHT_BANDS
        os.replace(partial, target)
    return out


class DemoWorldView3(MultiBandGeoTIFF):
    """The demo's 8-band WorldView-3-like scenes, written from its S2 scenes on first use.

    Args:
        paths: the demo catalog folder.
        **kwargs: more :class:`~geodino.datasets.MultiBandGeoTIFF` arguments.
    """

    #: The sensor whose band table names the bands.
    sensor: ClassVar[str] = SENSOR

    def __init__(self, paths: Path | str = DEFAULT_ROOT, **kwargs: Any) -> None:
        """Write the scenes if needed and index them."""
        super().__init__(write_eightband_scenes(paths), **kwargs)


__all__ = ["EIGHT_BANDS", "DemoWorldView3", "resampling_matrix", "write_eightband_scenes"]
