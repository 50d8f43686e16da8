"""Generated GeoTIFF catalogs on which a pretraining recipe must not collapse.

Each catalog is a few georeferenced scenes (UTM 33N, 10 m pixels) made of square tiles of
one class each, for pretraining, and class folders of single-class chips, for k-NN. The
classes differ in one way only, so each catalog tests one thing a backbone must learn:

- ``spectral8``: 8 bands, four classes with different spectra and the same mild texture;
- ``texture13_fine`` / ``texture13_coarse``: 13 bands, four classes with one and the same
  spectrum that differ only in texture (smooth noise, stripes, checkerboard, blocky
  noise) at a period of 2 px or 6 px;
- ``sar2``: 2 bands (VV, VH in dB), four classes of gamma-distributed speckle (4 looks)
  around different backscatter, urban with bright point scatterers.

Used by ``benchmarks/recipe_stability.py`` and ``tests/test_recipe_stability.py``.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy.ndimage import gaussian_filter

from geodino.datasets.geotiff import MultiBandGeoTIFF
from geodino.seeding import numpy_rng

#: Catalog names, in table order.
CATALOGS = ("spectral8", "texture13_fine", "texture13_coarse", "sar2")
CLASSES = {
    "spectral8": ["water", "forest", "crops", "urban"],
    "texture13_fine": ["smooth", "stripes", "checker", "blocky"],
    "texture13_coarse": ["smooth", "stripes", "checker", "blocky"],
    "sar2": ["water", "crops", "forest", "urban"],
}
_SCALES = {"texture13_fine": 2, "texture13_coarse": 6}
#: Mean surface reflectance x 10,000 of the spectral classes over 8 bands.
_SPECTRA8 = np.array(
    [
        [600, 500, 350, 250, 150, 100, 60, 40],
        [300, 500, 300, 2800, 3000, 1500, 1300, 700],
        [700, 900, 1000, 2200, 2400, 2600, 2400, 1900],
        [1400, 1500, 1600, 1800, 1900, 2300, 2500, 2400],
    ],
    dtype=np.float64,
)
#: The one spectrum of the texture classes, 13 bands (vegetation-like).
_SPECTRUM13 = np.array(
    [400, 500, 700, 500, 1200, 2200, 2600, 2800, 2900, 3000, 600, 2000, 1100], dtype=np.float64
)
#: Mean backscatter (dB) of the SAR classes, VV then VH.
_SAR_DB = np.array([[-22.0, -28.0], [-11.0, -18.0], [-8.0, -13.0], [-4.0, -12.0]])
_CRS = CRS.from_epsg(32633)
_RES = 10.0


class SARGeoTIFF(MultiBandGeoTIFF):
    """GeoTIFFs of SAR backscatter in dB (SAR photometric augmentations apply)."""

    band_kind = "sar"


@dataclass(frozen=True)
class StabilityCatalog:
    """A written catalog.

    Args:
        name: catalog name (one of :data:`CATALOGS`).
        scenes: folder of the pretraining scenes.
        labelled: class-folder root of the k-NN chips (with ``labels.txt``).
        band_names: band names, as the files describe them.
    """

    name: str
    scenes: Path
    labelled: Path
    band_names: list[str]

    def dataset(self) -> MultiBandGeoTIFF:
        """The TorchGeo dataset of the scenes."""
        cls = SARGeoTIFF if self.name == "sar2" else MultiBandGeoTIFF
        return cls(self.scenes)


def band_names(name: str) -> list[str]:
    """Band names of a catalog."""
    if name == "sar2":
        return ["VV", "VH"]
    count = 8 if name == "spectral8" else 13
    return [f"B{i + 1:02d}" for i in range(count)]


def _pattern(kind: int, size: int, scale: int, rng: np.random.Generator) -> np.ndarray:
    """A zero-mean, unit-std texture of ``kind`` (smooth, stripes, checker, blocky)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = 2 * scale
    if kind == 0:
        p = gaussian_filter(rng.normal(size=(size, size)), sigma=scale)
    elif kind == 1:
        horizontal = rng.random() < 0.5
        phase = rng.uniform(0, period)
        p = np.sin(2 * np.pi * ((yy if horizontal else xx) + phase) / period)
    elif kind == 2:
        oy, ox = rng.integers(0, period, size=2)
        p = (((yy + oy) // scale + (xx + ox) // scale) % 2) * 2.0 - 1.0
    else:
        cells = -(-size // scale) + 1
        coarse = rng.normal(size=(cells, cells))
        p = np.kron(coarse, np.ones((scale, scale)))[:size, :size]
    return (p - p.mean()) / (p.std() + 1e-9)


def class_patch(name: str, label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One square patch of a class.

    Args:
        name: catalog name.
        label: class index.
        size: side in pixels.
        rng: the generator to draw from.

    Returns:
        (C, size, size): uint16 reflectance x 10,000, or float32 dB for ``sar2``.
    """
    if name == "sar2":
        power = 10 ** (_SAR_DB[label][:, None, None] / 10) * np.ones((2, size, size))
        if label == 3:  # bright point scatterers of buildings
            points = rng.random((size, size)) < 0.03
            power = power * np.where(points, 30.0, 1.0)
        speckle = rng.gamma(4.0, 1.0 / 4.0, size=power.shape)
        return (10 * np.log10(power * speckle)).astype(np.float32)
    if name == "spectral8":
        texture = gaussian_filter(rng.normal(size=(size, size)), sigma=3)
        texture = texture / (texture.std() + 1e-9)
        spectrum = _SPECTRA8[label][:, None, None]
        image = spectrum * (1 + 0.08 * texture) + rng.normal(0, 20, (8, size, size))
    else:
        texture = _pattern(label, size, _SCALES[name], rng)
        spectrum = _SPECTRUM13[:, None, None]
        image = spectrum * (1 + 0.25 * texture) + rng.normal(0, 20, (13, size, size))
    return image.clip(1, 10_000).astype(np.uint16)


def _write(path: Path, data: np.ndarray, names: list[str], x0: float, y0: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": _CRS,
        "transform": from_origin(x0, y0, _RES, _RES),
        "tiled": True,
        "blockxsize": 128,
        "blockysize": 128,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, band in enumerate(names, start=1):
            dst.set_band_description(i, band)


def write_catalog(
    name: str,
    root: Path,
    seed: int = 0,
    scenes: int = 3,
    grid: int = 8,
    tile: int = 64,
    chip: int = 56,
    chips_per_class: int = 24,
) -> StabilityCatalog:
    """Write a catalog's scenes and k-NN class folders under ``root``.

    Args:
        name: one of :data:`CATALOGS`.
        root: folder to write into.
        seed: seed of every draw.
        scenes: number of pretraining scenes.
        grid: tiles per scene side.
        tile: tile side in pixels.
        chip: side of the k-NN chips.
        chips_per_class: k-NN chips per class.

    Returns:
        the catalog.

    Raises:
        ValueError: for an unknown catalog name.
    """
    if name not in CATALOGS:
        raise ValueError(f"unknown catalog {name!r}; choose one of {list(CATALOGS)}.")
    names = band_names(name)
    n_classes = len(CLASSES[name])
    for s in range(scenes):
        rng = numpy_rng(seed, CATALOGS.index(name), s)
        labels = rng.permutation(np.arange(grid * grid) % n_classes).reshape(grid, grid)
        rows = [
            np.concatenate([class_patch(name, int(c), tile, rng) for c in row], axis=2)
            for row in labels
        ]
        scene = np.concatenate(rows, axis=1)
        # scenes side by side, 1 km apart, in one UTM zone
        x0 = 400_000 + s * (grid * tile * _RES + 1_000)
        _write(root / "scenes" / f"scene{s}.tif", scene, names, x0, 5_000_000)
    labelled = root / "labelled"
    rng = numpy_rng(seed, CATALOGS.index(name), 1_000)
    for label, cls in enumerate(CLASSES[name]):
        for i in range(chips_per_class):
            data = class_patch(name, label, chip, rng)
            x0 = 600_000 + (label * chips_per_class + i) * chip * _RES
            _write(labelled / cls / f"{i:03d}.tif", data, names, x0, 4_000_000)
    lines = [f"{i},{cls}" for i, cls in enumerate(CLASSES[name])]
    (labelled / "labels.txt").write_text("\n".join(lines) + "\n")
    return StabilityCatalog(name, root / "scenes", labelled, names)
