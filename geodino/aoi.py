"""AOI polygons: reading QGIS exports or GeoDataFrames, checking and repairing them."""

import logging
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from geopandas import GeoDataFrame
from pyproj import CRS

from geodino.errors import DataError

log = logging.getLogger(__name__)


def read_aoi(
    aoi: str | Path | GeoDataFrame, crs: CRS | str | int | None = None, query: str | None = None
) -> GeoDataFrame:
    """Read AOI polygons, select rows, put them in ``crs`` and repair them.

    Args:
        aoi: a GeoPackage/GeoJSON/Shapefile path (anything GDAL reads) or a GeoDataFrame.
        crs: CRS to reproject to (default: keep the AOI's).
        query: pandas query selecting rows, e.g. ``"split == 'train'"``.

    Returns:
        the selected rows with only their Polygon/MultiPolygon parts, invalid geometries
        repaired (``shapely.make_valid``) and empty ones dropped (each logged with its count);
        the original row labels are kept so messages can point at rows of the file.

    Raises:
        DataError: naming the file and the fix, for a missing or unreadable file, no CRS,
            longitudes/latitudes out of range, a query that fails or selects nothing, a CRS the
            AOI cannot be expressed in, or no polygons at all.
    """
    if isinstance(aoi, GeoDataFrame):
        name = "the AOI GeoDataFrame"
        gdf = aoi.copy()
    else:
        path = Path(aoi)
        name = f"AOI file {path}"
        if not path.is_file():
            raise DataError(
                f"{name} does not exist; check the path, or export the layer from QGIS with "
                "Layer > Export > Save Features As... (GeoPackage, GeoJSON or Shapefile)."
            )
        try:
            gdf = gpd.read_file(path)
        except Exception as error:
            raise DataError(
                f"{name} cannot be read as vector data ({error}); export it from QGIS as "
                "GeoPackage, GeoJSON or Shapefile."
            ) from None
    if gdf.crs is None:
        raise DataError(
            f"{name} has no CRS; set it in QGIS (Layer > Set CRS, then export again) or with "
            "gdf.set_crs('EPSG:4326') (the CRS the coordinates are really in)."
        )
    _check_geographic_range(gdf, name)
    if query:
        columns = [c for c in gdf.columns if c != gdf.geometry.name]
        try:
            gdf = gdf.query(query)
        except Exception as error:
            raise DataError(
                f"AOI query {query!r} failed on {name} ({type(error).__name__}: {error}); its "
                f"columns are {columns}: fix the query (pandas syntax, strings in quotes)."
            ) from None
        if gdf.empty:
            raise DataError(
                f"AOI query {query!r} selects no row of {name}; check the column values in "
                "the attribute table (QGIS: Open Attribute Table) or fix the query."
            )
    if crs is not None:
        gdf = _to_crs(gdf, CRS.from_user_input(crs), name)
    geometry = gdf.geometry
    invalid = (~geometry.isna() & ~geometry.is_valid).to_numpy()
    if invalid.any():
        log.warning(
            "%s: repaired %d invalid geometries with shapely.make_valid (rows %s)",
            name,
            int(invalid.sum()),
            list(gdf.index[invalid][:10]),
        )
        gdf.loc[invalid, gdf.geometry.name] = shapely.make_valid(geometry.to_numpy()[invalid])
    gdf[gdf.geometry.name] = [polygonal(g) for g in gdf.geometry.to_numpy()]
    empty = gdf.geometry.isna().to_numpy()
    if empty.all():
        raise DataError(
            f"{name} holds no polygons (only empty geometries, points or lines); draw the AOI "
            "as polygons or multipolygons."
        )
    if empty.any():
        log.warning(
            "%s: dropped %d empty or non-polygon geometries (rows %s)",
            name,
            int(empty.sum()),
            list(gdf.index[empty][:10]),
        )
        gdf = gdf[~empty]
    return gdf


def _check_geographic_range(gdf: GeoDataFrame, name: str) -> None:
    if not gdf.crs.is_geographic or gdf.geometry.isna().all():
        return
    xmin, ymin, xmax, ymax = gdf.total_bounds
    if xmin < -360 or xmax > 360 or ymin < -90 or ymax > 90:
        raise DataError(
            f"{name} is in {gdf.crs.to_string()} but its coordinates "
            f"({xmin:.6g}, {ymin:.6g}, {xmax:.6g}, {ymax:.6g}) are not longitudes/latitudes: the "
            "file lacks its real CRS (GeoJSON without a CRS is read as EPSG:4326). Set the CRS "
            "the coordinates are in (QGIS: Layer > Set CRS, then export again; or "
            "gdf.set_crs(..., allow_override=True))."
        )


def _to_crs(gdf: GeoDataFrame, crs: CRS, name: str) -> GeoDataFrame:
    out = gdf.to_crs(crs)
    coords = shapely.get_coordinates(out.geometry.to_numpy())
    if not np.isfinite(coords).all():
        raise DataError(
            f"{name} cannot be expressed in {crs.to_string()} (coordinates become infinite: "
            f"the AOI, bounds {tuple(np.round(gdf.total_bounds, 6))} in {gdf.crs.to_string()}, "
            "lies outside that CRS's area of use); use an AOI over the rasters."
        )
    return out


def polygonal(geometry: Any) -> Any:
    """The Polygon/MultiPolygon part of a geometry.

    Args:
        geometry: a shapely geometry, or None.

    Returns:
        its polygonal part, or None when it has none.
    """
    if geometry is None or geometry.is_empty:
        return None
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    parts = [g for g in shapely.get_parts(geometry) if g.geom_type in ("Polygon", "MultiPolygon")]
    parts = [g for g in parts if not g.is_empty]
    return shapely.union_all(parts) if parts else None
