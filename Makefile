# Twofold: `make run` serves a development instance, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint clean

$(BIN)/twofold: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.test-extras: $(BIN)/twofold
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

run: $(BIN)/twofold
	@mkdir -p var
	TWOFOLD_ENV=dev $(BIN)/twofold serve --dev-bootstrap

lint: $(VENV)/.test-extras
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
