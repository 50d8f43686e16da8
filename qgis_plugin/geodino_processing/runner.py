"""Running the ``geodino`` command line of another Python environment from Processing.

QGIS's own Python has no torch, so the algorithms never import geodino: they run its CLI as a
subprocess, turn its progress bars into Processing progress, pass its messages on to the
Processing log, stop it when the user cancels, and raise the CLI's own error message.
"""

from __future__ import annotations

import codecs
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from qgis.core import QgsProcessingException, QgsProcessingFeedback

#: A tqdm progress bar: "embedding 1 raster(s):  50%|█████     | 1/2 [...]".
PROGRESS = re.compile(r"(\d{1,3})%\|")
#: The one-paragraph message the CLI writes before exiting with status 2 on bad input.
CLI_ERROR = re.compile(r"^geodino(?: [\w-]+)?: error: ")
#: Variables a QGIS installation may set for its own GDAL, PROJ and Python; the geodino
#: environment brings its own, and a PROJ database of another version breaks pyproj.
QGIS_ONLY_VARIABLES = ("PYTHONHOME", "GDAL_DATA", "GDAL_DRIVER_PATH", "PROJ_LIB", "PROJ_DATA")


def geodino_command(configured: str | None) -> list[str]:
    """The command that starts geodino, from the provider's setting.

    Args:
        configured: the setting: a ``geodino`` executable, or the Python interpreter of an
            environment where geodino is installed (its name starts with ``python``); empty
            for ``geodino`` on ``PATH``.

    Returns:
        the command, e.g. ``["/env/bin/geodino"]`` or ``["/env/bin/python", "-m", "geodino"]``.

    Raises:
        QgsProcessingException: when nothing is configured and ``geodino`` is not on
            ``PATH``, or the configured path is not a file.
    """
    value = (configured or "").strip()
    if not value:
        found = shutil.which("geodino")
        if found is None:
            raise QgsProcessingException(
                "geodino is not on PATH: set the geodino executable (or the python of the "
                "environment where geodino is installed) in Settings > Options > Processing > "
                "Providers > geodino."
            )
        return [found]
    path = Path(value).expanduser()
    if not path.is_file():
        raise QgsProcessingException(
            f"the geodino executable {value!r} (Settings > Options > Processing > Providers > "
            "geodino) is not a file; give the path of the geodino executable or of the "
            "python of the environment where geodino is installed."
        )
    if path.name.lower().startswith("python"):
        return [str(path), "-m", "geodino"]
    return [str(path)]


def subprocess_environment() -> dict[str, str]:
    """QGIS's environment without the variables that belong to QGIS's own libraries."""
    return {k: v for k, v in os.environ.items() if k not in QGIS_ONLY_VARIABLES}


def _pump(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    """Split a byte stream into lines at newlines and carriage returns (progress bars)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            break
        pending += decoder.decode(chunk)
        *complete, pending = re.split(r"\r\n|\r|\n", pending)
        for line in complete:
            lines.put(line)
    pending += decoder.decode(b"", final=True)
    if pending:
        lines.put(pending)
    lines.put(None)


def run_geodino(
    command: list[str], arguments: list[str], feedback: QgsProcessingFeedback
) -> list[str]:
    """Run ``geodino ARGUMENTS``, reporting its progress and messages in ``feedback``.

    Args:
        command: the command that starts geodino (:func:`geodino_command`).
        arguments: the subcommand and its options, e.g. ``["embed", "export", "a.tif"]``.
        feedback: Processing feedback: progress, log and cancellation.

    Returns:
        the lines the command wrote (progress bars left out).

    Raises:
        QgsProcessingException: when the command cannot be started; when the user cancels
            (the process is stopped); when the command fails: the CLI's own error message,
            or its last line when it has none.
    """
    full = [*command, *arguments]
    feedback.pushCommandInfo(" ".join(shlex.quote(part) for part in full))
    try:
        process = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=subprocess_environment(),
            # on Windows, no console window pops up beside QGIS
            creationflags=subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0,
        )
    except OSError as error:
        raise QgsProcessingException(
            f"cannot start {command[0]} ({error.strerror}); check the geodino executable in "
            "Settings > Options > Processing > Providers > geodino."
        ) from None
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
    reader.start()
    output: list[str] = []
    errors: list[str] = []
    traceback: list[str] = []
    while True:
        if feedback.isCanceled():
            _stop(process)
            process.stdout.close()
            raise QgsProcessingException(f"geodino {arguments[0]} was canceled.")
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            break
        progress = PROGRESS.search(line)
        if progress is not None:
            feedback.setProgress(min(100, int(progress.group(1))))
            continue
        if not line.strip():
            continue
        output.append(line)
        if line.startswith("Traceback (most recent call last)") or traceback:
            # an unexpected failure: its last line is the message, the rest is for debugging
            traceback.append(line)
            feedback.pushDebugInfo(line)
        elif CLI_ERROR.match(line) or errors:
            errors.append(line)  # a message may span several lines
        else:
            feedback.pushInfo(line)
    status = process.wait()
    reader.join()
    process.stdout.close()
    if status != 0:
        message = "\n".join(errors) if errors else _last_words(output, status)
        feedback.reportError(message, fatalError=True)
        raise QgsProcessingException(message)
    return output


def _last_words(output: list[str], status: int) -> str:
    """The message of a failure the CLI did not word: its last line, e.g. an exception's."""
    last = output[-1].strip() if output else "no output"
    return f"geodino failed (exit status {status}): {last}"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a process, killing it when it does not end within five seconds."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
