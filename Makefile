# Quick start: `make demo` and `make test`; both build the venv first.
# `make demo` installs the runtime only; `make test` (and lint, unit, bench) add the `dev` extra:
# test vectors, moto, hypothesis, ruff, mypy, and the pkcs11, gcp and azure providers' extras. Each install is a stamp that pyproject.toml invalidates.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed

.PHONY: demo test unit lint bench dev clean

$(RUNTIME): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $(RUNTIME)

$(DEV): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(DEV)

demo: $(RUNTIME)
	$(BIN)/keyledger demo

dev: $(RUNTIME)
	$(BIN)/keyledger dev

test: $(DEV) lint
	$(BIN)/pytest -q -rs

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/mypy

# no process started: no broker, moto, OpenBao, TigerBeetle, worker or CLI subprocess
unit: $(DEV)
	$(BIN)/pytest -q -m "not integration and not process"

bench: $(DEV)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache
