"""The Processing provider "geodino"."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider

from . import settings
from .algorithms import EmbedAlgorithm, MapsAlgorithm, SimilarAlgorithm


class GeodinoProvider(QgsProcessingProvider):
    """Provides geodino:embed, geodino:similar and geodino:maps."""

    def id(self) -> str:
        """Prefix of the algorithm ids (``geodino:embed``)."""
        return "geodino"

    def name(self) -> str:
        """Name in the toolbox and the options."""
        return "geodino"

    def longName(self) -> str:
        """Name with what the provider runs."""
        return "geodino (DINOv2 embeddings for Earth observation)"

    def load(self) -> bool:
        """Register the setting, then the algorithms."""
        settings.register(self.name())
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        """Remove the setting."""
        settings.unregister()

    def loadAlgorithms(self) -> None:
        """Add the three algorithms."""
        for algorithm in (EmbedAlgorithm(), SimilarAlgorithm(), MapsAlgorithm()):
            self.addAlgorithm(algorithm)

    def supportedOutputRasterLayerExtensions(self) -> list[str]:
        """GeoTIFFs, what geodino writes."""
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self) -> list[str]:
        """Tables: GeoPackage first (the default), FlatGeobuf, GeoParquet, GeoJSON."""
        return ["gpkg", "fgb", "parquet", "geojson"]
