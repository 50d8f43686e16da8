"""QGIS opens files as a user's *Add Raster/Vector Layer* would and says what it sees.

Input: ``rasters`` and ``vectors`` (paths). Verdict: for each path, whether QGIS opened it,
its CRS, extent, size and band names (rasters) or features, fields and geometry type
(vectors); for a vector file, whether QGIS's GDAL has a driver for its format at all.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import qgis_session

#: geodino's metadata items (docs/outputs.md) looked for in what QGIS shows of a layer.
METADATA_KEYS = ("geodino_version", "geodino_model", "geodino_weights", "chip_size", "date")
#: OGR driver of each vector extension geodino writes.
DRIVERS = {".gpkg": "GPKG", ".fgb": "FlatGeobuf", ".parquet": "Parquet", ".geojson": "GeoJSON"}


def extent(layer: Any) -> list[float]:
    box = layer.extent()
    return [box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()]


def error_of(layer: Any) -> str:
    """The layer's error (QGIS 3.22 crashes on summary() of an empty one)."""
    error = layer.error()
    return "" if error.isEmpty() else error.summary()


def gdal_error(path: str) -> str:
    """What GDAL says when asked to open a vector file, or "" when it opens it."""
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        dataset = gdal.OpenEx(path, gdal.OF_VECTOR)
        return "" if dataset is not None else gdal.GetLastErrorMsg() or "GDAL cannot open it"
    finally:
        gdal.PopErrorHandler()


def raster(path: str) -> dict[str, Any]:
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(path, Path(path).stem, "gdal")
    if not layer.isValid():
        return {"valid": False, "error": error_of(layer)}
    renderer = layer.renderer()
    provider = layer.dataProvider()
    info = {
        "valid": True,
        "crs": layer.crs().authid(),
        "extent": extent(layer),
        "size": [layer.height(), layer.width()],
        "bands": layer.bandCount(),
        "band_names": [layer.bandName(i) for i in range(1, layer.bandCount() + 1)],
        "nodata": [provider.sourceNoDataValue(i) for i in range(1, layer.bandCount() + 1)],
        "renderer": renderer.type(),
        "metadata_keys": [key for key in METADATA_KEYS if key in layer.htmlMetadata()],
    }
    if renderer.type() == "multibandcolor":
        info["rgb"] = [renderer.redBand(), renderer.greenBand(), renderer.blueBand()]
        stretch = renderer.redContrastEnhancement()
        info["red_stretch"] = [stretch.minimumValue(), stretch.maximumValue()]
    return info


def vector(path: str) -> dict[str, Any]:
    from osgeo import ogr
    from qgis.core import QgsVectorLayer, QgsWkbTypes

    driver = DRIVERS.get(Path(path).suffix.lower())
    info: dict[str, Any] = {
        "driver": driver,
        "driver_available": driver is not None and ogr.GetDriverByName(driver) is not None,
    }
    layer = QgsVectorLayer(path, Path(path).stem, "ogr")
    if not layer.isValid():
        return {**info, "valid": False, "error": error_of(layer), "gdal_error": gdal_error(path)}
    return {
        **info,
        "valid": True,
        "crs": layer.crs().authid(),
        "extent": extent(layer),
        "features": layer.featureCount(),
        "fields": layer.fields().names(),
        "geometry": QgsWkbTypes.displayString(layer.wkbType()),
        "abstract": layer.metadata().abstract(),
    }


def with_gdal_messages(opener: Callable[[str], dict[str, Any]], path: str) -> dict[str, Any]:
    """What ``opener`` reports, with the warnings and errors GDAL raised meanwhile.

    A user sees these in QGIS's log, e.g. a GeoPackage version that GDAL "may only
    partially support".
    """
    from osgeo import gdal

    messages: list[str] = []
    gdal.PushErrorHandler(lambda level, number, message: messages.append(message))
    try:
        info = opener(path)
    finally:
        gdal.PopErrorHandler()
    return {**info, "gdal_messages": messages}


def open_all(payload: dict[str, Any]) -> dict[str, Any]:
    from osgeo import gdal
    from qgis.core import Qgis

    return {
        "versions": {"qgis": Qgis.QGIS_VERSION, "gdal": gdal.__version__},
        "rasters": {p: with_gdal_messages(raster, p) for p in payload.get("rasters", [])},
        "vectors": {p: with_gdal_messages(vector, p) for p in payload.get("vectors", [])},
    }


if __name__ == "__main__":
    qgis_session.run(open_all)
