"""STAC items as rasters to embed: each item's bands stacked on the grid of its finest band.

``geodino embed --catalog`` embeds the items of a :class:`~geodino.datasets.STACCatalog`
(those that pass its filters, those named, or those under an AOI) as it embeds local
GeoTIFFs. Each item becomes a GDAL VRT held in memory (``/vsimem/``) that stacks the assets
of the chosen bands on the grid of the finest of them, resampled as the catalog resamples
them for training (bilinear where resolutions differ, else nearest), with the catalog's
nodata; its files are read through the catalog's remote settings (``s3://``, ``https://``
hrefs). The item is then cut into windows and written exactly as a local raster is.
"""

import hashlib
import logging
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import shapely
from affine import Affine
from geopandas import GeoDataFrame
from rasterio.io import MemoryFile

from geodino.datasets.remote import gdal_path
from geodino.datasets.stac import STACCatalog
from geodino.errors import DataError
from geodino.inference.embedding import (
    check_share,
    embed_regions,
    output_kind,
    output_paths,
    process_share,
)
from geodino.inference.regions import for_rasters, plan_regions
from geodino.inference.tables import CHUNK_ROWS

log = logging.getLogger(__name__)


#: GDAL's names of the data types a VRT band may have.
GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}


def select_items(
    catalog: STACCatalog, ids: Sequence[str] | None = None, aoi: GeoDataFrame | None = None
) -> np.ndarray:
    """Rows of the catalog's index to embed: the items named, or all, under the AOI.

    Args:
        catalog: the catalog (its filters already applied).
        ids: item ids to embed (default: every item).
        aoi: AOI polygons (any CRS): keep the items whose footprint shares area with them.

    Returns:
        the rows, in catalog order.

    Raises:
        DataError: naming ids the catalog does not hold, or an AOI that covers no item.
    """
    names = np.asarray(catalog.index["id"], dtype=object)
    keep = np.ones(len(names), dtype=bool)
    if ids is not None:
        wanted = set(ids)
        missing = sorted(wanted - set(names))
        if missing:
            raise DataError(
                f"items {missing} are not in {catalog.catalog} (after its filters); "
                f"it holds {len(names)} items, e.g. {list(names[:5])}."
            )
        keep &= np.isin(names, list(wanted))
    if aoi is not None:
        shape = shapely.union_all(aoi.to_crs(catalog.crs).geometry.to_numpy())
        footprints = np.asarray(catalog.index.geometry.array)
        keep &= shapely.area(shapely.intersection(footprints, shape)) > 0
        if not keep.any():
            raise DataError(
                f"the AOI (bounds {[round(v, 6) for v in aoi.total_bounds]} in {aoi.crs}) "
                f"covers none of the {len(set(ids)) if ids is not None else len(names)} "
                f"items{' named' if ids is not None else ''} of {catalog.catalog}; draw it "
                "over the catalog's items."
            )
    return np.flatnonzero(keep)


def item_name(item_id: str) -> str:
    """The file-name stem of an item's outputs (its id, path separators replaced).

    Args:
        item_id: the STAC item id.

    Returns:
        the stem.
    """
    return item_id.replace(os.sep, "_").replace("/", "_")


@dataclass(frozen=True)
class _AssetGrid:
    """An asset file's GDAL path and grid, as its header gives them."""

    path: str
    crs: Any
    transform: Affine
    width: int
    height: int
    dtype: str


def item_vrt(catalog: STACCatalog, row: int) -> str:
    """The VRT (XML) of an item's chosen bands on the grid of its finest band.

    The band files' headers are read (in the caller's GDAL environment, e.g. the catalog's
    remote settings); their pixels are read when the VRT is.

    Args:
        catalog: the catalog.
        row: the item's row in ``catalog.index``.

    Returns:
        the VRT document; its bands are described by the catalog's band names.

    Raises:
        DataError: if a band file cannot be read or the item's assets lie in other CRSs.
    """
    item = catalog.index["id"].iloc[row]
    base = os.path.dirname(os.path.abspath(catalog.catalog))
    grids: dict[str, _AssetGrid] = {}
    for band in catalog.band_assets:
        if band.asset in grids:
            continue
        href = catalog.href(band.asset, row)
        path = gdal_path(href, base)
        try:
            with rasterio.open(path) as src:
                grids[band.asset] = _AssetGrid(
                    path, src.crs, src.transform, src.width, src.height, src.dtypes[0]
                )
        except rasterio.errors.RasterioIOError as error:
            raise DataError(
                f"{href} (asset {band.asset} of item {item} of {catalog.catalog}) cannot be "
                f"read ({error}); check the href, the credentials and catalog.remote."
            ) from None
    finest = min(grids.values(), key=lambda g: g.transform.a)
    crs, grid = finest.crs, finest.transform
    other = sorted(k for k, g in grids.items() if g.crs != crs)
    if other:
        raise DataError(
            f"item {item} of {catalog.catalog}: assets {other} are not in {crs} as its "
            "finest band is; embed needs an item's bands on one CRS."
        )
    dtype = GDAL_TYPES[np.result_type(*(g.dtype for g in grids.values())).name]
    nodata = catalog.effective_nodata
    resampling = catalog.resampling.name
    bands = []
    for number, band in enumerate(catalog.band_assets, start=1):
        asset = grids[band.asset]
        w, h, transform = asset.width, asset.height, asset.transform
        col, top = ~grid @ (transform.c, transform.f)
        scale_x, scale_y = transform.a / grid.a, transform.e / grid.e
        source = "ComplexSource" if nodata is not None else "SimpleSource"
        lines = [
            f'<VRTRasterBand dataType="{dtype}" band="{number}">',
            f"<Description>{escape(band.name)}</Description>",
        ]
        if nodata is not None:
            lines.append(f"<NoDataValue>{nodata!r}</NoDataValue>")
        lines += [
            f'<{source} resampling="{resampling}">',
            f'<SourceFilename relativeToVRT="0">{escape(asset.path)}</SourceFilename>',
            f"<SourceBand>{band.index}</SourceBand>",
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
            f'<DstRect xOff="{col!r}" yOff="{top!r}" xSize="{w * scale_x!r}" '
            f'ySize="{h * scale_y!r}"/>',
        ]
        if nodata is not None:
            lines.append(f"<NODATA>{nodata!r}</NODATA>")
        lines += [f"</{source}>", "</VRTRasterBand>"]
        bands.append("\n".join(lines))
    geotransform = ", ".join(repr(v) for v in grid.to_gdal())
    return "\n".join(
        [
            f'<VRTDataset rasterXSize="{finest.width}" rasterYSize="{finest.height}">',
            f"<SRS>{escape(crs.to_wkt())}</SRS>",
            f"<GeoTransform>{geotransform}</GeoTransform>",
            *bands,
            "</VRTDataset>",
        ]
    )


class ItemRasters:
    """Items of a catalog as VRT files in GDAL's memory, for as long as the context lasts.

    Their paths (``/vsimem/geodino-<catalog hash>/<item id>.vrt``) are the same in every
    process and run, so that an interrupted embedding of them resumes.

    Args:
        catalog: the catalog.
        rows: rows of ``catalog.index`` to make rasters of.
    """

    def __init__(self, catalog: STACCatalog, rows: Sequence[int]) -> None:
        """Remember the items; the VRTs are made when the context is entered."""
        self.catalog = catalog
        self.rows = [int(r) for r in rows]
        self.paths: list[Path] = []
        self.labels: dict[Path, str] = {}
        self._stack = ExitStack()

    def __enter__(self) -> "ItemRasters":
        """Write each item's VRT into GDAL's memory.

        Returns:
            self, with :attr:`paths` (one per row) and :attr:`labels` (path -> ``item ID
            of CATALOG``) filled in.
        """
        source = os.path.abspath(self.catalog.catalog)
        folder = "geodino-" + hashlib.sha256(source.encode()).hexdigest()[:16]
        try:
            for row in self.rows:
                item = str(self.catalog.index["id"].iloc[row])
                document = item_vrt(self.catalog, row).encode()
                memory = self._stack.enter_context(
                    MemoryFile(document, dirname=folder, filename=f"{item_name(item)}.vrt")
                )
                path = Path(memory.name)
                self.paths.append(path)
                self.labels[path] = f"item {item} of {self.catalog.catalog}"
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Free the VRTs."""
        self._stack.close()


#: Suffixes of geodino configs, whose ``data.init_args.dataset`` is a STACCatalog.
CONFIG_SUFFIXES = (".yaml", ".yml")


def open_catalog(catalog: STACCatalog | str | Path, bands: Sequence[str] | None) -> STACCatalog:
    """The catalog to embed from: as given, from a config, or a catalog file.

    Args:
        catalog: a :class:`~geodino.datasets.STACCatalog`; a geodino config (``.yaml``)
            whose ``data.init_args.dataset`` is one (its filters, nodata and remote
            settings are used); or a STAC-GeoParquet / ItemCollection JSON file.
        bands: the backbone's bands (chosen by asset key, name or common name), which
            replace a config's; None: the config's, or every band of the file.

    Returns:
        the catalog.

    Raises:
        DataError: for a config without a STACCatalog dataset or with bad arguments.
    """
    if isinstance(catalog, STACCatalog):
        return catalog
    if Path(catalog).suffix.lower() not in CONFIG_SUFFIXES:
        return STACCatalog(catalog, bands=list(bands) if bands else None)
    from jsonargparse import ArgumentParser

    from geodino.config import read_config

    data = read_config(catalog).get("data") or {}
    dataset = (data.get("init_args") or {}).get("dataset") if isinstance(data, dict) else None
    if not isinstance(dataset, dict) or not str(dataset.get("class_path", "")).endswith(
        "STACCatalog"
    ):
        raise DataError(
            f"config {catalog} has no data.init_args.dataset of class "
            "geodino.datasets.STACCatalog; pass its catalog file (.parquet, .json) instead."
        )
    arguments = dict(dataset.get("init_args") or {})
    if bands:
        arguments["bands"] = list(bands)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(STACCatalog, "dataset", skip={"transforms"})
    try:
        parsed = parser.parse_object({"dataset": arguments})
    except Exception as error:  # jsonargparse reports every config problem this way
        raise DataError(f"config {catalog}, data.init_args.dataset: {error}") from None
    source: STACCatalog = parser.instantiate(parsed).dataset
    return source


def embed_items(
    weights: str | Path,
    catalog: STACCatalog | str | Path,
    out: str | Path,
    items: Sequence[str] | None = None,
    aoi: Any = None,
    pca: int | None = None,
    chip_size: int | None = None,
    batch_size: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    chunk_rows: int = CHUNK_ROWS,
    rank: int | None = None,
    world_size: int | None = None,
) -> list[Path]:
    """Embed items of a STAC catalog as :func:`~geodino.inference.embed` embeds rasters.

    The same outputs as for local GeoTIFFs holding the items' bands: one COG per item
    (``OUT_<item id>.tif``, or ``out`` for a single item) or one chip table, resumable, and
    shared across processes (process ``rank`` embeds items ``rank``, ``rank +
    world_size``, ... of those chosen, and only reads those). ``source_raster`` (COGs) and
    the ``raster`` column (tables) name the item and the catalog.

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        catalog: a :class:`~geodino.datasets.STACCatalog` (its band choice, filters,
            nodata and remote settings are used: build it with the backbone's bands), or a
            STAC-GeoParquet / ItemCollection JSON file (read for the backbone's bands).
        out: as for :func:`~geodino.inference.embed`.
        items: ids of the items to embed (default: every item that passes the filters).
        aoi: AOI polygons (file or GeoDataFrame): embed the items under them, inside them.
        pca: reduce embeddings to this many principal components (fitted on all items).
        chip_size: window side in pixels (default: the backbone's training size).
        batch_size: windows per forward pass.
        overwrite: replace existing outputs and discard saved parts.
        progress: show progress bars.
        chunk_rows: rows of a chip table written at a time.
        rank: this process's share of the items (default: from the environment).
        world_size: processes sharing the items (default: from the environment).

    Returns:
        the files this process wrote.

    Raises:
        DataError: for unknown item ids, an AOI over no item, an item that cannot be read,
            bands the backbone does not take, and the errors of :func:`embed`.
    """
    from geodino.aoi import read_aoi
    from geodino.export import load_backbone

    out = Path(out)
    as_raster = output_kind(out)
    backbone = load_backbone(weights)
    source = open_catalog(catalog, backbone.band_names)
    rank, world_size = process_share(rank, world_size)
    check_share(out, as_raster, pca, rank, world_size)
    polygons = read_aoi(aoi) if aoi is not None else None
    rows = select_items(source, items, polygons)
    ids = [str(source.index["id"].iloc[r]) for r in rows]
    targets = output_paths(out, [item_name(i) for i in ids]) if as_raster else [out]
    if world_size > 1:
        rows, targets = rows[rank::world_size], targets[rank::world_size]
        if not len(rows):
            log.info("process %d of %d: no item left to embed", rank, world_size)
            return []
    # GDAL's options are global to the process: one catalog, entered for the whole run
    with source.remote.env(), ItemRasters(source, rows.tolist()) as rasters:
        backbone = for_rasters(backbone, rasters.paths)
        regions = plan_regions(backbone, rasters.paths, polygons)
        by_path = dict(zip(rasters.paths, targets, strict=True)) if as_raster else {}
        for region in regions:
            region.label = rasters.labels[region.path]
        return embed_regions(
            backbone,
            weights,
            regions,
            [by_path[r.path] for r in regions] if as_raster else targets,
            out,
            aoi=aoi,
            pca=pca,
            chip_size=chip_size,
            batch_size=batch_size,
            overwrite=overwrite,
            progress=progress,
            chunk_rows=chunk_rows,
            rank=rank,
            world_size=world_size,
        )
