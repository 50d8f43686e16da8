"""A STAC API search written as a STAC-GeoParquet file, the input of :class:`STACCatalog`.

The search is the only step of cloud pretraining that needs the STAC API: its result is a
file that can be versioned, shared between nodes and read again to reproduce a run.
``pystac-client`` is an optional dependency (``pip install 'geodino[stac]'``).
"""

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from shapely.geometry import shape

from geodino.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Properties stored as timestamps, as stac-geoparquet stores them.
_TIMES = ("datetime", "start_datetime", "end_datetime", "created", "updated")


def search_items(
    url: str,
    collections: Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    max_cloud_cover: float | None = None,
    max_items: int | None = None,
    limit: int = 100,
) -> Iterator[dict[str, Any]]:
    """The items a STAC API search finds, page by page, as dicts.

    Args:
        url: the STAC API's root (e.g. ``https://earth-search.aws.element84.com/v1``).
        collections: collection ids to search (e.g. ``["sentinel-2-l2a"]``).
        bbox: ``[west, south, east, north]`` in degrees.
        datetime: an instant or interval (``2024-06-01/2024-08-31``).
        max_cloud_cover: keep items whose ``eo:cloud_cover`` is below this.
        max_items: stop after this many items (None: all).
        limit: items per page.

    Yields:
        the items.

    Raises:
        ConfigError: if pystac-client is not installed or the API cannot be searched.
    """
    try:
        from pystac_client import Client
        from pystac_client.exceptions import APIError
    except ImportError:
        raise ConfigError(
            "`geodino catalog` needs pystac-client: pip install 'geodino[stac]'."
        ) from None
    query = None if max_cloud_cover is None else {"eo:cloud_cover": {"lt": max_cloud_cover}}
    try:
        client = Client.open(url)
        search = client.search(
            collections=list(collections) if collections else None,
            bbox=list(bbox) if bbox else None,
            datetime=datetime,
            query=query,
            max_items=max_items,
            limit=limit,
        )
        yield from search.items_as_dicts()
    except (APIError, OSError, ValueError) as error:
        raise ConfigError(
            f"the STAC API at {url} cannot be searched ({str(error).splitlines()[0]}); check "
            "the URL (the API's root, e.g. https://earth-search.aws.element84.com/v1), the "
            "collection ids and the network."
        ) from None


def items_table(items: Sequence[dict[str, Any]]) -> pa.Table:
    """Items in the stac-geoparquet layout: properties as columns, geometry as WKB.

    Args:
        items: STAC items as dicts.

    Returns:
        one row per item.
    """
    rows = []
    for item in items:
        row = {k: v for k, v in item.items() if k not in ("properties", "geometry")}
        row |= item.get("properties") or {}
        geometry = item.get("geometry")
        row["geometry"] = None if geometry is None else shapely.to_wkb(shape(geometry))
        if isinstance(row.get("bbox"), list) and len(row["bbox"]) == 4:
            row["bbox"] = dict(zip(("xmin", "ymin", "xmax", "ymax"), row["bbox"], strict=True))
        rows.append(row)
    table = pa.Table.from_pylist(rows)
    for name in _TIMES:
        if name in table.column_names and pa.types.is_string(table.schema.field(name).type):
            stamps = pd.to_datetime(table.column(name).to_pandas(), utc=True, format="ISO8601")
            column = pa.array(stamps, type=pa.timestamp("us", tz="UTC"))
            table = table.set_column(table.column_names.index(name), name, column)
    return table


def write_geoparquet(items: Sequence[dict[str, Any]], out: str | Path) -> Path:
    """Write items as STAC-GeoParquet, with GeoParquet metadata for the geometry column.

    Args:
        items: STAC items as dicts.
        out: the ``.parquet`` file.

    Returns:
        the file.

    Raises:
        DataError: if there are no items.
    """
    if not items:
        raise DataError(
            f"the search found no items, so {out} was not written; widen the bbox, the dates "
            "or the cloud cover limit, or check the collection ids."
        )
    table = items_table(items)
    geo = (
        '{"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": '
        '{"encoding": "WKB", "geometry_types": []}}}'
    )
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"geo": geo})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    pq.write_table(table, partial)
    partial.replace(out)
    return out
