PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev check test lint types bench clean

# Unit and integration tests mostly wait (on NATS, subprocesses, timers), so four workers fit two
# cores; a module stays on one worker (module-scoped fixtures such as the failover lab).
# End-to-end and Docker tests measure timing on a saturated machine and run one at a time.
XDIST := -n 4 --dist loadfile
FAST_TESTS := tests/unit tests/integration
# PYTEST_ARGS: extra pytest options for every pytest run below (e.g. -x, -v, --timeout=60).

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/meshrtc dev

# The inner loop: lint, types, unit and integration tests (no e2e, Docker or browser).
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q $(XDIST) $(PYTEST_ARGS) $(FAST_TESTS)

# The whole suite, what CI runs (.ci/run).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q $(XDIST) $(PYTEST_ARGS) $(FAST_TESTS)
	$(BIN)/pytest -q $(PYTEST_ARGS) tests $(FAST_TESTS:%=--ignore=%)

lint: $(STAMP)
	$(BIN)/ruff check .

types: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/forwarding.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
