"""geodino for QGIS: a Processing provider that runs the geodino command line.

Install by copying this folder into QGIS's plugin folder (or zipping it and using
Plugins > Manage and Install Plugins > Install from ZIP), then enable "geodino".
"""

from __future__ import annotations


def classFactory(iface: object) -> object:
    """The plugin object QGIS loads.

    Args:
        iface: QGIS's interface.

    Returns:
        the plugin.
    """
    from .plugin import GeodinoPlugin

    return GeodinoPlugin(iface)
