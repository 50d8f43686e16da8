"""The Processing algorithms geodino:embed, geodino:similar and geodino:maps.

Each turns its parameters into the options of one ``geodino`` command (see ``geodino CMD
--help``), runs it with :func:`~geodino_processing.runner.run_geodino` and hands the files it
wrote to QGIS as layers to load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from osgeo import ogr
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsMapLayer,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputRasterLayer,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterPoint,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsProviderRegistry,
)

from .runner import geodino_command, run_geodino
from .settings import configured_command

#: AOI formats the geodino CLI reads directly; other sources are copied to a GeoPackage.
AOI_FORMATS = ["gpkg", "geojson", "shp"]
#: Table formats of ``geodino embed`` and ``geodino similar``, by extension.
TABLE_FORMATS = ["gpkg", "fgb", "parquet", "geojson"]


class GeodinoAlgorithm(QgsProcessingAlgorithm):
    """What the geodino algorithms share: common parameters and running the CLI."""

    INPUT = "INPUT"
    AOI = "AOI"
    WEIGHTS = "WEIGHTS"
    CHIP_SIZE = "CHIP_SIZE"
    BATCH_SIZE = "BATCH_SIZE"

    def group(self) -> str:
        """No groups: three algorithms read best in one list."""
        return ""

    def groupId(self) -> str:
        """No groups."""
        return ""

    def createInstance(self) -> GeodinoAlgorithm:
        """A new instance of the same algorithm (Processing runs copies)."""
        return type(self)()

    # --- parameters ------------------------------------------------------------------
    def add_raster(self, description: str) -> None:
        """The raster layer to read (a GeoTIFF file)."""
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, description))

    def add_aoi(self) -> None:
        """An optional polygon layer: only the areas inside it are embedded."""
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.AOI,
                "Area of interest (polygons)",
                [QgsProcessing.TypeVectorPolygon],
                optional=True,
            )
        )

    def add_weights(self) -> None:
        """The folder written by ``geodino export``."""
        self.addParameter(
            QgsProcessingParameterFile(
                self.WEIGHTS,
                "geodino export folder (backbone.json, backbone.safetensors)",
                behavior=QgsProcessingParameterFile.Folder,
            )
        )

    def add_windows(self) -> None:
        """Window size and batch size, as advanced parameters."""
        chip = QgsProcessingParameterNumber(
            self.CHIP_SIZE,
            "Window size in pixels (empty: the size the backbone was trained at)",
            QgsProcessingParameterNumber.Integer,
            optional=True,
            minValue=1,
        )
        batch = QgsProcessingParameterNumber(
            self.BATCH_SIZE,
            "Windows per forward pass",
            QgsProcessingParameterNumber.Integer,
            defaultValue=16,
            minValue=1,
        )
        for parameter in (chip, batch):
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(parameter)

    # --- values ----------------------------------------------------------------------
    def raster_path(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        """The file behind the raster layer parameter.

        Raises:
            QgsProcessingException: when the layer is not a raster file GDAL reads.
        """
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        return layer_file(layer)

    def aoi_path(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> str | None:
        """The AOI as a file geodino reads, or None without one.

        A layer that is not a GeoPackage/GeoJSON/Shapefile (a memory layer, a database
        table, a selection) is written to a temporary GeoPackage first, and so is a layer of
        a GeoPackage holding several (geodino reads the first layer of a file).
        """
        if parameters.get(self.AOI) in (None, ""):
            return None
        path, layer = self.parameterAsCompatibleSourceLayerPathAndLayerName(
            parameters, self.AOI, context, AOI_FORMATS, "gpkg", feedback
        )
        if layer and _layer_count(path) > 1:
            # "geojson" only: the GeoPackage is not compatible, so Processing copies the layer
            path = self.parameterAsCompatibleSourceLayerPath(
                parameters, self.AOI, context, ["geojson"], "gpkg", feedback
            )
        return path

    def window_options(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> list[str]:
        """``--chip_size`` (when given) and ``--batch_size``."""
        options = []
        if parameters.get(self.CHIP_SIZE) not in (None, ""):
            chip = self.parameterAsInt(parameters, self.CHIP_SIZE, context)
            options += ["--chip_size", str(chip)]
        batch = self.parameterAsInt(parameters, self.BATCH_SIZE, context)
        return [*options, "--batch_size", str(batch)]

    def run_cli(self, arguments: list[str], feedback: QgsProcessingFeedback) -> list[str]:
        """Run ``geodino ARGUMENTS`` with the configured command."""
        return run_geodino(geodino_command(configured_command()), arguments, feedback)


def layer_file(layer: QgsMapLayer) -> str:
    """The local file a GDAL raster layer reads.

    Raises:
        QgsProcessingException: for another provider (WMS, a database) or no local file.
    """
    name = layer.name()
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"layer {name!r} is not a raster file ({layer.providerType()} layer); save it as a "
            "GeoTIFF first (right-click > Export > Save As...)."
        )
    path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path", "")
    if not path or not Path(path).is_file():
        raise QgsProcessingException(
            f"layer {name!r} reads {layer.source()!r}, not a local file; save it as a GeoTIFF "
            "first (right-click > Export > Save As...)."
        )
    return path


def check_table(path: str, what: str) -> None:
    """Refuse a table path whose format geodino does not write, before running it.

    Raises:
        QgsProcessingException: naming the path and the formats geodino writes.
    """
    if Path(path).suffix.lower().lstrip(".") not in TABLE_FORMATS:
        raise QgsProcessingException(
            f"{what} {path}: give a .gpkg (GeoPackage), .fgb (FlatGeobuf), .parquet "
            "(GeoParquet) or .geojson file."
        )


def point_options(crs: QgsCoordinateReferenceSystem, x: float, y: float) -> list[str]:
    """``--x X --y Y --crs CRS`` of a point in a QGIS CRS."""
    return ["--x", repr(x), "--y", repr(y), *crs_options(crs)]


def crs_options(crs: QgsCoordinateReferenceSystem) -> list[str]:
    """``--crs`` naming a QGIS CRS the way PROJ reads it (EPSG code, or WKT)."""
    if not crs.isValid():
        return []
    authid = crs.authid()
    return ["--crs", authid if authid else crs.toWkt()]


class EmbedAlgorithm(GeodinoAlgorithm):
    """geodino:embed: patch embeddings as a COG, CLS embeddings of chips as a table."""

    PCA = "PCA"
    OUTPUT = "OUTPUT"
    CHIPS = "CHIPS"

    def name(self) -> str:
        """Algorithm id within the provider."""
        return "embed"

    def displayName(self) -> str:
        """Name in the toolbox."""
        return "Embed a raster"

    def shortHelpString(self) -> str:
        """Help shown beside the parameters."""
        return (
            "Runs <code>geodino embed</code>: the backbone's patch embeddings of the raster "
            "(only inside the AOI, when given) as a Cloud-Optimised GeoTIFF with one pixel per "
            "patch on the raster's grid, and/or the CLS embedding of every window as a table "
            "of chip polygons (GeoPackage, FlatGeobuf, GeoParquet or GeoJSON, by the extension). "
            "With <i>Principal components</i> the embeddings are reduced to that many bands "
            "(3 gives a colour image). The raster must have the backbone's bands in its order."
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters."""
        self.add_raster("Raster (GeoTIFF with the backbone's bands)")
        self.add_aoi()
        self.add_weights()
        self.addParameter(
            QgsProcessingParameterNumber(
                self.PCA,
                "Principal components (empty: the full embedding)",
                QgsProcessingParameterNumber.Integer,
                optional=True,
                minValue=1,
            )
        )
        self.add_windows()
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.OUTPUT, "Patch embeddings (Cloud-Optimised GeoTIFF)", optional=True
            )
        )
        chips = QgsProcessingParameterVectorDestination(
            self.CHIPS,
            "Chip table (CLS embedding per window)",
            QgsProcessing.TypeVectorPolygon,
            optional=True,
            createByDefault=False,
        )
        chips.setSupportsNonFileBasedOutput(False)
        self.addParameter(chips)

    def processAlgorithm(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Run ``geodino embed`` once for each output asked for."""
        raster = self.raster_path(parameters, context)
        aoi = self.aoi_path(parameters, context, feedback)
        weights = self.parameterAsFile(parameters, self.WEIGHTS, context)
        options = ["--aoi", aoi] if aoi else []
        if parameters.get(self.PCA) not in (None, ""):
            options += ["--pca", str(self.parameterAsInt(parameters, self.PCA, context))]
        options += self.window_options(parameters, context)
        outputs = {
            key: self.parameterAsOutputLayer(parameters, key, context)
            for key in (self.OUTPUT, self.CHIPS)
        }
        outputs = {key: path for key, path in outputs.items() if path}
        if not outputs:
            raise QgsProcessingException(
                "nothing to write: give a file for the patch embeddings or the chip table."
            )
        for step, (key, path) in enumerate(outputs.items()):
            if feedback.isCanceled():
                raise QgsProcessingException("geodino embed was canceled.")
            if key == self.CHIPS:
                check_table(path, "chip table")
            step_feedback = _StepFeedback(feedback, step, len(outputs))
            self.run_cli(
                ["embed", weights, raster, "--out", path, *options, "--overwrite", "true"],
                step_feedback,
            )
        return outputs


class SimilarAlgorithm(GeodinoAlgorithm):
    """geodino:similar: similarity of every patch to a query point or box, and top matches."""

    POINT = "POINT"
    EXTENT = "EXTENT"
    TOP_K = "TOP_K"
    OUTPUT = "OUTPUT"
    MATCHES = "MATCHES"

    def name(self) -> str:
        """Algorithm id within the provider."""
        return "similar"

    def displayName(self) -> str:
        """Name in the toolbox."""
        return "Find similar places"

    def shortHelpString(self) -> str:
        """Help shown beside the parameters."""
        return (
            "Runs <code>geodino similar</code> on a patch-embedding GeoTIFF written by "
            "<i>Embed a raster</i> (without principal components): the cosine similarity of "
            "every patch to the query, a point (the patch under it) or an extent (the mean "
            "embedding of the patches inside), as a GeoTIFF on the same grid (-1 to 1), and "
            "the most similar patches as polygons with their rank and similarity."
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters."""
        self.add_raster("Patch embeddings (GeoTIFF from geodino embed, without PCA)")
        self.addParameter(QgsProcessingParameterPoint(self.POINT, "Query point", optional=True))
        self.addParameter(
            QgsProcessingParameterExtent(
                self.EXTENT, "Query extent (instead of a point)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.TOP_K,
                "Matches to list",
                QgsProcessingParameterNumber.Integer,
                defaultValue=10,
                minValue=1,
            )
        )
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Similarity"))
        matches = QgsProcessingParameterVectorDestination(
            self.MATCHES, "Most similar patches", QgsProcessing.TypeVectorPolygon
        )
        matches.setSupportsNonFileBasedOutput(False)
        self.addParameter(matches)

    def checkParameterValues(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[bool, str]:
        """Exactly one query: a point or an extent."""
        has_point = parameters.get(self.POINT) not in (None, "")
        has_extent = parameters.get(self.EXTENT) not in (None, "")
        if has_point == has_extent:
            return False, "give a query point or a query extent (one of them)."
        return super().checkParameterValues(parameters, context)

    def processAlgorithm(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Run ``geodino similar`` and load the matches beside the similarity raster."""
        embeddings = self.raster_path(parameters, context)
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if parameters.get(self.POINT) not in (None, ""):
            point = self.parameterAsPoint(parameters, self.POINT, context)
            crs = self.parameterAsPointCrs(parameters, self.POINT, context)
            query = point_options(crs, point.x(), point.y())
        else:
            extent = self.parameterAsExtent(parameters, self.EXTENT, context)
            crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
            box = [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()]
            query = ["--bbox", json.dumps(box), *crs_options(crs)]
        top_k = self.parameterAsInt(parameters, self.TOP_K, context)
        matches = self.parameterAsOutputLayer(parameters, self.MATCHES, context)
        check_table(matches, "matches table")
        arguments = ["similar", embeddings, "--out", out, "--matches", matches, *query]
        self.run_cli([*arguments, "--top_k", str(top_k)], feedback)
        return {self.OUTPUT: out, self.MATCHES: matches}


class MapsAlgorithm(GeodinoAlgorithm):
    """geodino:maps: PCA feature map of a raster and attention maps of a chip."""

    POINT = "POINT"
    OUTPUT = "OUTPUT"
    PCA_MAP = "PCA_MAP"

    def name(self) -> str:
        """Algorithm id within the provider."""
        return "maps"

    def displayName(self) -> str:
        """Name in the toolbox."""
        return "PCA and attention maps"

    def shortHelpString(self) -> str:
        """Help shown beside the parameters."""
        return (
            "Runs <code>geodino maps</code>: the first three principal components of the "
            "patch embeddings as an RGB GeoTIFF on the patch grid (loaded as a layer: patches "
            "that look alike get alike colours), the same as a PNG beside an RGB preview, and "
            "the attention maps of the chip centred on the point (default: the map's centre) "
            "as a PNG, all in the output folder."
        )

    def initAlgorithm(self, configuration: dict[str, Any] | None = None) -> None:
        """Declare the parameters."""
        self.add_raster("Raster (GeoTIFF with the backbone's bands)")
        self.add_aoi()
        self.add_weights()
        self.addParameter(
            QgsProcessingParameterPoint(
                self.POINT, "Centre of the attention chip (empty: the map's centre)", optional=True
            )
        )
        self.add_windows()
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Maps folder"))
        self.addOutput(QgsProcessingOutputRasterLayer(self.PCA_MAP, "PCA map"))

    def processAlgorithm(
        self,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
    ) -> dict[str, Any]:
        """Run ``geodino maps`` and load the PCA map."""
        raster = self.raster_path(parameters, context)
        aoi = self.aoi_path(parameters, context, feedback)
        weights = self.parameterAsFile(parameters, self.WEIGHTS, context)
        out = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        options = ["--aoi", aoi] if aoi else []
        if parameters.get(self.POINT) not in (None, ""):
            point = self.parameterAsPoint(parameters, self.POINT, context)
            crs = self.parameterAsPointCrs(parameters, self.POINT, context)
            options += point_options(crs, point.x(), point.y())
        options += self.window_options(parameters, context)
        self.run_cli(["maps", weights, raster, "--out", out, *options], feedback)
        pca_map = str(Path(out) / "pca_map.tif")
        _load_on_completion(context, pca_map, "PCA map", self.PCA_MAP)
        return {self.OUTPUT: out, self.PCA_MAP: pca_map}


class _StepFeedback(QgsProcessingFeedback):
    """Feedback of one of several CLI runs: its progress is a share of the whole."""

    def __init__(self, parent: QgsProcessingFeedback, step: int, steps: int) -> None:
        super().__init__()
        self.parent, self.step, self.steps = parent, step, steps

    def setProgress(self, progress: float) -> None:
        """Progress of this run, mapped into its share of the whole."""
        self.parent.setProgress((self.step + progress / 100) * 100 / self.steps)

    def isCanceled(self) -> bool:
        """The parent's cancellation."""
        return self.parent.isCanceled()

    def pushInfo(self, info: str) -> None:
        """Pass on."""
        self.parent.pushInfo(info)

    def pushCommandInfo(self, info: str) -> None:
        """Pass on."""
        self.parent.pushCommandInfo(info)

    def pushDebugInfo(self, info: str) -> None:
        """Pass on."""
        self.parent.pushDebugInfo(info)

    def reportError(self, error: str, fatalError: bool = False) -> None:
        """Pass on."""
        self.parent.reportError(error, fatalError)


def _layer_count(path: str) -> int:
    """Number of layers in a vector file (0 when OGR cannot open it)."""
    dataset = ogr.Open(path)
    return 0 if dataset is None else dataset.GetLayerCount()


def _load_on_completion(context: QgsProcessingContext, path: str, name: str, output: str) -> None:
    """Load a file the CLI wrote as a layer once the algorithm has finished."""
    details = QgsProcessingContext.LayerDetails(name, context.project(), output)
    context.addLayerToLoadOnCompletion(path, details)
