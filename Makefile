# Two entry points: `make demo` and `make test`. Both install into .venv when it is missing
# or older than pyproject.toml, then run.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.geodino-installed
PYTEST_ARGS ?=

.PHONY: demo test install clean

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

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
