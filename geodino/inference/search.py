"""Similarity search: cosine similarity of every embedding pixel to a query point or box."""

from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from geodino.errors import DataError
from geodino.inference.cog import write_cog
from geodino.inference.regions import point_in_crs


def similarity_search(
    embeddings: str | Path,
    out: str | Path,
    point: tuple[float, float] | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    crs: Any = None,
    top_k: int = 10,
) -> tuple[Path, Path]:
    """Cosine similarity of every embedding pixel to a query point or box, and the top matches.

    Args:
        embeddings: a full-dimension patch-embedding GeoTIFF written by :func:`embed`.
        out: the similarity GeoTIFF to write (one band in [-1, 1], on the embeddings' grid);
            the matches go beside it as ``<stem>_matches.geojson``.
        point: query ``(x, y)``: the embedding pixel under it.
        bbox: query ``(xmin, ymin, xmax, ymax)`` (a query chip): the mean embedding of the
            pixels whose centres fall inside.
        crs: CRS of ``point``/``bbox`` (default: the embeddings').
        top_k: matches to list, best first, the query pixels excluded.

    Returns:
        the similarity GeoTIFF and the matches GeoJSON.

    Raises:
        DataError: without exactly one query, or a query off the grid or on empty pixels.
    """
    import geopandas as gpd
    from shapely.geometry import box

    if (point is None) == (bbox is None):
        raise DataError("give the query as a point (--x/--y) or as a box (--bbox), not both.")
    embeddings, out = Path(embeddings), Path(out)
    with rasterio.open(embeddings) as src:
        grid, transform, grid_crs = src.read().astype(np.float32), src.transform, src.crs
        bounds = list(src.bounds)
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
    write_cog(
        out,
        similarity[None],
        grid_crs,
        transform,
        ["cosine_similarity"],
        {"query": where, "source_embeddings": str(embeddings)},
    )
    ranked = np.where(query | ~np.isfinite(similarity), -np.inf, similarity).ravel()
    best = [i for i in np.argsort(-ranked, kind="stable")[:top_k] if np.isfinite(ranked[i])]
    cells = []
    for rank, index in enumerate(best, 1):
        r, c = divmod(int(index), w)
        (ax, ay), (bx, by) = transform @ (c, r), transform @ (c + 1, r + 1)
        cells.append(
            {
                "rank": rank,
                "similarity": float(ranked[index]),
                "row": r,
                "col": c,
                "geometry": box(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)),
            }
        )
    matches = out.with_name(f"{out.stem}_matches.geojson")
    gpd.GeoDataFrame(cells, geometry="geometry", crs=grid_crs).to_file(matches)
    return out, matches
