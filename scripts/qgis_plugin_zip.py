"""Zip the QGIS plugin for Plugins > Manage and Install Plugins > Install from ZIP.

Usage: python scripts/qgis_plugin_zip.py [OUT.zip] (default build/geodino_processing.zip).
The archive holds the one folder qgis_plugin/geodino_processing/ (without caches), which is
what QGIS unpacks into its plugin folder.
"""

import sys
import zipfile
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[1] / "qgis_plugin" / "geodino_processing"


def zip_plugin(out: Path) -> Path:
    """Write the plugin folder into ``out`` and return it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(PLUGIN.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, Path(PLUGIN.name) / path.relative_to(PLUGIN))
    return out


if __name__ == "__main__":
    print(zip_plugin(Path(sys.argv[1] if len(sys.argv) > 1 else "build/geodino_processing.zip")))
