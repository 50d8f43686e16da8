"""Similarity search: cosine similarity of every embedding pixel to a query point or box."""

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from affine import Affine

from geodino.errors import DataError
from geodino.inference.cog import write_cog
from geodino.inference.provenance import describe, now
from geodino.inference.regions import point_in_crs
from geodino.inference.tables import table_format, vector_columns, write_table

if TYPE_CHECKING:
    from geopandas import GeoDataFrame


def similarity_search(
    embeddings: str | Path,
    out: str | Path,
    point: tuple[float, float] | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    crs: Any = None,
    top_k: int = 10,
    matches: str | Path | None = None,
) -> tuple[Path, Path]:
    """Cosine similarity of every embedding pixel to a query point or box, and the top matches.

    Args:
        embeddings: a full-dimension patch-embedding GeoTIFF written by :func:`embed`.
        out: the similarity GeoTIFF to write (one band ``cosine_similarity`` in [-1, 1], on
            the embeddings' grid).
        point: query ``(x, y)``: the embedding pixel under it.
        bbox: query ``(xmin, ymin, xmax, ymax)`` (a query chip): the mean embedding of the
            pixels whose centres fall inside.
        crs: CRS of ``point``/``bbox`` (default: the embeddings').
        top_k: matches to list, best first, the query pixels excluded.
        matches: the table of matches: ``.gpkg``, ``.fgb``, ``.parquet`` or ``.geojson``
            (default: ``<out stem>_matches.geojson`` beside ``out``); one polygon per
            matching patch with its ``rank``, ``similarity``, ``row``, ``col`` and embedding
            ``emb_000``...

    Returns:
        the similarity GeoTIFF and the matches table.

    Raises:
        DataError: for an embeddings file that is missing or unreadable, without exactly one
            query, for a query off the grid or on empty pixels, or for a matches path that is
            not a vector table.
    """
    embeddings, out = Path(embeddings), Path(out)
    matches = Path(matches) if matches else out.with_name(f"{out.stem}_matches.geojson")
    table_format(matches, "--matches")
    if (point is None) == (bbox is None):
        raise DataError("give the query as a point (--x/--y) or as a box (--bbox), not both.")
    if not embeddings.is_file():
        raise DataError(
            f"{embeddings}: no such embeddings file; give the patch-embedding GeoTIFF that "
            "`geodino embed ... --out FILE.tif` wrote."
        )
    try:
        src = rasterio.open(embeddings)
    except rasterio.RasterioIOError as error:
        raise DataError(
            f"{embeddings}: not a GeoTIFF that GDAL can read ({error}); give the "
            "patch-embedding GeoTIFF that `geodino embed ... --out FILE.tif` wrote."
        ) from error
    with src:
        grid, transform, grid_crs = src.read().astype(np.float32), src.transform, src.crs
        bounds = list(src.bounds)
        source_tags = src.tags()
    _, h, w = grid.shape
    rows, cols = np.mgrid[0:h, 0:w]
    if point is not None:
        x, y = point_in_crs(grid_crs, *point, crs)
        col, row = ~transform @ (x, y)
        query = np.zeros((h, w), dtype=bool)
        if 0 <= row < h and 0 <= col < w:
            query[int(row), int(col)] = True
        where = f"point ({point[0]}, {point[1]})"
    else:
        assert bbox is not None  # exactly one of point and bbox was given
        x0, y0 = point_in_crs(grid_crs, bbox[0], bbox[1], crs)
        x1, y1 = point_in_crs(grid_crs, bbox[2], bbox[3], crs)
        cx, cy = transform @ (cols + 0.5, rows + 0.5)
        query = (
            (cx >= min(x0, x1)) & (cx <= max(x0, x1)) & (cy >= min(y0, y1)) & (cy <= max(y0, y1))
        )
        where = f"box {list(bbox)}"
    vectors = grid[:, query & np.isfinite(grid).all(0)]
    if not vectors.size:
        raise DataError(
            f"the query {where} falls on no embedding pixel of {embeddings} (outside its "
            f"bounds {bounds} in {grid_crs}, or on nodata); give --crs if the "
            "coordinates are in another CRS."
        )
    target = vectors.mean(1)
    norms = np.linalg.norm(grid, axis=0) * np.linalg.norm(target)
    similarity = np.einsum("dhw,d->hw", grid, target) / np.maximum(norms, 1e-12)
    metadata = {
        **{k: v for k, v in source_tags.items() if k in _KEPT_TAGS},
        "date": now(),
        "query": where,
        "source_embeddings": str(embeddings),
    }
    write_cog(out, similarity[None], grid_crs, transform, ["cosine_similarity"], metadata)
    ranked = np.where(query | ~np.isfinite(similarity), -np.inf, similarity).ravel()
    best = [i for i in np.argsort(-ranked, kind="stable")[:top_k] if np.isfinite(ranked[i])]
    write_table(
        matches,
        [_match_frame(best, ranked, grid, transform, grid_crs)],
        grid_crs,
        metadata,
        description=f"geodino similarity search, the {where}: {describe(metadata)}",
    )
    return out, matches


#: Tags of an embeddings GeoTIFF that its similarity outputs carry on.
_KEPT_TAGS = (
    "geodino_version",
    "geodino_model",
    "geodino_weights",
    "bands",
    "patch_size",
    "chip_size",
)


def _match_frame(
    best: Sequence[int], ranked: np.ndarray, grid: np.ndarray, transform: Affine, crs: Any
) -> "GeoDataFrame":
    """The matching patches: footprint, rank, similarity, grid cell and embedding."""
    import geopandas as gpd
    from shapely.geometry import box

    _, _, w = grid.shape
    cells = [divmod(int(index), w) for index in best]
    footprints = []
    for r, c in cells:
        (ax, ay), (bx, by) = transform @ (c, r), transform @ (c + 1, r + 1)
        footprints.append(box(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)))
    vectors = np.stack([grid[:, r, c] for r, c in cells]) if cells else np.zeros((0, len(grid)))
    return gpd.GeoDataFrame(
        {
            "rank": np.arange(1, len(cells) + 1, dtype=np.int64),
            "similarity": np.asarray([ranked[i] for i in best], dtype=np.float64),
            "row": np.asarray([r for r, _ in cells], dtype=np.int64),
            "col": np.asarray([c for _, c in cells], dtype=np.int64),
            **vector_columns(vectors),
        },
        geometry=gpd.GeoSeries(footprints, crs=crs),
        crs=crs,
    )
