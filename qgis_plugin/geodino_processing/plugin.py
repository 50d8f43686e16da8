"""The plugin: adds the geodino provider to Processing while it is loaded."""

from __future__ import annotations

from qgis.core import QgsApplication

from .provider import GeodinoProvider


class GeodinoPlugin:
    """Registers :class:`GeodinoProvider` with QGIS's Processing registry.

    Args:
        iface: QGIS's interface (unused: the plugin adds no menus of its own).
    """

    def __init__(self, iface: object | None = None) -> None:
        self.iface = iface
        self.provider: GeodinoProvider | None = None

    def initProcessing(self) -> None:
        """Add the provider; QGIS calls this also when running without the GUI."""
        self.provider = GeodinoProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        """Add the provider (the algorithms appear in the Processing toolbox)."""
        self.initProcessing()

    def unload(self) -> None:
        """Remove the provider."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
