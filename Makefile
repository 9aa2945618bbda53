# Two commands set up a fresh machine:  `make run` (the pipeline on the embedded data)
# and `make test` (the test suite). Both create .venv and install the project first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The Dagster instance lives under data/ (Dagster writes its own files into DAGSTER_HOME);
# its settings are the project root's dagster.yaml, linked there.
export DAGSTER_HOME := $(CURDIR)/data/dagster
INSTANCE := $(DAGSTER_HOME)/dagster.yaml

.PHONY: setup browser postgres run test test-all bench ui validate clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	# The editable install lives in .venv; setuptools' leftover build metadata is not needed.
	rm -rf regime_pipeline.egg-info
	touch $@

$(INSTANCE): dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	ln -sf ../../dagster.yaml $@

setup: $(VENV)/.installed $(INSTANCE)

# The UI test (regime_pipeline_tests/test_ui_browser.py) drives a Chromium binary: Debian's
# package, installed here when missing and we are root on Debian; REGIME_CHROMIUM names another.
CHROMIUM := $(or $(REGIME_CHROMIUM),/usr/bin/chromium)
browser:
	@if [ -x "$(CHROMIUM)" ]; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "browser: installing Debian's chromium for the UI test (apt-get install chromium)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "browser: apt-get could not install chromium; the UI test will be skipped (and fail under CI)"; \
	else \
		echo "browser: no Chromium at $(CHROMIUM) and no way to install it here (needs root and apt-get);"; \
		echo "browser: the UI test will be skipped. Install Chromium or Chrome and set REGIME_CHROMIUM to it."; \
	fi

# The cluster tests (regime_pipeline_tests/test_cluster.py) start a throw-away PostgreSQL from
# Debian's server binaries (/usr/lib/postgresql/<version>/bin), installed here when missing and
# we are root on Debian. The package's own service is not used.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "postgres: installing Debian's postgresql for the cluster tests (apt-get install postgresql)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
			|| echo "postgres: apt-get could not install postgresql; the cluster tests will be skipped (and fail under CI)"; \
	else \
		echo "postgres: no PostgreSQL server binaries and no way to install them here (needs root and apt-get);"; \
		echo "postgres: the cluster tests will be skipped. Install Debian's postgresql package."; \
	fi

run: setup
	$(BIN)/regime-pipeline run

test: setup browser postgres
	$(BIN)/python -m pytest

test-all: setup browser postgres
	$(BIN)/python -m pytest -m ""

bench: setup
	$(BIN)/python -m regime_pipeline_tests.benchmarks

ui: setup
	$(BIN)/dagster dev -w workspace.yaml

validate: setup
	$(BIN)/dagster definitions validate -w workspace.yaml

clean:
	rm -rf data/dagster data/lake data/warehouse.duckdb data/models data/reports data/ledger
