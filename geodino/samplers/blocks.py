"""The internal tiling (blocks) of raster files, and chips aligned with it."""

import math
from typing import Protocol, runtime_checkable

import numpy as np
from pyproj import CRS
from torchgeo.datasets import GeoDataset

from geodino.datasets.footprints import FootprintGrid
from geodino.errors import DataError


@runtime_checkable
class KnownTiling(Protocol):
    """A source that knows its files' grids and tiling without opening them (STAC items)."""

    def block_grids(self, res: tuple[float, float]) -> np.ndarray:
        """Rows as :func:`block_grids` gives them."""
        ...


def block_grids(dataset: GeoDataset, res: tuple[float, float]) -> np.ndarray:
    """The internal tiling of every file read on the dataset's own grid.

    A source that knows its tiling (:class:`KnownTiling`, e.g. a STAC catalog, whose items'
    grids are in its index) gives it; otherwise every file is opened.

    Args:
        dataset: a raster dataset whose index lists its files (``filepath``); of a
            :class:`~geodino.datasets.PairedDataset`, the first modality (it sets the grid).
        res: the dataset's resolution ``(x, y)``.

    Returns:
        one row per file in the dataset's CRS and resolution: footprint (xmin, ymin, xmax,
        ymax), origin (left, top), size and block size in pixels (width, height, block width,
        block height); files read through a warp are left out.

    Raises:
        DataError: if the dataset does not list its files.
    """
    import rasterio

    from geodino.datasets.protocols import Modalities

    source = next(iter(dataset.modalities.values())) if isinstance(dataset, Modalities) else dataset
    if isinstance(source, KnownTiling):
        return source.block_grids(res)
    if "filepath" not in source.index.columns:
        raise DataError(
            f"block_aligned needs a raster dataset whose index lists its files; "
            f"{type(source).__name__} does not. Set block_aligned to false."
        )
    rows = []
    for path in dict.fromkeys(source.index.filepath):
        with rasterio.open(path) as src:
            t = src.transform
            same_grid = (
                src.crs is not None
                and CRS.from_user_input(src.crs) == source.crs
                and math.isclose(t.a, res[0])
                and math.isclose(-t.e, res[1])
            )
            if not same_grid:
                continue
            block_h, block_w = src.block_shapes[0]
            left, bottom, right, top = src.bounds
            rows.append(
                (left, bottom, right, top, t.c, t.f, src.width, src.height, block_w, block_h)
            )
    return np.array(rows, dtype=np.float64).reshape(-1, 10)


def align_to_blocks(
    blocks: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    size: tuple[float, float],
    res: tuple[float, float],
    footprints: FootprintGrid | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Lower-left corners of chips moved onto the tiling of the file under each chip's centre.

    Each chip keeps the block it starts in and moves by less than a block, to the nearest of
    the ``slack + 1`` offsets at which it spans the fewest blocks; chips whose centre lies in
    no listed file stay where they are (the first listed file counts where several hold it).

    Args:
        blocks: the rows of :func:`block_grids`.
        x0: chips' left edges in CRS units.
        y0: chips' bottom edges in CRS units.
        size: chip size ``(height, width)`` in CRS units.
        res: the dataset's resolution ``(x, y)``.
        footprints: the files' footprints (``blocks[:, :4]``) bucketed once, so that each
            call reads a few of them instead of all (built here when None).

    Returns:
        the moved left and bottom edges.
    """
    h, w = size
    b = blocks
    grid = FootprintGrid(b[:, :4]) if footprints is None else footprints
    f = grid.containing(x0 + w / 2, y0 + h / 2)
    hit = f >= 0
    f = np.maximum(f, 0)
    left, top, width, height, block_w, block_h = (b[f, k] for k in range(4, 10))
    rx, ry = res
    col = _snap_to_block(np.round((x0 - left) / rx), w / rx, width, block_w)
    row = _snap_to_block(np.round((top - (y0 + h)) / ry), h / ry, height, block_h)
    return (np.where(hit, left + col * rx, x0), np.where(hit, top - row * ry - h, y0))


def _snap_to_block(
    first: np.ndarray, size: float, total: np.ndarray, block: np.ndarray
) -> np.ndarray:
    """First pixels moved to the aligned offset of their block, kept inside the file."""
    chip = round(size)
    slack = np.ceil(chip / block) * block - chip
    k = np.floor(first / block)
    offset = first - k * block
    aligned = k * block + np.floor(offset * (slack + 1) / block)
    clipped: np.ndarray = np.clip(aligned, 0, np.maximum(total - chip, 0))
    return clipped
