"""A STAC catalog of Cloud-Optimised GeoTIFFs as a TorchGeo raster dataset, indexed from metadata.

:class:`STACCatalog` reads a STAC-GeoParquet file (the ``stac-geoparquet`` layout: one row per
item, item properties as columns, an ``assets`` struct of ``href``, ``eo:bands`` /
``raster:bands``, ``proj:*``) or a STAC ItemCollection JSON, and builds TorchGeo's
spatio-temporal index from the projection metadata alone (``proj:code``/``proj:epsg``,
``proj:transform``, ``proj:shape``, ``datetime``): no raster is opened until a chip is read,
and the index is built with array operations (a million items in seconds). Chips are read
from the assets' hrefs, local or remote (:mod:`geodino.datasets.remote`), through TorchGeo's
merge as :class:`~geodino.datasets.Sentinel2` reads per-band files: bands at 20 or 60 m are
resampled onto the grid of the finest band, items in other CRSs (UTM zones) are warped.
"""

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import rasterio
import rasterio.merge
import shapely
import torch
from geopandas import GeoDataFrame
from pyproj import CRS, Transformer
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import calculate_default_transform
from torchgeo.datasets.utils import array_to_tensor

from geodino.datasets.geotiff import (
    RAW_DTYPES,
    MultiBandGeoTIFF,
    RasterInfo,
    _Handle,
    resolve_nodata,
)
from geodino.datasets.handles import OpenFiles, open_file_budget
from geodino.datasets.remote import RemoteSettings, gdal_path, is_transient
from geodino.errors import DataError

log = logging.getLogger(__name__)

#: Media types and suffixes of assets that hold rasters GDAL reads well remotely.
_TIFF = ("image/tiff", "image/vnd.stac.geotiff", "application=geotiff")
#: Asset roles that never hold the bands a model reads.
_NOT_DATA = {"thumbnail", "overview", "metadata", "visual-preview"}


@dataclass(frozen=True)
class BandAsset:
    """Where a chosen band lives in each item.

    Args:
        name: the name the band is returned under (as it was asked for).
        asset: the asset key.
        index: the band's 1-based index in the asset's file.
    """

    name: str
    asset: str
    index: int


@dataclass(frozen=True)
class _AssetInfo:
    """What an asset's metadata (its first non-null entry) says about its bands."""

    key: str
    names: tuple[str, ...]
    common_names: tuple[str | None, ...]
    nodata: tuple[float | None, ...]
    tiff: bool
    data: bool


#: Fields of an asset that indexing and reading use (the rest is never read from Parquet).
_ASSET_FIELDS = ("href", "proj:transform", "proj:shape", "proj:code", "proj:epsg")
#: Item columns too large to be worth reading for an index (nested, or not properties).
_SKIPPED = {"assets", "links", "geometry", "bbox", "stac_extensions"}


@dataclass
class CatalogItems:
    """The items of a STAC catalog: their properties, and what their assets hold.

    Args:
        path: the catalog file.
        properties: one row per item: ``id``, ``datetime`` and the other properties (and
            item-level ``proj:*``); the assets, links and geometry are left out.
        infos: what each asset holds (from the first items that have it).
        load: reads the index fields (:data:`_ASSET_FIELDS`) of some assets, one struct
            array per asset key.
    """

    path: Path
    properties: pa.Table
    infos: list[_AssetInfo]
    load: Callable[[Sequence[str]], dict[str, pa.StructArray]]


def read_items(path: str | Path) -> CatalogItems:
    """The items of a STAC-GeoParquet file or a STAC ItemCollection JSON.

    Of a Parquet file only the item properties and, later, the index fields of the chosen
    assets are read (a tenth of a Sentinel-2 catalog's bytes). JSON items are laid out as
    stac-geoparquet lays them out: item properties as columns, ``assets`` as a struct.

    Args:
        path: ``.parquet``/``.geoparquet``, or ``.json``/``.geojson`` (an ItemCollection,
            a FeatureCollection of items or a list of items).

    Returns:
        the items.

    Raises:
        DataError: if the file is missing, unreadable or holds no items.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"STAC catalog {path} does not exist; write one with `geodino catalog` or point "
            "`catalog` at a STAC-GeoParquet or ItemCollection JSON file."
        )
    try:
        if path.suffix.lower() in (".json", ".geojson"):
            return _in_memory(_json_items(json.loads(path.read_text()), path), path)
        return _parquet_items(path)
    except (OSError, ValueError, pa.ArrowException) as error:
        raise DataError(
            f"STAC catalog {path} cannot be read ({str(error).splitlines()[0]}); it must be "
            "STAC-GeoParquet (stac-geoparquet, rustac or `geodino catalog`) or an "
            "ItemCollection JSON."
        ) from None


def _check_layout(path: Path, names: Sequence[str], rows: int) -> None:
    missing = [c for c in ("id", "assets") if c not in names]
    if missing:
        raise DataError(
            f"STAC catalog {path} has no {missing} column(s) (columns: {list(names)[:12]}); "
            "it is not in the stac-geoparquet layout of items."
        )
    if rows == 0:
        raise DataError(f"STAC catalog {path} holds no items; widen the search that wrote it.")


def _in_memory(table: pa.Table, path: Path) -> CatalogItems:
    _check_layout(path, table.column_names, table.num_rows)
    assets = table.column("assets").combine_chunks()

    def load(keys: Sequence[str]) -> dict[str, pa.StructArray]:
        return {key: assets.field(key) for key in keys}

    properties = table.select([c for c in table.column_names if c not in _SKIPPED])
    return CatalogItems(path, properties, _asset_infos(assets), load)


def _parquet_items(path: Path) -> CatalogItems:
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    _check_layout(path, schema.names, parquet.metadata.num_rows)
    first = next(parquet.iter_batches(batch_size=1024, columns=["assets"]))
    infos = _asset_infos(first.column("assets"))
    properties = pq.read_table(path, columns=[n for n in schema.names if n not in _SKIPPED])
    asset_type = schema.field("assets").type

    def load(keys: Sequence[str]) -> dict[str, pa.StructArray]:
        fields = {}
        for key in keys:
            kind = asset_type.field(key).type
            fields[key] = [f for f in _ASSET_FIELDS if kind.get_field_index(f) >= 0]
        # one read of every leaf (a read per asset costs ten times more: each one walks
        # the nested schema); sub-field paths come back in order, named by their leaves
        table = pq.read_table(
            path, columns=[f"assets.{key}.{f}" for key, names in fields.items() for f in names]
        )
        out, i = {}, 0
        for key, names in fields.items():
            columns = [table.column(i + k).combine_chunks() for k in range(len(names))]
            out[key] = pa.StructArray.from_arrays(columns, names=names)
            i += len(names)
        return out

    return CatalogItems(path, properties, infos, load)


def _json_items(document: Any, path: Path) -> pa.Table:
    """Items of a parsed JSON document, properties flattened to columns."""
    features = document.get("features") if isinstance(document, dict) else document
    if isinstance(document, dict) and document.get("type") == "Feature":
        features = [document]
    if not isinstance(features, list):
        raise ValueError(f"{path} is not an ItemCollection (no 'features' list)")
    rows = []
    for feature in features:
        row = {k: v for k, v in feature.items() if k not in ("properties", "geometry", "links")}
        row |= feature.get("properties") or {}
        rows.append(row)
    return pa.Table.from_pylist(rows)


def _first(array: pa.Array) -> Any:
    """The first non-null value of an array, as Python (None if all are null)."""
    valid = np.flatnonzero(np.asarray(array.is_valid()))
    return array[int(valid[0])].as_py() if len(valid) else None


def _asset_infos(assets: pa.StructArray) -> list[_AssetInfo]:
    """The bands each asset holds, from the first item that has it."""
    infos = []
    for field in assets.type:
        meta = _first(assets.field(field.name)) or {}
        eo = meta.get("eo:bands") or meta.get("bands") or []
        raster = meta.get("raster:bands") or []
        count = max(len(eo), len(raster), 1)
        names = tuple(
            (eo[i].get("name") if i < len(eo) else None)
            or (field.name if count == 1 else f"{field.name}_{i + 1}")
            for i in range(count)
        )
        common = tuple(eo[i].get("common_name") if i < len(eo) else None for i in range(count))
        nodata = tuple(raster[i].get("nodata") if i < len(raster) else None for i in range(count))
        kind = str(meta.get("type") or "").lower()
        href = str(meta.get("href") or "").lower()
        tiff = any(t in kind for t in _TIFF) or href.endswith((".tif", ".tiff"))
        roles = set(meta.get("roles") or [])
        infos.append(
            _AssetInfo(field.name, names, common, nodata, tiff, not roles & _NOT_DATA or not roles)
        )
    return infos


def resolve_bands(assets: Sequence[_AssetInfo], bands: Sequence[str] | None) -> list[BandAsset]:
    """The asset and band index of each band asked for, by asset key, band name or common name.

    Args:
        assets: the catalog's assets.
        bands: the bands (``B04``, ``red``, ``nir``, an asset key); None: every band of every
            GeoTIFF data asset.

    Returns:
        one entry per band, in the order asked.

    Raises:
        DataError: naming a band that no asset holds, or that several assets hold equally.
    """
    if bands is None:
        chosen = [
            BandAsset(name, a.key, i + 1)
            for a in assets
            if a.tiff and a.data
            for i, name in enumerate(a.names)
        ]
        if not chosen:
            raise DataError(
                f"no asset of the catalog is a GeoTIFF data asset (assets: "
                f"{[a.key for a in assets]}); list the bands to read in `bands`."
            )
        return chosen
    out = []
    for band in bands:
        wanted = band.casefold()
        candidates: list[tuple[tuple[int, int, int], BandAsset]] = []
        for asset in assets:
            for i, (name, common) in enumerate(zip(asset.names, asset.common_names, strict=True)):
                by_key = asset.key.casefold() == wanted and len(asset.names) == 1
                if by_key or name.casefold() == wanted or (common or "").casefold() == wanted:
                    # prefer the asset named for the band, then GeoTIFFs, then single bands
                    rank = (not by_key, not asset.tiff, len(asset.names) > 1)
                    candidates.append((rank, BandAsset(band, asset.key, i + 1)))
        if not candidates:
            known = sorted({n for a in assets for n in (a.key, *a.names)} - {""})
            raise DataError(
                f"band {band!r} is in no asset of the catalog; name an asset key, an "
                f"eo:bands name or a common name (e.g. red, nir). Available: {known}."
            )
        candidates.sort(key=lambda c: c[0])
        if len(candidates) > 1 and candidates[0][0] == candidates[1][0]:
            tied = [c[1].asset for c in candidates if c[0] == candidates[0][0]]
            raise DataError(
                f"band {band!r} is held equally by assets {tied}; ask for it by asset key "
                f"(e.g. {tied[0]!r})."
            )
        out.append(candidates[0][1])
    return out


def _matrix(values: pa.Array | None, width: int, n: int) -> np.ndarray:
    """Rows of a list column as an (n, width) float array; NaN where a row has no list."""
    out = np.full((n, width), np.nan)
    if values is None or n == 0:
        return out
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_list(values.type) and not pa.types.is_large_list(values.type):
        return out
    lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
    ok = np.flatnonzero(np.nan_to_num(lengths.astype(np.float64), nan=0.0) >= width)
    if len(ok):
        flat = values.values.to_numpy(zero_copy_only=False).astype(np.float64)
        starts = values.offsets.to_numpy()[:-1][ok]
        out[ok] = flat[starts[:, None] + np.arange(width)]
    return out


def _field(struct: pa.StructArray | None, name: str) -> pa.Array | None:
    if struct is None or struct.type.get_field_index(name) < 0:
        return None
    return struct.field(name)


def _column(table: pa.Table, name: str) -> pa.Array | None:
    return table.column(name).combine_chunks() if name in table.column_names else None


def _coalesce(*arrays: pa.Array | None) -> pa.Array | None:
    present = [a for a in arrays if a is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else pc.coalesce(*present)


def _crs_codes(*sources: pa.Array | None) -> pa.Array | None:
    """``EPSG:n``/``proj:code`` strings from ``proj:code`` and ``proj:epsg`` columns, in order."""
    codes = []
    for source in sources:
        if source is None:
            continue
        if pa.types.is_integer(source.type) or pa.types.is_floating(source.type):
            source = pc.binary_join_element_wise(
                "EPSG:", pc.cast(pc.cast(source, pa.int64()), pa.string()), ""
            )
        codes.append(pc.cast(source, pa.string()))
    return _coalesce(*codes)


def _times(table: pa.Table, column: str) -> np.ndarray | None:
    """A datetime column as naive UTC ``datetime64[ns]`` (NaT where null)."""
    values = _column(table, column)
    if values is None:
        return None
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        parsed = pd.to_datetime(values.to_numpy(zero_copy_only=False), utc=True, format="ISO8601")
    else:
        parsed = pd.to_datetime(values.to_pandas(), utc=True)
    return np.asarray(pd.DatetimeIndex(parsed).tz_convert(None), dtype="datetime64[ns]")


class STACCatalog(MultiBandGeoTIFF):
    """The items of a STAC catalog (STAC-GeoParquet or ItemCollection JSON) as a raster dataset.

    The index is built from the items' metadata alone: each item's footprint is the grid of
    its finest chosen band (``proj:transform``, ``proj:shape`` and ``proj:code`` or
    ``proj:epsg``, from the asset or the item), its time span is ``datetime`` (or
    ``start_datetime``..``end_datetime``). Hrefs may be local paths (relative ones are read
    from the catalog's folder), ``file://``, ``s3://``, ``gs://``, ``az://`` or
    ``http(s)://`` URLs, read through GDAL with ``remote``'s settings.

    Where items overlap, the earlier row wins where it has data (TorchGeo's merge order):
    sort the catalog (e.g. by cloud cover) to choose.

    An object that cannot be read (after ``remote.read_attempts`` attempts for errors of the
    server or the network) is an error naming its href, or with ``on_unreadable="warn"`` a
    logged warning, after which the process reads chips without that item (its pixels count
    as nodata, so chips there are redrawn).

    Args:
        catalog: the STAC-GeoParquet (``.parquet``) or ItemCollection JSON file.
        bands: bands to read, by asset key, ``eo:bands`` name or common name (``B04``,
            ``red``, ``nir``); default: every band of every GeoTIFF data asset.
        crs: CRS to work in (default: the first item's).
        res: resolution in CRS units (default: the finest chosen band's).
        nodata: value marking missing pixels (default: the assets' ``raster:bands`` nodata).
        max_cloud_cover: keep items whose ``eo:cloud_cover`` is at most this (percent).
        start: keep items acquired on or after this date/time (ISO 8601).
        end: keep items acquired on or before this date/time (ISO 8601).
        query: pandas query over the items' properties, as AOIs take one (e.g.
            ``"platform == 'sentinel-2a'"``; quote names with colons in backticks:
            ``"`s2:nodata_pixel_percentage` < 5"``).
        remote: GDAL settings for remote hrefs (endpoint, timeouts, retries, caching).
        transforms: applied to each sample.
        on_unreadable: ``raise`` on an item or object that cannot be used, or ``warn`` and
            leave it out.
    """

    band_kind: ClassVar[str] = "optical"
    what: ClassVar[str] = "STAC item"

    def __init__(
        self,
        catalog: str | Path,
        bands: Sequence[str] | None = None,
        crs: CRS | None = None,
        res: float | tuple[float, float] | None = None,
        nodata: float | None = None,
        max_cloud_cover: float | None = None,
        start: str | None = None,
        end: str | None = None,
        query: str | None = None,
        remote: RemoteSettings | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        on_unreadable: Literal["raise", "warn"] = "raise",
    ) -> None:
        """Read the catalog, filter its items and index them from their metadata."""
        if on_unreadable not in ("raise", "warn"):
            raise DataError(f"on_unreadable must be 'raise' or 'warn', got {on_unreadable!r}.")
        self.catalog = str(catalog)
        self.remote = remote or RemoteSettings()
        self.on_unreadable = on_unreadable
        self.unreadable: list[str] = []
        items = read_items(catalog)
        described = items.infos
        self.band_assets = resolve_bands(described, bands)
        table = items.properties
        keep = self._filter(table, max_cloud_cover, start, end, query)
        assets = items.load(list(dict.fromkeys(b.asset for b in self.band_assets)))
        if not keep.all():
            mask = pa.array(keep)
            table = table.filter(mask)
            assets = {k: v.filter(mask) for k, v in assets.items()}
        index, self._hrefs, resolutions, grid_res = self._build(table, assets, crs, res)
        self._base = os.path.dirname(os.path.abspath(self.catalog))
        infos = [
            RasterInfo(
                f"asset {b.asset} of {self.catalog}",
                1,
                "",
                _declared_nodata(described, b),
                (b.name,),
                (resolutions[b.asset], resolutions[b.asset]),
            )
            for b in self.band_assets
        ]
        choice = resolve_nodata(infos, nodata, None, mask_fallback=True)
        self.effective_nodata, self._nodata_override = choice.value, choice.override
        self._multi_res = len({resolutions[b.asset] for b in self.band_assets}) > 1
        # what RasterDataset.__init__ sets, without opening a file
        self.paths = [self.catalog]
        # torchgeo declares a tuple; geodino's sources keep a list, as users compare them
        self.all_bands = [b.name for b in self.band_assets]  # type: ignore[assignment]
        self.bands = list(self.all_bands)
        self.transforms = transforms
        self.cache = True
        self.time_series = False
        self.separate_files = True
        self.band_indexes = None
        self.index = index
        self._res = grid_res

    # --- indexing ----------------------------------------------------------------
    def _filter(
        self,
        table: pa.Table,
        max_cloud_cover: float | None,
        start: str | None,
        end: str | None,
        query: str | None,
    ) -> np.ndarray:
        """Which items pass the cloud, date and property filters."""
        keep = np.ones(table.num_rows, dtype=bool)
        if max_cloud_cover is not None:
            cloud = _column(table, "eo:cloud_cover")
            if cloud is None:
                raise DataError(
                    f"max_cloud_cover is set but the items of {self.catalog} have no "
                    "eo:cloud_cover property; drop the filter or search with it."
                )
            values = pc.fill_null(pc.cast(cloud, pa.float64()), math.inf).to_numpy()
            keep &= values <= max_cloud_cover
        if start is not None or end is not None:
            first, last = self._spans(table)
            try:
                if start is not None:
                    keep &= last >= _naive_utc(start)
                if end is not None:
                    keep &= first <= _naive_utc(end)
            except ValueError as error:
                raise DataError(
                    f"start/end ({start!r}, {end!r}) is not an ISO 8601 date or time "
                    f"({error}); write e.g. '2024-06-01' or '2024-06-01T12:00:00Z'."
                ) from None
        if query is not None:
            keep &= self._query(table, query)
        if not keep.any():
            raise DataError(
                f"no item of {self.catalog} ({table.num_rows} items) passes the filters "
                f"(max_cloud_cover={max_cloud_cover}, start={start}, end={end}, "
                f"query={query!r}); relax them."
            )
        return keep

    def _query(self, table: pa.Table, query: str) -> np.ndarray:
        scalar = [
            f.name
            for f in table.schema
            if not pa.types.is_nested(f.type) and not pa.types.is_binary(f.type)
        ]
        frame = table.select(scalar).to_pandas()
        try:
            result = frame.eval(query)
        except Exception as error:  # pandas raises many types for a bad expression
            raise DataError(
                f"query {query!r} cannot be evaluated on the items of {self.catalog} "
                f"({type(error).__name__}: {error}); item properties: {scalar[:20]} (quote "
                "names with colons in backticks, e.g. `eo:cloud_cover`)."
            ) from None
        if not isinstance(result, pd.Series) or result.dtype != bool:
            raise DataError(
                f"query {query!r} must give true or false per item (e.g. "
                "\"platform == 'sentinel-2a'\"), not a value."
            )
        return np.asarray(result, dtype=bool)

    def _spans(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """First and last acquisition time of each item (naive UTC)."""
        moment = _times(table, "datetime")
        first = _times(table, "start_datetime")
        last = _times(table, "end_datetime")
        first = moment if first is None else first if moment is None else _fill(first, moment)
        last = moment if last is None else last if moment is None else _fill(last, moment)
        if first is None or last is None or np.isnat(first).any() or np.isnat(last).any():
            ids = table.column("id").to_pylist()
            bad = ids[0] if first is None or last is None else ids[int(np.isnat(first).argmax())]
            raise DataError(
                f"item {bad} of {self.catalog} has no datetime (nor start_datetime and "
                "end_datetime); every STAC item needs one: fix the catalog."
            )
        return first, last

    def _build(
        self,
        table: pa.Table,
        assets: dict[str, pa.StructArray],
        crs: CRS | None,
        res: float | tuple[float, float] | None,
    ) -> tuple[GeoDataFrame, dict[str, pa.Array], dict[str, float], tuple[float, float]]:
        """The index, hrefs by asset, assets' resolutions and the dataset's resolution.

        The index holds the footprint of each item's finest chosen band.
        """
        ids = table.column("id").combine_chunks()
        keys = list(dict.fromkeys(b.asset for b in self.band_assets))
        item_transform = _matrix(_column(table, "proj:transform"), 6, table.num_rows)
        item_shape = _matrix(_column(table, "proj:shape"), 2, table.num_rows)
        item_crs = _crs_codes(_column(table, "proj:code"), _column(table, "proj:epsg"))
        usable = np.ones(table.num_rows, dtype=bool)
        grids: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        hrefs: dict[str, pa.Array] = {}
        codes: dict[str, pa.Array | None] = {}
        for key in keys:
            asset = assets[key]
            href = _field(asset, "href")
            transform = _matrix(_field(asset, "proj:transform"), 6, table.num_rows)
            shape = _matrix(_field(asset, "proj:shape"), 2, table.num_rows)
            transform = np.where(np.isnan(transform), item_transform, transform)
            shape = np.where(np.isnan(shape), item_shape, shape)
            code = _crs_codes(_field(asset, "proj:code"), _field(asset, "proj:epsg"), item_crs)
            valid = np.asarray(asset.is_valid()) & (
                np.ones(len(ids), bool) if href is None else np.asarray(href.is_valid())
            )
            problems = [
                (~valid, f"has no asset {key!r} (or it has no href)"),
                (
                    np.isnan(transform).any(1) | np.isnan(shape).any(1),
                    f"gives no proj:transform and proj:shape for asset {key!r} (nor the item)",
                ),
                (
                    np.ones(len(ids), bool)
                    if code is None
                    else ~np.asarray(code.is_valid(), dtype=bool),
                    f"gives no proj:code or proj:epsg for asset {key!r} (nor the item)",
                ),
                (
                    (transform[:, 1] != 0)
                    | (transform[:, 3] != 0)
                    | (transform[:, 0] <= 0)
                    | (transform[:, 4] >= 0),
                    f"has a rotated or flipped proj:transform for asset {key!r}",
                ),
            ]
            for bad, what in problems:
                bad &= usable
                if bad.any():
                    self._reject(ids, bad, what, key)
                    usable &= ~bad
            grids[key], hrefs[key], codes[key] = (transform, shape), href, code
        if not usable.any():
            raise DataError(f"no item of {self.catalog} can be used; see the warnings.")
        rows = np.flatnonzero(usable)
        resolutions = {k: float(grids[k][0][rows[0], 0]) for k in keys}
        finest = min(keys, key=lambda k: resolutions[k])
        transform, shape = (grids[finest][0][rows], grids[finest][1][rows])
        code = codes[finest]
        assert code is not None
        code = code.take(pa.array(rows))
        first, last = (times[rows] for times in self._spans(table))
        dst = CRS.from_user_input(crs if crs is not None else code[0].as_py())
        footprints, res0, distinct, footprint_of = _footprints(transform, shape, code, dst)
        encoded = pc.dictionary_encode(code)
        same_crs = np.array([CRS.from_user_input(c) == dst for c in encoded.dictionary.to_pylist()])
        # items whose finest band lies on a grid in the dataset's CRS (no warp): their
        # footprints are their grids, which block-aligned chips need
        self._native = same_crs[encoded.indices.to_numpy(zero_copy_only=False)]
        self._finest = finest
        if res is None:
            res = res0
        xy = (float(res), float(res)) if isinstance(res, int | float) else tuple(map(float, res))
        times = pd.IntervalIndex.from_arrays(first, last, closed="both", name="datetime")
        index = GeoDataFrame(
            {
                "filepath": pd.array(hrefs[finest].take(pa.array(rows)), dtype="string[pyarrow]"),
                "id": pd.array(ids.take(pa.array(rows)), dtype="string[pyarrow]"),
            },
            index=times,
            geometry=footprints,
            crs=dst,
        )
        kept = {k: v.take(pa.array(rows)) for k, v in hrefs.items()}
        self._items = _ItemLookup.of(index, distinct, footprint_of, first, last)
        return index, kept, resolutions, (xy[0], xy[1])

    def block_grids(self, res: tuple[float, float]) -> np.ndarray:
        """The internal tiling of the items read on the dataset's own grid, from the index.

        Each item's grid is its footprint (``proj:transform``, ``proj:shape``); the block
        size is read once, from the first such item's COG (the items of a collection share
        their tiling), instead of opening every file.

        Args:
            res: the dataset's resolution ``(x, y)``.

        Returns:
            one row per distinct grid, as :func:`geodino.samplers.blocks.block_grids` gives
            them: footprint (xmin, ymin, xmax, ymax), origin (left, top), size and block
            size in pixels (width, height, block width, block height); empty when no item
            is read without a warp.
        """
        native = np.flatnonzero(self._native)
        if not len(native):
            return np.zeros((0, 10))
        bounds = shapely.bounds(np.asarray(self.index.geometry.array[native]))
        grids, first = np.unique(bounds, axis=0, return_index=True)
        grids = grids[np.argsort(first)]  # in index order: the first listed grid counts
        href = self.href(self._finest, int(native[0]))
        with self.remote.env(), rasterio.open(gdal_path(href, self._base)) as src:
            block_h, block_w = src.block_shapes[0]
            step = (abs(src.transform.a), abs(src.transform.e))
        if not (math.isclose(step[0], res[0]) and math.isclose(step[1], res[1])):
            return np.zeros((0, 10))
        left, bottom, right, top = grids.T
        width = np.round((right - left) / res[0])
        height = np.round((top - bottom) / res[1])
        return np.column_stack(
            [
                left,
                bottom,
                right,
                top,
                left,
                top,
                width,
                height,
                np.full(len(grids), float(block_w)),
                np.full(len(grids), float(block_h)),
            ]
        )

    def _reject(self, ids: pa.Array, bad: np.ndarray, what: str, key: str) -> None:
        rows = np.flatnonzero(bad)
        names = [ids[int(i)].as_py() for i in rows[:5]]
        message = (
            f"{len(rows)} item(s) of {self.catalog} {what}, e.g. {names}; "
            f"filter them out (`query`), fix the catalog, or choose bands all items have "
            f"(`bands`)."
        )
        if self.on_unreadable == "raise":
            raise DataError(message + " on_unreadable='warn' leaves them out instead.")
        log.warning("leaving out %s", message)
        self.unreadable += [f"{n} ({key})" for n in names]

    # --- reading -----------------------------------------------------------------
    @property
    def resampling(self) -> Resampling:
        """Bilinear where bands of several resolutions meet on one grid, else nearest."""
        return Resampling.bilinear if self.__dict__.get("_multi_res") else Resampling.nearest

    def href(self, asset: str, row: int) -> str:
        """The href of an item's asset.

        Args:
            asset: the asset key.
            row: the item's row in :attr:`index`.

        Returns:
            the href as the catalog gives it.
        """
        value: str = self._hrefs[asset][row].as_py()
        return value

    def _rows(self, x: slice, y: slice, t: slice) -> np.ndarray:
        """Rows of the items under a chip (sharing area with it), in index order."""
        chip = shapely.box(x.start, y.start, x.stop, y.stop)
        items: _ItemLookup | None = self.__dict__.get("_items")
        if items is not None and items.index is self.index:
            rows = items.under(chip, t)
            dead = self.__dict__.get("_dead")
            if dead:
                rows = rows[~np.isin(rows, list(dead))]
            return rows
        rows = np.sort(self.index.sindex.query(chip, predicate="intersects"))
        geometries = self.index.geometry.array[rows]
        rows = rows[~shapely.touches(np.asarray(geometries), chip)]
        if len(rows):
            times = self.index.index[rows]
            rows = rows[times.overlaps(pd.Interval(t.start, t.stop, closed="both"))]
        dead = self.__dict__.get("_dead")
        if dead:
            rows = rows[~np.isin(rows, list(dead))]
        return np.asarray(rows, dtype=np.int64)

    def __getitem__(self, index: Any) -> dict[str, Any]:
        """The chip at a ``(x, y, t)`` query: every chosen band on the query's grid.

        Args:
            index: the query.

        Returns:
            the sample (``image``, ``bounds``, ``transform``).

        Raises:
            IndexError: if no item lies under the query.
            DataError: naming the href of an object that cannot be read (with
                ``on_unreadable="raise"``).
        """
        return self._sample(index, raw=False)

    def raw_sample(self, index: Any, out: np.ndarray | None = None) -> dict[str, Any]:
        """The chip at a query in the files' dtype (e.g. uint16), for the device to cast.

        ``image.float()`` equals ``self[index]["image"]``; transforms are not applied.

        Args:
            index: the query.
            out: unused (the bands of several files are merged, then stacked).

        Returns:
            the sample (``image``, ``bounds``, ``transform``).
        """
        return self._sample(index, raw=True)

    def _sample(self, index: Any, raw: bool) -> dict[str, Any]:
        x, y, t = self._disambiguate_slice(index)
        while True:
            rows = self._rows(x, y, t)
            if not len(rows):
                raise IndexError(f"no item of {self.catalog} lies under the query {index}")
            try:
                data = self._read(rows, x, y)
                break
            except _Unreadable as failure:
                self._give_up(failure)
        # numpy, not torch: torch's small ops wait on its thread pool on a busy CPU
        if raw and data.dtype in RAW_DTYPES:
            image = torch.from_numpy(data)
        elif self.dtype == torch.float32:
            image = torch.from_numpy(data.astype(np.float32))
        else:
            image = array_to_tensor(data).to(self.dtype)
        bounds = [x.start, x.stop, x.step, y.start, y.stop, y.step]
        times = [pd.Timestamp(t.start).timestamp(), pd.Timestamp(t.stop).timestamp(), t.step]
        transform = [x.step, 0.0, x.start, 0.0, -y.step, y.stop, 0.0, 0.0, 1.0]
        # the dtype torch.tensor gives a list of floats, as TorchGeo's samples have
        default = np.dtype(str(torch.get_default_dtype()).removeprefix("torch."))
        sample: dict[str, Any] = {
            "bounds": torch.from_numpy(np.array(bounds + times, dtype=default)),
            "transform": torch.from_numpy(np.array(transform, dtype=default)),
            "image": image,
        }
        if raw or self.transforms is None:
            return sample
        return self.transforms(sample)

    def _read(self, rows: np.ndarray, x: slice, y: slice) -> np.ndarray:
        """Every chosen band under a chip, retrying errors of the server or the network."""
        attempts = self.remote.read_attempts
        for attempt in range(attempts):
            try:
                # GDAL's options are global to the process: entered around each read (~50
                # us), two catalogs with different endpoints can be read side by side
                # a retry opens the files afresh: a cached handle may hold a broken state
                parts = self._read_groups(rows, x, y, attempt > 0)
                return parts[0] if len(parts) == 1 else np.concatenate(parts)
            except _Failed as failure:
                if not is_transient(failure.error) or attempt + 1 == attempts:
                    raise _Unreadable(failure.href, failure.row, failure.error) from None
                delay = self.remote.retry_delay * 2**attempt
                log.warning(
                    "reading %s failed (%s); retrying in %.1f s (attempt %d of %d)",
                    failure.href,
                    _first_line(failure.error),
                    delay,
                    attempt + 2,
                    attempts,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _read_groups(self, rows: np.ndarray, x: slice, y: slice, fresh: bool) -> list[np.ndarray]:
        """Each asset's bands under a chip: one after another, or in ``concurrent_reads`` threads.

        Each thread enters the remote settings itself (rasterio keeps a thread's GDAL options
        to that thread). Files are opened one at a time (the open-file cache is shared), after
        their headers were fetched concurrently; their tiles are read concurrently.
        """
        groups = self._groups()
        nodata = self.effective_nodata
        # threads hold their handles while they read: none may be closed to make room
        room = len(rows) * len(groups) <= self._open_files().capacity
        if self.remote.concurrent_reads == 1 or len(groups) == 1 or not room:
            with self.remote.env():
                return [self._read_asset(g, rows, x, y, fresh, nodata) for g in groups]

        def read(group: list[BandAsset]) -> np.ndarray:
            with self.remote.env():
                return self._read_asset(group, rows, x, y, fresh, nodata)

        return list(self._pool().map(read, groups))

    def _open_files(self) -> OpenFiles[Any]:
        """This process's open files, as many as the items times the chosen assets allow."""
        files: OpenFiles[Any] | None = self.__dict__.get("_handles")
        if files is None:
            count = len(self.index) * len(self._hrefs)
            files = OpenFiles(open_file_budget(count), self._open_handle, _Handle.close)
            self.__dict__["_handles"] = files
        return files

    def _pool(self) -> ThreadPoolExecutor:
        """This process's reader threads (a loader worker forked from a parent makes its own)."""
        owner, pool = self.__dict__.get("_threads", (None, None))
        if owner != os.getpid() or pool is None:
            pool = ThreadPoolExecutor(self.remote.concurrent_reads, "geodino-read")
            self.__dict__["_threads"] = (os.getpid(), pool)
            self.__dict__["_opening"] = threading.Lock()
        assert isinstance(pool, ThreadPoolExecutor)
        return pool

    def _groups(self) -> list[list[BandAsset]]:
        """Consecutive chosen bands of one asset, read together."""
        groups: list[list[BandAsset]] = []
        for band in self.band_assets:
            if groups and groups[-1][0].asset == band.asset:
                groups[-1].append(band)
            else:
                groups.append([band])
        return groups

    def _read_asset(
        self,
        bands: list[BandAsset],
        rows: np.ndarray,
        x: slice,
        y: slice,
        fresh: bool,
        nodata: float | None,
    ) -> np.ndarray:
        """Bands of one asset under a chip: the items' files merged as TorchGeo merges them.

        With a nodata value the items are read one by one, in index order, until no pixel
        is missing: the pixels of rasterio's merge of them all (the first valid value
        wins), without reading the items under a full chip (a tile's other acquisitions).
        """
        dest: np.ndarray | None = None
        for batch in [rows] if nodata is None else [rows[i : i + 1] for i in range(len(rows))]:
            part = self._merge(bands, batch, x, y, fresh)
            if dest is None:
                dest = part
            else:
                np.copyto(dest, part, where=_missing(dest, nodata) & ~_missing(part, nodata))
            if nodata is None or not _missing(dest, nodata).any():
                break
        assert dest is not None
        return dest

    def _merge(
        self, bands: list[BandAsset], rows: np.ndarray, x: slice, y: slice, fresh: bool
    ) -> np.ndarray:
        """Some items' files of one asset merged onto a chip's grid by rasterio."""
        key = bands[0].asset
        handles = []
        opening = self.__dict__.get("_opening")
        if opening is not None and not fresh:
            self._fetch_headers(key, rows)
        # threads open one file at a time: the open-file cache and the nodata a file is
        # opened with are shared by the threads
        with opening or contextlib.nullcontext():
            for row in rows:
                href = self.href(key, int(row))
                path = gdal_path(href, self._base)
                try:
                    if fresh:
                        handles.append(self._load_warp_file(path, self.crs))
                    else:
                        handles.append(self._cached_load_warp_file(path, self.crs))
                except (RasterioError, OSError) as error:
                    raise _Failed(href, int(row), error) from None
        try:
            dest: np.ndarray = rasterio.merge.merge(
                handles,
                bounds=(x.start, y.start, x.stop, y.stop),
                res=(x.step, y.step),
                indexes=[b.index for b in bands],
                resampling=self.resampling,
            )[0]
        except (RasterioError, OSError) as error:
            hrefs = [self.href(key, int(r)) for r in rows]
            culprit = next(
                (i for i, h in enumerate(hrefs) if gdal_path(h, self._base) in str(error)), 0
            )
            raise _Failed(hrefs[culprit], int(rows[culprit]), error) from None
        finally:
            if fresh:
                for handle in handles:
                    handle.close()
        return dest

    def _fetch_headers(self, key: str, rows: np.ndarray) -> None:
        """Read the headers of remote files not open yet, in this thread.

        Threads open files one at a time; reading a header first, concurrently, leaves it
        in GDAL's per-process cache of ranges, so that the open itself costs no round trip.
        An error is left to the open, which names the href.
        """
        files = self._open_files()
        for row in rows:
            path = gdal_path(self.href(key, int(row)), self._base)
            if path.startswith("/vsi") and path not in files:
                try:
                    rasterio.open(path).close()
                except (RasterioError, OSError):
                    return

    def _give_up(self, failure: "_Unreadable") -> None:
        """Apply ``on_unreadable`` to an object that stays unreadable."""
        reason = _first_line(failure.error)
        fix = _fix(failure.error)
        message = (
            f"{failure.href} (item {self.index['id'].iloc[failure.row]} of {self.catalog}) "
            f"cannot be read: {reason}. {fix}"
        )
        if self.on_unreadable == "raise":
            raise DataError(
                message + " on_unreadable='warn' leaves unreadable items out instead."
            ) from None
        log.warning("leaving out %s", message)
        self.unreadable.append(failure.href)
        self.__dict__.setdefault("_dead", set()).add(failure.row)

    def __getstate__(self) -> dict[str, Any]:
        """The dataset without this process's list of unreadable items, for loader workers."""
        state = super().__getstate__()
        for key in ("_dead", "_threads", "_opening"):
            state.pop(key, None)
        return state


def _declared_nodata(infos: Sequence[_AssetInfo], band: BandAsset) -> float | None:
    """The nodata value the asset's ``raster:bands`` declare for a band (None: none)."""
    info = next(i for i in infos if i.key == band.asset)
    value = info.nodata[band.index - 1] if band.index - 1 < len(info.nodata) else None
    return None if value is None else float(value)


@dataclass
class _ItemLookup:
    """The items under a chip, looked up among the distinct footprints.

    A catalog holds many acquisitions of each tile, which share a footprint: a chip is
    tested against the few distinct footprints (an R-tree of them), then their items' time
    spans (arrays), so that a lookup costs about the same at 10^3 and 10^6 items.

    Args:
        index: the index it was built for (a replaced index falls back to its R-tree).
        grids: the distinct footprints.
        members: item rows grouped by footprint, ascending within each.
        starts: where each footprint's rows start in ``members`` (one more than ``grids``).
        first: each item's first acquisition time (naive UTC, ns).
        last: each item's last acquisition time.
    """

    index: GeoDataFrame
    grids: np.ndarray
    members: np.ndarray
    starts: np.ndarray
    first: np.ndarray
    last: np.ndarray

    @classmethod
    def of(
        cls,
        index: GeoDataFrame,
        grids: np.ndarray,
        grid_of: np.ndarray,
        first: np.ndarray,
        last: np.ndarray,
    ) -> "_ItemLookup":
        """Group the rows by footprint.

        Args:
            index: the index.
            grids: the distinct footprints.
            grid_of: each row's footprint.
            first: each row's first acquisition time.
            last: each row's last acquisition time.

        Returns:
            the lookup.
        """
        members = np.argsort(grid_of, kind="stable")
        starts = np.searchsorted(grid_of[members], np.arange(len(grids) + 1))
        return cls(
            index,
            grids,
            members,
            starts,
            first.astype("datetime64[ns]"),
            last.astype("datetime64[ns]"),
        )

    def under(self, chip: shapely.Geometry, t: slice) -> np.ndarray:
        """Rows of the items sharing area with a chip and time with ``t``, in index order.

        Args:
            chip: the chip's box.
            t: its time span.

        Returns:
            the rows.
        """
        tree = self.__dict__.get("_tree")
        if tree is None:  # built in each process (loader workers receive the arrays)
            tree = self.__dict__["_tree"] = shapely.STRtree(self.grids)
        hits = tree.query(chip, predicate="intersects")
        hits = hits[~shapely.touches(self.grids[hits], chip)]
        if not len(hits):
            return np.zeros(0, dtype=np.int64)
        rows = np.sort(
            np.concatenate([self.members[self.starts[g] : self.starts[g + 1]] for g in hits])
        )
        start = np.datetime64(pd.Timestamp(t.start).as_unit("ns").to_datetime64(), "ns")
        stop = np.datetime64(pd.Timestamp(t.stop).as_unit("ns").to_datetime64(), "ns")
        keep = (self.first[rows] <= stop) & (self.last[rows] >= start)
        return np.asarray(rows[keep], dtype=np.int64)

    def __getstate__(self) -> dict[str, Any]:
        """The lookup without its R-tree (rebuilt where it is unpickled).

        Returns:
            the attributes to pickle.
        """
        state = dict(self.__dict__)
        state.pop("_tree", None)
        return state


class _Failed(Exception):
    """A read of one object failed (maybe transiently)."""

    def __init__(self, href: str, row: int, error: BaseException) -> None:
        super().__init__(href)
        self.href, self.row, self.error = href, row, error


class _Unreadable(_Failed):
    """An object that stays unreadable after the retries."""


def _footprints(
    transform: np.ndarray, shape: np.ndarray, codes: pa.Array, dst: CRS
) -> tuple[np.ndarray, tuple[float, float], np.ndarray, np.ndarray]:
    """Items' grid footprints in ``dst`` (edges densified where warped), and the first's res.

    Items on one grid (a tile's acquisitions) share one polygon: each distinct grid is
    built, warped and held once. Also returns the distinct footprints and each item's.
    """
    encoded = pc.dictionary_encode(codes)
    groups = encoded.indices.to_numpy(zero_copy_only=False).astype(np.float64)
    left, top = transform[:, 2], transform[:, 5]
    right = left + transform[:, 0] * shape[:, 1]
    bottom = top + transform[:, 4] * shape[:, 0]
    keys = np.ascontiguousarray(np.column_stack([left, bottom, right, top, groups]))
    rows = keys.view(np.dtype((np.void, keys.dtype.itemsize * keys.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    grids = keys[first]
    boxes = shapely.box(grids[:, 0], grids[:, 1], grids[:, 2], grids[:, 3])
    res: tuple[float, float] | None = None
    for i, code in enumerate(encoded.dictionary.to_pylist()):
        members = np.flatnonzero(grids[:, 4] == i)
        src = CRS.from_user_input(code)
        holds_first = bool(groups[0] == i)
        if src == dst:
            if holds_first:
                res = (float(transform[0, 0]), float(-transform[0, 4]))
            continue
        # 8 segments per edge: adjacent UTM zones bend a tile's edges by well under a pixel
        extent = np.maximum(
            grids[members, 2] - grids[members, 0], grids[members, 3] - grids[members, 1]
        )
        dense = shapely.segmentize(boxes[members], extent / 8)
        project = Transformer.from_crs(src, dst, always_xy=True)
        boxes[members] = shapely.transform(dense, project.transform, interleaved=False)
        if holds_first:
            warped, _, _ = calculate_default_transform(
                src,
                dst,
                int(shape[0, 1]),
                int(shape[0, 0]),
                left[0],
                bottom[0],
                right[0],
                top[0],
            )
            res = (float(warped.a), float(-warped.e))
    assert res is not None
    return boxes[inverse.ravel()], res, boxes, inverse.ravel()


def _missing(pixels: np.ndarray, nodata: float | None) -> np.ndarray:
    """Where pixels hold no data: NaN, or the nodata value."""
    missing = np.isnan(pixels) if pixels.dtype.kind == "f" else np.zeros(pixels.shape, bool)
    if nodata is not None and not math.isnan(nodata):
        missing |= pixels == nodata
    return missing


def _fill(values: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    return np.where(np.isnat(values), fallback, values)


def _naive_utc(text: str) -> np.datetime64:
    stamp = pd.Timestamp(text)
    stamp = stamp.tz_convert(None) if stamp.tzinfo is not None else stamp
    return np.datetime64(stamp.as_unit("ns").to_datetime64(), "ns")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _fix(error: BaseException) -> str:
    """What to do about an object that cannot be read, from GDAL's message."""
    text = str(error)
    if any(s in text for s in ("403", "Access Denied", "AccessDenied", "Forbidden")):
        return (
            "Access is denied: set credentials in the environment (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE; GOOGLE_APPLICATION_CREDENTIALS), or "
            "remote.unsigned=true for a public bucket."
        )
    if any(s in text for s in ("404", "does not exist", "No such file", "NoSuchKey")):
        return (
            "The object is gone: rebuild the catalog (`geodino catalog`) or restore the "
            "object, or filter the item out."
        )
    if is_transient(error):
        return (
            "The server kept failing or stalled after the retries: check the endpoint and "
            "the network, or raise remote.timeout, remote.max_retry or remote.read_attempts."
        )
    return (
        "The object is damaged or not a GeoTIFF (truncated, or another format): re-upload "
        "it, or filter the item out."
    )
