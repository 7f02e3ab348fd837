# Quick start: `make demo` and `make test`; both build the venv first.
# `make demo` installs the runtime only; `make test` (and lint, unit, bench) add the `dev` extra:
# test vectors, moto, hypothesis, ruff, mypy, and the pkcs11, gcp and azure providers' extras. Each install is a stamp that pyproject.toml invalidates.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed
# pytest-xdist processes for `make test` and `make unit`: most of an integration test is waiting on a broker,
# a worker or a timeout, so more processes than cores pay; `make test TEST_WORKERS=0` runs in this one process
TEST_WORKERS ?= 4
# `--dist loadgroup`: a module with a module-scoped fixture runs in one process (tests/conftest.py), the rest test by test
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)
# uv (from PyPI, into the venv) downloads and installs in parallel; plain pip where uv did not install or fails
install = if $(BIN)/uv --version >/dev/null 2>&1; then $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(1) || $(BIN)/pip install --quiet $(1); else $(BIN)/pip install --quiet $(1); fi

.PHONY: demo test unit lint bench dev clean

$(RUNTIME): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet uv || echo "no uv: installing with pip"
	$(call install,-e .)
	@touch $(RUNTIME)

$(DEV): $(RUNTIME)
	$(call install,-e '.[dev]')
	@touch $(DEV)

demo: $(RUNTIME)
	$(BIN)/keyledger demo

dev: $(RUNTIME)
	$(BIN)/keyledger dev

test: $(DEV) lint
	$(BIN)/pytest -q -rs $(XDIST)

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/mypy

# no process started: no broker, moto, OpenBao, TigerBeetle, worker or CLI subprocess
unit: $(DEV)
	$(BIN)/pytest -q $(XDIST) -m "not integration and not process"

bench: $(DEV)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache
