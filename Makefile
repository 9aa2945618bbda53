# Two commands set up a fresh machine:  `make run` (the pipeline on the embedded data)
# and `make test` (the test suite). Both create .venv and install the project first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Run history and everything else the pipeline writes stays under data/.
export DAGSTER_HOME := $(CURDIR)

.PHONY: setup run test test-all bench ui validate clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

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
	rm -rf data/dagster data/lake data/warehouse.duckdb data/models data/reports
