"""A headless QGIS session for one test script: JSON in on stdin, JSON verdict out.

Run by QGIS's own Python (not the project's environment); see tests/qgis_client.py.
"""

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

MARKER = "QGIS-RESULT "


def run(work: Callable[[dict[str, Any]], Any], processing: bool = False) -> None:
    """Start QGIS, run ``work(payload)``, print the verdict and leave.

    Args:
        work: the script's body: takes the payload, returns a JSON-able result.
        processing: initialise the Processing framework first (``processing.run``).
    """
    payload = json.load(sys.stdin)
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    try:
        if processing:
            sys.path.append(os.path.join(QgsApplication.pkgDataPath(), "python", "plugins"))
            from processing.core.Processing import Processing

            Processing.initialize()
        verdict = {"result": work(payload)}
    except Exception:
        verdict = {"error": traceback.format_exc()}
    sys.stdout.write(f"\n{MARKER}{json.dumps(verdict)}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # QgsApplication.exitQgis() crashes at teardown when offscreen: leave without it
    os._exit(0)
