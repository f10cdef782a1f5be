# The two quick-start targets (see README):
#   make serve  - create .venv if needed and run `cimsnap serve` with its embedded defaults
#   make test   - create .venv, install system test dependencies, run lint, types and all tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test lint typecheck pytest proto proto-check bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	touch $@

serve: $(STAMP)
	$(BIN)/cimsnap serve

system-deps:
	./scripts/system-deps.sh
	./scripts/containerd-1.7.sh >/dev/null

lint: $(STAMP)
	$(BIN)/ruff check cimsnap tests benchmarks
	$(BIN)/ruff format --check cimsnap tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy cimsnap

pytest: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test: lint typecheck pytest

proto: $(STAMP)
	$(BIN)/python -m cimsnap.devtools.genproto

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
