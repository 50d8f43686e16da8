"""Screenshots of the geodino QGIS plugin for docs/qgis.md, from a real QGIS window.

Run with QGIS's Python under a virtual X server (not the project's environment):

    xvfb-run -a -s "-screen 0 1400x900x24" /usr/bin/python3 scripts/qgis_screenshots.py \\
        --demo geodino_demo --geodino .venv/bin/python

where ``geodino_demo`` is the folder ``geodino demo`` wrote (its catalog and the backbone it
pretrained). It loads qgis_plugin/geodino_processing as QGIS does, runs geodino:maps on the
scene through Processing, and saves in docs/figures/: ``qgis_processing_dialog.png`` (the
dialog of geodino:embed, filled in) and ``qgis_pca_map.png`` (a QGIS window with the PCA map
loaded over the scene).
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def settle(app: object, seconds: float = 1.0) -> None:
    """Let Qt lay out and paint for a while."""
    from qgis.PyQt.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec_()


def scene_layer(path: Path, bands: list[str]) -> object:
    """The scene as true colour (B04, B03, B02), stretched 2-98 %."""
    from qgis.core import (
        QgsContrastEnhancement,
        QgsMultiBandColorRenderer,
        QgsRasterLayer,
        QgsRasterMinMaxOrigin,
    )

    layer = QgsRasterLayer(str(path), f"{path.stem} (B04, B03, B02)", "gdal")
    red, green, blue = (bands.index(b) + 1 for b in ("B04", "B03", "B02"))
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), red, green, blue)
    layer.setRenderer(renderer)
    layer.setContrastEnhancement(
        QgsContrastEnhancement.StretchToMinimumMaximum,
        QgsRasterMinMaxOrigin.CumulativeCut,
    )
    return layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="folder of geodino demo")
    parser.add_argument("--geodino", required=True, help="geodino executable or its python")
    parser.add_argument("--scene", default="zone31_north", help="scene of the demo catalog")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    args = parser.parse_args()

    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer

    app = QgsApplication([], True)
    app.initQgis()
    sys.path.append(os.path.join(QgsApplication.pkgDataPath(), "python", "plugins"))
    from processing.core.Processing import Processing

    Processing.initialize()
    import processing
    from processing.core.ProcessingConfig import ProcessingConfig
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from qgis.core import QgsLayerTreeModel
    from qgis.gui import QgsLayerTreeMapCanvasBridge, QgsLayerTreeView, QgsMapCanvas
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtGui import QColor
    from qgis.PyQt.QtWidgets import QMainWindow, QSplitter

    sys.path.insert(0, str(ROOT / "qgis_plugin"))
    import geodino_processing
    from geodino_processing.settings import COMMAND

    plugin = geodino_processing.classFactory(None)
    plugin.initProcessing()
    ProcessingConfig.setSettingValue(COMMAND, args.geodino)

    demo = args.demo.resolve()
    scene = demo / "data" / "s2" / f"{args.scene}.tif"
    aoi = demo / "data" / "aoi.gpkg"
    export = next(demo.glob("runs/lightning_logs/version_*/export"))
    import json

    bands = json.loads((export / "backbone.json").read_text())["bands"]
    project = QgsProject.instance()
    rgb = scene_layer(scene, bands)
    fields = QgsVectorLayer(str(aoi), "aoi", "ogr")
    project.addMapLayers([rgb, fields])
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. the Processing dialog of geodino:embed, as a user fills it in
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("geodino:embed")
    dialog = AlgorithmDialog(algorithm)
    dialog.setParameters(
        {
            "INPUT": rgb,
            "AOI": fields,
            "WEIGHTS": str(export),
            "PCA": 3,
            "OUTPUT": str(Path.home() / f"{args.scene}_pca.tif"),
            "CHIPS": str(Path.home() / f"{args.scene}_chips.gpkg"),
        }
    )
    dialog.resize(900, 640)
    dialog.show()
    settle(app)
    dialog.grab().save(str(args.out / "qgis_processing_dialog.png"))
    dialog.close()

    # 2. geodino:maps through Processing, its PCA map loaded over the scene in a QGIS window
    with tempfile.TemporaryDirectory() as work:
        maps = Path(work) / "maps"
        results = processing.run(
            "geodino:maps", {"INPUT": str(scene), "WEIGHTS": str(export), "OUTPUT": str(maps)}
        )
        pca = QgsRasterLayer(results["PCA_MAP"], "PCA map (geodino:maps)", "gdal")
        # the AOI's polygons as outlines over the PCA map, the scene below both
        project.removeMapLayer(fields.id())
        fields = QgsVectorLayer(str(aoi), "aoi", "ogr")
        outline = fields.renderer().symbol().symbolLayer(0)
        outline.setBrushStyle(Qt.NoBrush)
        outline.setStrokeColor(QColor("black"))
        outline.setStrokeWidth(0.5)
        project.addMapLayers([fields, pca])  # inserted as a block: the AOI on top
        root = project.layerTreeRoot()

        window = QMainWindow()
        window.setWindowTitle(f"geodino PCA map of {args.scene} - QGIS")
        splitter = QSplitter(Qt.Horizontal)
        view = QgsLayerTreeView()
        model = QgsLayerTreeModel(root)  # kept: the view does not own it
        view.setModel(model)
        canvas = QgsMapCanvas()
        canvas.setCanvasColor(Qt.white)
        bridge = QgsLayerTreeMapCanvasBridge(root, canvas)
        splitter.addWidget(view)
        splitter.addWidget(canvas)
        splitter.setSizes([300, 800])
        window.setCentralWidget(splitter)
        window.resize(1100, 760)
        window.show()
        settle(app, 0.5)
        canvas.setDestinationCrs(rgb.crs())
        canvas.setExtent(pca.extent())
        canvas.refresh()
        settle(app, 3.0)
        canvas.waitWhileRendering()
        settle(app, 0.5)
        window.grab().save(str(args.out / "qgis_pca_map.png"))
        del bridge
    print(f"wrote {args.out / 'qgis_processing_dialog.png'} and {args.out / 'qgis_pca_map.png'}")
    sys.stdout.flush()
    # QgsApplication.exitQgis() may crash at teardown: leave without it
    os._exit(0)


if __name__ == "__main__":
    main()
