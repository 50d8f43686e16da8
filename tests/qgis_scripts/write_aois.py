"""QGIS writes AOI GeoPackages with its own API, as a user's *Save Features As...* would.

Input: ``polygons`` (``name``, ``split``, ``wkt`` in ``source_crs``) and ``files`` (``path``,
``crs``). Each file gets every polygon as a MultiPolygon feature, reprojected by QGIS.
Verdict: for each file as QGIS reads it back, its CRS, feature count and geometry types.
"""

from typing import Any

import qgis_session


def write(payload: dict[str, Any]) -> list[dict[str, Any]]:
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsFeature,
        QgsGeometry,
        QgsProject,
        QgsVectorFileWriter,
        QgsVectorLayer,
        QgsWkbTypes,
    )

    source = QgsCoordinateReferenceSystem(payload["source_crs"])
    report = []
    for target in payload["files"]:
        crs = QgsCoordinateReferenceSystem(target["crs"])
        layer = QgsVectorLayer(
            f"MultiPolygon?crs={target['crs']}&field=name:string&field=split:string",
            "fields",
            "memory",
        )
        transform = QgsCoordinateTransform(source, crs, QgsProject.instance())
        features = []
        for polygon in payload["polygons"]:
            geometry = QgsGeometry.fromWkt(polygon["wkt"])
            geometry.convertToMultiType()
            assert geometry.transform(transform) == 0, polygon["name"]
            feature = QgsFeature(layer.fields())
            feature.setAttributes([polygon["name"], polygon["split"]])
            feature.setGeometry(geometry)
            features.append(feature)
        layer.dataProvider().addFeatures(features)
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName = "GPKG"
        options.layerName = "fields"
        error, message, _, _ = QgsVectorFileWriter.writeAsVectorFormatV3(
            layer, target["path"], QgsProject.instance().transformContext(), options
        )
        assert error == QgsVectorFileWriter.NoError, message
        written = QgsVectorLayer(target["path"], "fields", "ogr")
        report.append(
            {
                "path": target["path"],
                "valid": written.isValid(),
                "crs": written.crs().authid(),
                "features": written.featureCount(),
                "types": sorted(
                    {
                        QgsWkbTypes.displayString(f.geometry().wkbType())
                        for f in written.getFeatures()
                    }
                ),
            }
        )
    return report


if __name__ == "__main__":
    qgis_session.run(write)
