# redlight: `make demo` and `make test` each create their own virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv test test-unit test-integration lint demo clean

$(BIN)/redlight: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

venv: $(BIN)/redlight

## test: both tiers (unit tests on the in-memory broker, integration tests on a private mosquitto)
test: venv
	$(BIN)/python -m pytest

test-unit: venv
	$(BIN)/python -m pytest tests/unit tests/contract -m "not integration"

test-integration: venv
	$(BIN)/python -m pytest -m integration

lint: venv
	$(BIN)/ruff check daemon tests
	$(BIN)/ruff format --check daemon tests
	$(BIN)/mypy

demo: venv
	$(BIN)/redlight demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
