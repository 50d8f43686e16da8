# Two entry points: `make demo` and `make test` (lint, then the tests); `make lint` and
# `make docs` (the documentation site) on their own. All install into .venv when it is missing or older than pyproject.toml, then run.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.geodino-installed
PYTEST_ARGS ?=

.PHONY: demo test lint docs install clean qgis qgis-plugin

install: $(STAMP)

$(STAMP): pyproject.toml
	@if ! ( test -x $(PY) && $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))' ); then \
		interp=$$(sh scripts/find_python.sh) || exit 1; \
		echo "creating $(VENV) with $$interp"; rm -rf $(VENV); $$interp -m venv $(VENV) || exit 1; \
	fi
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/geodino demo

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# style and types: ruff (lint + format) on the whole tree, mypy --strict on geodino/
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# the user guide and the API reference as a static site in site/ (warnings fail the build)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# QGIS from the distribution's packages when missing (tests/test_qgis.py drives it; needs
# root or sudo, otherwise it says so and those tests skip), and the plugin as a ZIP for QGIS
qgis:
	sh scripts/qgis_install.sh

qgis-plugin: $(STAMP)
	$(PY) scripts/qgis_plugin_zip.py build/geodino_processing.zip

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .mypy_cache .ruff_cache
