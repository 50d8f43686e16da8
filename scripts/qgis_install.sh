#!/bin/sh
# Install QGIS's Python bindings (and Xvfb for scripts/qgis_screenshots.py) from the
# distribution's packages when they are missing: tests/test_qgis.py drives that QGIS.
# Debian/Ubuntu only (apt-get), as root or with password-less sudo; otherwise it says why
# and exits 0, and tests/test_qgis.py skips with the reason. GEODINO_SKIP_QGIS=1 skips the
# installation; GEODINO_QGIS_PYTHON names the interpreter that must import qgis.core
# (default /usr/bin/python3, Debian's, which python3-qgis installs into).
set -u
PYTHON=${GEODINO_QGIS_PYTHON:-/usr/bin/python3}
PACKAGES="python3-qgis qgis-providers xvfb"

version() {
    "$PYTHON" -c 'from qgis.core import Qgis; print(Qgis.QGIS_VERSION)' 2>/dev/null
}

if [ -n "$(version)" ]; then
    echo "QGIS $(version) found ($PYTHON)"
    exit 0
fi
if [ "${GEODINO_SKIP_QGIS:-0}" = 1 ]; then
    echo "QGIS: not installed (GEODINO_SKIP_QGIS=1): tests/test_qgis.py will skip"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "QGIS: not installed, and no apt-get to install it: install QGIS's Python bindings"
    echo "with your package manager (or name their interpreter in GEODINO_QGIS_PYTHON);"
    echo "tests/test_qgis.py will skip"
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "QGIS: not installed, and neither root nor password-less sudo to install it:"
    echo "  sudo apt-get install $PACKAGES"
    echo "tests/test_qgis.py will skip"
    exit 0
fi
echo "QGIS: installing $PACKAGES from the distribution's packages"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q || exit 1
# shellcheck disable=SC2086 # the package list is meant to split
$SUDO apt-get install -y -q $PACKAGES || exit 1
if [ -z "$(version)" ]; then
    echo "QGIS: installed, but $PYTHON cannot import qgis.core" >&2
    exit 1
fi
echo "QGIS $(version) installed ($PYTHON)"
