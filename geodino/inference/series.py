"""Embeddings of a date stack: one embedding per location from every acquisition under it.

The rasters of a stack are acquisitions of one grid (same CRS, transform and size), dated by
their file names (a regex with a ``(?P<date>...)`` group, TorchGeo's convention). Each window
of the grid is read on every date, in date order, and the time-series backbone (a
:class:`~geodino.models.FusionViT`, which embeds each date with its day of year and pools the
dates) turns the (T, C, H, W) stack into one CLS embedding, written as one row of a chip table
with the window's polygon. A date whose window holds no valid pixel counts as missing there
(day of year 0), as :class:`~geodino.datasets.TimeSeries` pads.
"""

import datetime
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import torch

from geodino.errors import ConfigError, DataError
from geodino.inference.provenance import describe, provenance
from geodino.inference.regions import RasterRegion, chip_pixels, plan_regions, read_window
from geodino.inference.tables import CHUNK_ROWS, rechunk, table_format, vector_columns, write_table

if TYPE_CHECKING:
    from geopandas import GeoDataFrame

    from geodino.export import PretrainedBackbone

log = logging.getLogger(__name__)


def dated_rasters(
    rasters: Sequence[str | Path], date_regex: str, date_format: str = "%Y%m%d"
) -> list[tuple[datetime.date, Path]]:
    """The rasters of a date stack with their dates, in date order.

    Args:
        rasters: GeoTIFF files, or folders of them.
        date_regex: regex of the file names with a ``(?P<date>...)`` group.
        date_format: ``strptime`` format of the date group.

    Returns:
        ``(date, path)`` pairs sorted by date.

    Raises:
        ConfigError: if the regex has no ``date`` group.
        DataError: if a file name does not match, or its date does not parse.
    """
    if "(?P<date>" not in date_regex:
        raise ConfigError(
            f"--date_regex {date_regex!r} has no (?P<date>...) group; e.g. "
            r"'S2_(?P<date>\d{8})' with --date_format '%Y%m%d'."
        )
    pattern = re.compile(date_regex)
    files: list[Path] = []
    for path in map(Path, rasters):
        files.extend(sorted(path.glob("*.tif")) if path.is_dir() else [path])
    out = []
    for path in files:
        match = pattern.search(path.name)
        if match is None:
            raise DataError(
                f"raster {path.name} does not match --date_regex {date_regex!r}; name the "
                "files with their dates or adjust the regex."
            )
        try:
            day = datetime.datetime.strptime(match.group("date"), date_format).date()
        except ValueError:
            raise DataError(
                f"raster {path.name}: {match.group('date')!r} is not a date of format "
                f"{date_format!r}; pass the --date_format of the names."
            ) from None
        out.append((day, path))
    if not out:
        raise DataError(f"no GeoTIFF among {list(map(str, rasters))}; pass the dated rasters.")
    return sorted(out)


def _check_grid(paths: Sequence[Path]) -> None:
    """Refuse a stack whose rasters lie on different grids."""
    with rasterio.open(paths[0]) as first:
        grid = (first.crs, first.transform, first.width, first.height, first.count)
    for path in paths[1:]:
        with rasterio.open(path) as src:
            if (src.crs, src.transform, src.width, src.height, src.count) != grid:
                raise DataError(
                    f"raster {path.name} is not on the grid of {paths[0].name} (CRS, transform, "
                    "size and band count must match): a stack is read window by window on one "
                    "grid; warp the dates onto it first (gdalwarp -tr/-te/-t_srs)."
                )


def series_batches(
    backbone: "PretrainedBackbone",
    region: RasterRegion,
    stack: Sequence[tuple[datetime.date, Path]],
    chip_size: int,
    batch_size: int,
) -> Iterator[tuple[list[tuple[int, int, int, int]], np.ndarray]]:
    """CLS embeddings of a region's windows, each read on every date of the stack.

    Args:
        backbone: a time-series backbone.
        region: the windows' region (on the stack's grid).
        stack: ``(date, path)`` of each acquisition, in date order.
        chip_size: window side in pixels.
        batch_size: windows per forward pass.

    Yields:
        a batch's windows and their (B, D) CLS embeddings, NaN for a window without a valid
        pixel on any date.
    """
    windows = region.windows(chip_size // region.patch)
    days = torch.tensor([day.timetuple().tm_yday for day, _ in stack], dtype=torch.float32)
    sources = [rasterio.open(path) for _, path in stack]
    try:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            images = torch.from_numpy(
                np.stack(
                    [np.stack([read_window(src, region, w) for src in sources]) for w in batch]
                )
            )
            # a date with nothing valid in the window is a missing acquisition there; a
            # window with no valid date at all goes through whole and comes out as NaN
            observed = ~torch.isnan(images).all(dim=(2, 3, 4))
            empty = ~observed.any(1, keepdim=True)
            doy = torch.where(observed | empty, days, 0.0)
            cls = backbone.tokens(images, doy)[:, 0].float()
            yield batch, cls.masked_fill(empty, float("nan")).numpy()
    finally:
        for src in sources:
            src.close()


def embed_series(
    weights: str | Path,
    rasters: Sequence[str | Path],
    out: str | Path,
    date_regex: str,
    date_format: str = "%Y%m%d",
    aoi: Any = None,
    chip_size: int | None = None,
    batch_size: int = 16,
    overwrite: bool = False,
) -> Path:
    """Embed a date stack with a time-series backbone: a chip table, one row per location.

    Args:
        weights: a ``geodino export`` folder or ``geodino fit`` checkpoint of a time-series
            backbone (a FusionViT).
        rasters: the stack's GeoTIFFs (or folders of them), one per date, on one grid.
        out: ``.gpkg``, ``.fgb``, ``.parquet`` or ``.geojson`` table of window polygons with
            their CLS embeddings (``emb_000``...).
        date_regex: regex of the file names with a ``(?P<date>...)`` group.
        date_format: ``strptime`` format of the date group.
        aoi: AOI polygons (file or GeoDataFrame): only embed inside them.
        chip_size: window side in pixels (default: the backbone's training size).
        batch_size: windows per forward pass.
        overwrite: replace an existing output.

    Returns:
        the written table.

    Raises:
        DataError: for an output that is not a table, an existing output, a backbone that
            takes no time series, rasters off one grid or without the backbone's bands.
    """
    from geodino.export import load_backbone
    from geodino.inference.regions import for_rasters

    out = Path(out)
    table_format(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} exists; pass --overwrite true to replace it.")
    stack = dated_rasters(rasters, date_regex, date_format)
    paths = [path for _, path in stack]
    backbone = for_rasters(load_backbone(weights), paths)
    if not backbone.takes_series:
        raise DataError(
            f"{weights} is a single-date backbone; a date stack needs a time-series one "
            "(trained with modalities, e.g. configs/s2_series.yaml), or embed each date "
            "without --date_regex."
        )
    _check_grid(paths)
    chip = chip_pixels(backbone, chip_size)
    region = plan_regions(backbone, paths[:1], aoi)[0]

    def frames() -> Iterator["GeoDataFrame"]:
        import geopandas as gpd

        p = region.patch
        for windows, cls in series_batches(backbone, region, stack, chip, batch_size):
            yield gpd.GeoDataFrame(
                {
                    "row": [region.row + w[0] * p for w in windows],
                    "col": [region.col + w[1] * p for w in windows],
                    "size": [w[2] * p for w in windows],
                    "dates": len(stack),
                    **vector_columns(cls),
                },
                geometry=[region.polygon(w) for w in windows],
                crs=region.crs,
            )

    metadata = {
        **provenance(backbone, weights, chip),
        "dates": ",".join(f"{day:%Y-%m-%d}" for day, _ in stack),
    }
    rows = write_table(
        out,
        rechunk(frames(), CHUNK_ROWS),
        region.crs,
        metadata,
        description=f"geodino series embeddings (CLS of {len(stack)} dates): {describe(metadata)}",
    )
    log.info("embedded %d locations of %d dates into %s", rows, len(stack), out)
    return out


__all__ = ["dated_rasters", "embed_series", "series_batches"]
