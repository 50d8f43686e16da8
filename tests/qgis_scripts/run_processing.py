"""The geodino Processing provider in headless QGIS: ``processing.runAndLoadResults``.

Input: ``plugins`` (the folder holding geodino_processing), ``command`` (the geodino
setting), ``scene``, ``aoi``, ``export``, ``out`` (a folder), ``point`` ([x, y, "EPSG:..."])
and ``chips`` (a chip-table file name, or null). The plugin is loaded through its
``classFactory`` as QGIS loads it. Verdict: for each run, its results, the progress and
messages it reported and the layers it added to the project; for the failing runs, the
exception's message and the errors in the feedback.
"""

import sys
import time
from pathlib import Path
from typing import Any

import qgis_session


def recorder(cancel_on_progress: bool = False) -> Any:
    """A feedback that keeps what an algorithm reports (and cancels at its first progress)."""
    from qgis.core import QgsProcessingFeedback

    class Recorder(QgsProcessingFeedback):
        """Keeps what an algorithm reports."""

        def __init__(self) -> None:
            super().__init__()
            self.progress: list[float] = []
            self.info: list[str] = []
            self.errors: list[str] = []
            self.commands: list[str] = []

        def setProgress(self, progress: float) -> None:
            self.progress.append(progress)
            super().setProgress(progress)
            if cancel_on_progress:
                self.cancel()  # as a user pressing Cancel while the command runs

        def pushInfo(self, info: str) -> None:
            self.info.append(info)

        def pushCommandInfo(self, info: str) -> None:
            self.commands.append(info)

        def reportError(self, error: str, fatalError: bool = False) -> None:
            self.errors.append(error)

    return Recorder()


def layer_info(layer: Any) -> dict[str, Any]:
    from qgis.core import QgsMapLayerType

    info = {
        "name": layer.name(),
        "source": layer.source(),
        "valid": layer.isValid(),
        "crs": layer.crs().authid(),
    }
    if layer.type() == QgsMapLayerType.RasterLayer:
        info.update(kind="raster", bands=layer.bandCount(), renderer=layer.renderer().type())
    else:
        info.update(kind="vector", features=layer.featureCount(), fields=layer.fields().names())
    return info


def run(algorithm: str, parameters: dict[str, Any], feedback: Any = None) -> dict[str, Any]:
    """Run and load; the layers the run added; or the exception it raised."""
    import processing
    from qgis.core import QgsProcessingException, QgsProject

    project = QgsProject.instance()
    before = set(project.mapLayers())
    feedback = feedback or recorder()
    record: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        record["results"] = processing.runAndLoadResults(algorithm, parameters, feedback=feedback)
    except QgsProcessingException as error:
        record["exception"] = str(error)
    record["seconds"] = time.perf_counter() - start
    record.update(
        progress=feedback.progress,
        info=feedback.info,
        errors=feedback.errors,
        commands=feedback.commands,
        layers=[layer_info(project.mapLayer(i)) for i in set(project.mapLayers()) - before],
    )
    return record


def two_layer_geopackage(aoi: Path, path: Path) -> str:
    """A GeoPackage of two layers: the AOI (``fields``) and its first feature (``other``).

    Returns:
        the second layer's source, as QGIS names it.
    """
    from qgis.core import QgsFeatureRequest, QgsProject, QgsVectorFileWriter, QgsVectorLayer

    fields = QgsVectorLayer(str(aoi), "fields", "ogr")
    first = fields.materialize(QgsFeatureRequest().setLimit(1))
    context = QgsProject.instance().transformContext()
    for name, layer, action in (
        ("fields", fields, QgsVectorFileWriter.CreateOrOverwriteFile),
        ("other", first, QgsVectorFileWriter.CreateOrOverwriteLayer),
    ):
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName = "GPKG"
        options.layerName = name
        options.actionOnExistingFile = action
        error, message, _, _ = QgsVectorFileWriter.writeAsVectorFormatV3(
            layer, str(path), context, options
        )
        assert error == QgsVectorFileWriter.NoError, message
    return f"{path}|layername=other"


def aoi_passed(command: str) -> dict[str, Any]:
    """The layers and feature names of the file given to ``--aoi`` in a command line."""
    import shlex

    from osgeo import ogr

    arguments = shlex.split(command)
    path = arguments[arguments.index("--aoi") + 1]
    dataset = ogr.Open(path)
    layer = dataset.GetLayer(0)
    return {
        "path": path,
        "layers": dataset.GetLayerCount(),
        "names": [feature.GetField("name") for feature in layer],
    }


def main(payload: dict[str, Any]) -> dict[str, Any]:
    from processing.core.ProcessingConfig import ProcessingConfig
    from qgis.core import QgsApplication

    sys.path.insert(0, payload["plugins"])
    import geodino_processing

    plugin = geodino_processing.classFactory(None)
    plugin.initProcessing()
    from geodino_processing.settings import COMMAND

    provider = QgsApplication.processingRegistry().providerById("geodino")
    report: dict[str, Any] = {
        "algorithms": sorted(a.id() for a in provider.algorithms()),
        "setting": ProcessingConfig.getSetting(COMMAND),
    }
    ProcessingConfig.setSettingValue(COMMAND, payload["command"])
    out = Path(payload["out"])
    common = {"INPUT": payload["scene"], "AOI": payload["aoi"], "WEIGHTS": payload["export"]}
    windows = {"CHIP_SIZE": 28, "BATCH_SIZE": 2}
    embed = {**common, **windows, "OUTPUT": str(out / "emb.tif")}
    if payload.get("chips"):
        embed["CHIPS"] = str(out / payload["chips"])
    report["embed"] = run("geodino:embed", embed)
    x, y, crs = payload["point"]
    point = f"{x},{y} [{crs}]"
    report["similar"] = run(
        "geodino:similar",
        {
            "INPUT": str(out / "emb.tif"),
            "POINT": point,
            "TOP_K": 5,
            "OUTPUT": str(out / "sim.tif"),
            "MATCHES": str(out / "matches.gpkg"),
        },
    )
    report["maps"] = run(
        "geodino:maps", {**common, **windows, "POINT": point, "OUTPUT": str(out / "maps")}
    )
    report["missing_export"] = run(
        "geodino:embed",
        {
            **embed,
            "WEIGHTS": str(out / "no_such_export"),
            "OUTPUT": str(out / "never.tif"),
            "CHIPS": None,
        },
    )
    canceled = recorder(cancel_on_progress=True)
    report["canceled"] = run(
        "geodino:embed", {**embed, "OUTPUT": str(out / "canceled.tif")}, canceled
    )
    not_a_program = out / "not_geodino.txt"
    not_a_program.write_text("not a program\n")
    ProcessingConfig.setSettingValue(COMMAND, str(not_a_program))
    report["not_a_program"] = run(
        "geodino:embed", {**embed, "OUTPUT": str(out / "never.tif"), "CHIPS": None}
    )
    # a python without geodino (QGIS's own): the command fails with an exception, not a
    # "geodino ...: error:" message. Its AOI, the second layer of a GeoPackage, shows in the
    # command line what geodino would have read.
    ProcessingConfig.setSettingValue(COMMAND, sys.executable)
    layers = two_layer_geopackage(Path(payload["aoi"]), out / "layers.gpkg")
    report["python_without_geodino"] = run(
        "geodino:embed",
        {**embed, "AOI": layers, "OUTPUT": str(out / "never.tif"), "CHIPS": None},
    )
    report["aoi_passed"] = aoi_passed(report["python_without_geodino"]["commands"][0])
    plugin.unload()
    report["unloaded"] = QgsApplication.processingRegistry().providerById("geodino") is None
    return report


if __name__ == "__main__":
    qgis_session.run(main, processing=True)
