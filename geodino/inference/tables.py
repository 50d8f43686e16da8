"""Vector tables that every GIS opens: GeoPackage, FlatGeobuf, GeoParquet, written in chunks.

A table arrives as an iterable of GeoDataFrame chunks with the same columns and is written one
chunk at a time, so that no whole-table copy is ever held in memory: GeoPackage, FlatGeobuf
and GeoJSON through GDAL (pyogrio's Arrow stream writer, which pulls one chunk after the
other), GeoParquet through pyarrow (one row group per chunk). Vectors (embeddings) are plain
fixed-width numeric columns (``emb_000``, ``emb_001``, ...), which every format holds.
Metadata (``{key: text}``) goes where each format keeps it and GDAL, hence QGIS, reads it:
GeoPackage ``gpkg_metadata`` (dataset and layer) and the layer's ``gpkg_contents``
description, FlatGeobuf header metadata, title and description, GeoParquet's
``gdal:metadata`` schema key (plus ``PANDAS_ATTRS``, which geopandas reads as ``attrs``).
"""

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from geodino.errors import DataError

if TYPE_CHECKING:
    from geopandas import GeoDataFrame

#: Vector table suffixes and the format each writes.
TABLE_FORMATS: dict[str, str] = {
    ".gpkg": "GeoPackage",
    ".fgb": "FlatGeobuf",
    ".parquet": "GeoParquet",
    ".geojson": "GeoJSON",
}

#: GDAL driver of each suffix that GDAL writes (GeoParquet is written by pyarrow).
_GDAL_DRIVERS = {".gpkg": "GPKG", ".fgb": "FlatGeobuf", ".geojson": "GeoJSON"}

#: Rows per chunk that the table writers of the commands feed at a time.
CHUNK_ROWS = 4096

#: Name of the geometry column.
GEOMETRY = "geometry"


def table_format(path: str | Path, option: str = "--out") -> str:
    """The vector format of an output path, from its suffix.

    Args:
        path: the output file.
        option: the command-line option that names it, for the message.

    Returns:
        its suffix, lower case (a key of :data:`TABLE_FORMATS`).

    Raises:
        DataError: if the suffix is not a vector table's.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise DataError(f"{option} {path}: a vector table must be {_accepted()}.")
    return suffix


def _accepted() -> str:
    names = [f"a {suffix} ({name})" for suffix, name in TABLE_FORMATS.items()]
    return ", ".join(names[:-1]) + " or " + names[-1]


def vector_columns(values: np.ndarray, prefix: str = "emb") -> dict[str, np.ndarray]:
    """Fixed-width float32 columns of (N, D) vectors: ``emb_000`` ... (``{prefix}_{j:03d}``).

    Args:
        values: (N, D) vectors.
        prefix: column name prefix.

    Returns:
        the columns by name, in order.
    """
    values = np.asarray(values, dtype=np.float32)
    return {f"{prefix}_{j:03d}": values[:, j] for j in range(values.shape[1])}


def write_table(
    path: str | Path,
    chunks: Iterable["GeoDataFrame"],
    crs: Any,
    metadata: Mapping[str, str],
    description: str = "",
) -> int:
    """Write a vector table chunk by chunk, in the format its suffix names.

    Args:
        path: ``.gpkg``, ``.fgb``, ``.parquet`` or ``.geojson`` file (replaced if it exists);
            the layer is named after its stem.
        chunks: GeoDataFrames with the same columns and one geometry type, in ``crs``; at
            least one (it may be empty).
        crs: the CRS of the geometries.
        metadata: text metadata written where the format keeps it.
        description: a sentence on the layer (GeoPackage/FlatGeobuf/GeoJSON description).

    Returns:
        the number of rows written.

    Raises:
        DataError: for a suffix that is not a vector table's.
        ValueError: if ``chunks`` is empty.
    """
    path = Path(path)
    suffix = table_format(path)
    stream = iter(chunks)
    first = next(stream, None)
    if first is None:
        raise ValueError(f"no chunk to write to {path}; give at least one (it may be empty).")
    geometry_type = _geometry_type(first)
    first_batch = _record_batch(first)
    schema = first_batch.schema
    rows = 0
    failure: list[BaseException] = []

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal rows
        try:
            for batch in itertools.chain(
                [first_batch], (_record_batch(c).cast(schema) for c in stream)
            ):
                rows += batch.num_rows
                yield batch
        except BaseException as error:
            failure.append(error)
            raise

    # written beside, then moved over: an interrupted write leaves no partial table
    partial = path.with_name(f".{path.stem}.partial{suffix}")
    partial.unlink(missing_ok=True)
    try:
        if suffix == ".parquet":
            _write_geoparquet(partial, schema, batches(), crs, geometry_type, metadata)
        else:
            _write_gdal(
                partial,
                path.stem,
                suffix,
                schema,
                batches(),
                crs,
                geometry_type,
                metadata,
                description,
            )
        partial.replace(path)
    except Exception:
        # GDAL reports an error of the chunks' producer as its own stream error: raise the cause
        if failure:
            raise failure[0] from None
        raise
    finally:
        partial.unlink(missing_ok=True)
    return rows


def _geometry_type(frame: "GeoDataFrame") -> str:
    types = sorted(set(frame.geometry.geom_type.dropna()))
    return types[0] if len(types) == 1 else "Unknown"


def _record_batch(frame: "GeoDataFrame") -> pa.RecordBatch:
    """A chunk as Arrow: its attribute columns, then the geometry as WKB."""
    import pandas as pd  # type: ignore[import-untyped]
    import shapely

    attributes = pa.Table.from_pandas(
        pd.DataFrame(frame.drop(columns=frame.geometry.name)), preserve_index=False
    )
    wkb = pa.array(shapely.to_wkb(np.asarray(frame.geometry.array)), type=pa.binary())
    return pa.RecordBatch.from_arrays(
        [column.combine_chunks() for column in attributes.columns] + [wkb],
        names=[*attributes.schema.names, GEOMETRY],
    )


def _write_gdal(
    path: Path,
    layer: str,
    suffix: str,
    schema: pa.Schema,
    batches: Iterator[pa.RecordBatch],
    crs: Any,
    geometry_type: str,
    metadata: Mapping[str, str],
    description: str,
) -> None:
    import pyogrio
    from pyproj import CRS

    options: dict[str, str] = {"DESCRIPTION": description} if description else {}
    if suffix == ".gpkg":
        options["IDENTIFIER"] = layer
    elif suffix == ".fgb":
        options["TITLE"] = layer
    # GDAL's GeoJSON keeps no metadata items; GeoPackage keeps them per dataset as well
    layer_metadata = dict(metadata) if suffix != ".geojson" else None
    pyogrio.write_arrow(
        pa.RecordBatchReader.from_batches(schema, batches),
        path,
        layer=layer,
        driver=_GDAL_DRIVERS[suffix],
        geometry_name=GEOMETRY,
        geometry_type=geometry_type,
        crs=CRS.from_user_input(crs).to_wkt(),
        dataset_metadata=dict(metadata) if suffix == ".gpkg" else None,
        layer_metadata=layer_metadata,
        # GeoPackage 1.2, not GDAL's default 1.4: the GDAL 3.6 of Debian's QGIS warns on 1.4
        dataset_options={"VERSION": "1.2"} if suffix == ".gpkg" else None,
        layer_options=options,
    )


def _write_geoparquet(
    path: Path,
    schema: pa.Schema,
    batches: Iterator[pa.RecordBatch],
    crs: Any,
    geometry_type: str,
    metadata: Mapping[str, str],
) -> None:
    import pyarrow.parquet as pq
    from pyproj import CRS

    geo = {
        "version": "1.1.0",
        "primary_column": GEOMETRY,
        "columns": {
            GEOMETRY: {
                "encoding": "WKB",
                "geometry_types": [] if geometry_type == "Unknown" else [geometry_type],
                "crs": CRS.from_user_input(crs).to_json_dict(),
            }
        },
    }
    schema = schema.with_metadata(
        {
            "geo": json.dumps(geo),
            # GDAL reads the default metadata domain from here, geopandas its attrs
            "gdal:metadata": json.dumps({"": dict(metadata)}),
            "PANDAS_ATTRS": json.dumps(dict(metadata)),
        }
    )
    with pq.ParquetWriter(path, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata that :func:`write_table` wrote into a table, as GDAL or pyarrow reads it.

    Args:
        path: a table written by :func:`write_table`.

    Returns:
        the metadata items (GeoPackage/FlatGeobuf: the layer's, without GDAL's own
        ``DESCRIPTION``/``IDENTIFIER``/``TITLE``).
    """
    path = Path(path)
    if table_format(path, "table") == ".parquet":
        import pyarrow.parquet as pq

        raw = pq.read_schema(path).metadata or {}
        items: dict[str, str] = json.loads(raw.get(b"gdal:metadata", b"{}")).get("", {})
        return items
    import pyogrio

    layer = pyogrio.read_info(path).get("layer_metadata") or {}
    return {k: v for k, v in layer.items() if k not in ("DESCRIPTION", "IDENTIFIER", "TITLE")}


def rechunk(frames: Iterable["GeoDataFrame"], rows: int) -> Iterator["GeoDataFrame"]:
    """Regroup GeoDataFrames with the same columns into chunks of ``rows`` rows.

    Args:
        frames: the pieces, in order.
        rows: rows per chunk (the last one may hold fewer).

    Yields:
        the chunks; a single empty one when the pieces hold no row.
    """
    import pandas as pd

    pending: list[GeoDataFrame] = []
    count, sent = 0, False
    for frame in frames:
        pending.append(frame)
        count += len(frame)
        if count < rows:
            continue
        merged = pd.concat(pending, ignore_index=True)
        start = 0
        while len(merged) - start >= rows:
            yield merged.iloc[start : start + rows]
            sent, start = True, start + rows
        pending, count = [merged.iloc[start:]], len(merged) - start
    if pending and (count or not sent):
        yield pd.concat(pending, ignore_index=True)
