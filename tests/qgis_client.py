"""Driving a real QGIS from the tests: scripts in tests/qgis_scripts/ run by QGIS's Python.

QGIS's Python bindings belong to the system Python (Debian's python3-qgis), not to the
project's environment, so each script runs as a subprocess of the interpreter that imports
``qgis.core``, headless (``QT_QPA_PLATFORM=offscreen``). It reads its input as JSON on stdin
and prints its verdict as one JSON line after the marker :data:`MARKER`
(tests/qgis_scripts/qgis_session.py), then leaves without ``QgsApplication.exitQgis()``,
which crashes at teardown when offscreen.
"""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

#: The folder of the scripts QGIS runs.
SCRIPTS = Path(__file__).parent / "qgis_scripts"
#: The line prefix of a script's JSON verdict (QGIS writes its own messages around it).
MARKER = "QGIS-RESULT "
#: Where Debian (and most Linux distributions) install the bindings.
CANDIDATES = ("/usr/bin/python3", "python3")


def environment(home: str | None = None) -> dict[str, str]:
    """This process's environment, headless for Qt, with QGIS's settings in ``home``.

    Args:
        home: a folder for QGIS's settings and profile (XDG config, data and runtime
            folders), so that runs neither read nor change the user's QGIS settings.
    """
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    if home is not None:
        env.update(XDG_CONFIG_HOME=home, XDG_DATA_HOME=home, XDG_RUNTIME_DIR=home)
    return env


def find_qgis_python() -> tuple[str | None, str]:
    """The first interpreter that imports ``qgis.core``, or None and why.

    ``GEODINO_QGIS_PYTHON`` names one explicitly; otherwise the system Python is tried.

    Returns:
        the interpreter (or None) and a sentence on what was tried, for a skip reason.
    """
    named = os.environ.get("GEODINO_QGIS_PYTHON")
    candidates = [named] if named else list(CANDIDATES)
    tried = []
    for candidate in candidates:
        python = shutil.which(candidate)
        if python is None:
            tried.append(f"{candidate} (not found)")
            continue
        probe = subprocess.run(
            [python, "-c", "import qgis.core"],
            env=environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode == 0:
            return python, ""
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        tried.append(f"{python} ({last})")
    reason = (
        "QGIS's Python bindings cannot be imported by "
        + "; ".join(tried)
        + ": install them (Debian/Ubuntu: apt-get install python3-qgis qgis-providers, or "
        "scripts/qgis_install.sh) or name the interpreter in GEODINO_QGIS_PYTHON"
    )
    return None, reason


def run_qgis(python: str, script: str, payload: dict[str, Any], timeout: float = 300) -> Any:
    """Run a script of tests/qgis_scripts/ in QGIS and return its verdict.

    QGIS runs with its settings in a fresh temporary folder (:func:`environment`).

    Args:
        python: QGIS's interpreter (:func:`find_qgis_python`).
        script: file name in tests/qgis_scripts/.
        payload: the script's input, sent as JSON on stdin.
        timeout: seconds before the run is stopped.

    Returns:
        the script's JSON verdict.

    Raises:
        AssertionError: with QGIS's output when the script wrote no verdict or failed.
    """
    with tempfile.TemporaryDirectory(prefix="qgis-home-") as home:
        done = subprocess.run(
            [python, str(SCRIPTS / script)],
            input=json.dumps(payload),
            env=environment(home),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    verdicts = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if not verdicts:
        raise AssertionError(
            f"{script} gave no verdict (exit status {done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    verdict = json.loads(verdicts[-1][len(MARKER) :])
    if "error" in verdict:
        raise AssertionError(f"{script} failed in QGIS:\n{verdict['error']}")
    return verdict["result"]
