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

# $(call install_if_missing,TARGET,TEST,PACKAGE,WHAT,HINT): nothing when the shell TEST succeeds;
# else Debian's PACKAGE is installed when we are root on Debian (WHAT needs it), else HINT is said.
define install_if_missing
	@if $(2); then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "$(1): installing Debian's $(3) for $(4) (apt-get install $(3))"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(3) >/dev/null) \
			|| echo "$(1): apt-get could not install $(3); $(4) will be skipped (and fail under CI)"; \
	else \
		echo "$(1): $(5)"; \
		echo "$(1): $(4) will be skipped."; \
	fi
endef

# The UI test (regime_pipeline_tests/test_ui_browser.py) drives a Chromium binary: Debian's
# package, installed here when missing and we are root on Debian; REGIME_CHROMIUM names another.
CHROMIUM := $(or $(REGIME_CHROMIUM),/usr/bin/chromium)
browser:
	$(call install_if_missing,browser,[ -x "$(CHROMIUM)" ],chromium,the UI test,no Chromium at $(CHROMIUM) and no way to install it here (needs root and apt-get); install Chromium or Chrome and set REGIME_CHROMIUM to it)

# The cluster tests (regime_pipeline_tests/test_cluster.py) start a throw-away PostgreSQL from
# Debian's server binaries (/usr/lib/postgresql/<version>/bin), installed here when missing and
# we are root on Debian. The package's own service is not used.
postgres:
	$(call install_if_missing,postgres,ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1,postgresql,the cluster tests,no PostgreSQL server binaries and no way to install them here (needs root and apt-get); install Debian's postgresql package)

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
