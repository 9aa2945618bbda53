# Two commands set up a fresh machine:  `make run` (the pipeline on the embedded data)
# and `make test` (the test suite). Both create .venv and install the project first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The Dagster instance lives under data/ (Dagster writes its own files into DAGSTER_HOME);
# its settings are the project root's dagster.yaml, linked there.
export DAGSTER_HOME := $(CURDIR)/data/dagster
INSTANCE := $(DAGSTER_HOME)/dagster.yaml

.PHONY: setup run test test-all bench ui validate clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	# The editable install lives in .venv; setuptools' leftover build metadata is not needed.
	rm -rf regime_pipeline.egg-info
	touch $@

$(INSTANCE): dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	ln -sf ../../dagster.yaml $@

setup: $(VENV)/.installed $(INSTANCE)

run: setup
	$(BIN)/regime-pipeline run

test: setup
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m ""

bench: setup
	$(BIN)/python -m regime_pipeline_tests.benchmarks

ui: setup
	$(BIN)/dagster dev -w workspace.yaml

validate: setup
	$(BIN)/dagster definitions validate -w workspace.yaml

clean:
	rm -rf data/dagster data/lake data/warehouse.duckdb data/models data/reports data/ledger
