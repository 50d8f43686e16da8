"""Fixtures of the geo and folder dataset tests: real GeoTIFFs written with rasterio.

Only opt-in fixtures live here (nothing autouse), so other test modules of this folder are
unaffected.
"""

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin

ROOT = Path(__file__).resolve().parents[2]


class GeoTIFFWriter:
    """Writes small tiled, compressed GeoTIFFs and predictable pixel patterns."""

    @staticmethod
    def write(
        path: Path,
        data: np.ndarray,
        crs: str | None = "EPSG:32631",
        origin: tuple[float, float] = (699000.0, 5000000.0),
        res: float = 10.0,
        nodata: float | None = 0,
        descriptions: tuple[str, ...] | None = None,
        transform: Affine | None = None,
    ) -> Path:
        """Write ``data`` (C, H, W) as a GeoTIFF with 32-px deflate tiles.

        Args:
            path: file to write (parents are created).
            data: pixels, band-first.
            crs: CRS, or None for a raster without one.
            origin: upper-left corner (x, y).
            res: pixel size.
            nodata: nodata value of the file.
            descriptions: band descriptions.
            transform: geotransform (overrides ``origin`` and ``res``).

        Returns:
            the path.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        tiled = data.shape[1] >= 32 and data.shape[2] >= 32
        profile = {
            "driver": "GTiff",
            "height": data.shape[1],
            "width": data.shape[2],
            "count": data.shape[0],
            "dtype": data.dtype,
            "crs": crs,
            "nodata": nodata,
            "transform": transform or from_origin(*origin, res, res),
            "compress": "deflate",
        }
        if tiled:
            profile |= {"tiled": True, "blockxsize": 32, "blockysize": 32}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            if descriptions:
                dst.descriptions = descriptions
        return path

    @staticmethod
    def ramp(bands: int = 3, size: int = 64, dtype: str = "uint16") -> np.ndarray:
        """Band b, row r, column c holds 1000 (b + 1) + 10 r + c: never 0, all distinct.

        Args:
            bands: band count.
            size: height and width.
            dtype: pixel type.

        Returns:
            the (bands, size, size) array.
        """
        b, r, c = np.meshgrid(np.arange(bands), np.arange(size), np.arange(size), indexing="ij")
        return (1000 * (b + 1) + 10 * r + c).astype(dtype)


@pytest.fixture
def geotiff() -> GeoTIFFWriter:
    """Writer of small real GeoTIFFs."""
    return GeoTIFFWriter()


@pytest.fixture
def run_doc_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], dict]:
    """Runs the ``python`` snippets of a docs page in order, in a fresh folder.

    Returns:
        a function taking the page path relative to ``docs/`` and returning the
        snippets' namespace.
    """
    monkeypatch.chdir(tmp_path)

    def run(page: str) -> dict:
        text = (ROOT / "docs" / page).read_text()
        namespace: dict = {"__name__": "docs"}
        blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
        assert blocks, f"docs/{page} has no python snippet"
        for number, block in enumerate(blocks, 1):
            exec(compile(block, f"docs/{page} snippet {number}", "exec"), namespace)
        return namespace

    return run
