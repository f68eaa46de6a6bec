# redlight: `make demo` and `make test` each create their own virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make test-ha` runs Home Assistant's real core, which wants Python 3.13, in its own .ha-venv:
# a python3.13 from PATH that runs (a pyenv shim may not), else pyenv's 3.13.0.
HA_PYTHON ?= $(shell python3.13 -c 'import sys; print(sys.executable)' 2>/dev/null \
	|| echo /root/.pyenv/versions/3.13.0/bin/python3.13)
HA_VENV := .ha-venv

.PHONY: venv test test-unit test-integration test-3.1.1 test-ha ha-chroot lint demo bench clean

$(BIN)/redlight: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

venv: $(BIN)/redlight

## test: both tiers (unit tests on the in-memory broker, integration tests on a private mosquitto).
## The fast tier runs under branch coverage of daemon/redlight and fails below
## [tool.coverage.report] fail_under in pyproject.toml; the integration tier runs untraced, since
## it times real processes (a traced test process read a plug's ON 1.6 s late on a busy machine).
test: venv
	$(BIN)/python -m coverage erase
	$(BIN)/python -m coverage run -m pytest -m "not integration"
	$(BIN)/python -m coverage combine --quiet
	$(BIN)/python -m coverage report
	$(BIN)/python -m pytest -m integration

test-unit: venv
	$(BIN)/python -m pytest tests/unit tests/contract -m "not integration"

test-integration: venv
	$(BIN)/python -m pytest -m integration

## test-3.1.1: the integration tier with the daemon on MQTT 3.1.1 throughout (make test runs it
## on 5, the default, with the connection faults and the security tests on both).
test-3.1.1: venv
	REDLIGHT_TEST_PROTOCOL=3.1.1 $(BIN)/python -m pytest -m integration

## reliability: the fault x phase matrix (tests/integration/test_faults.py); writes RELIABILITY.md
reliability: venv
	REDLIGHT_RELIABILITY_REPORT=1 $(BIN)/python -m pytest tests/integration/test_faults.py

# The MQTT integration's requirements (paho-mqtt) are installed here, from its manifest, so that
# Home Assistant does not pip-install them while the test waits for it to start.
$(HA_VENV)/bin/hass:
	$(HA_PYTHON) -m venv $(HA_VENV)
	$(HA_VENV)/bin/pip install --quiet --upgrade pip
	$(HA_VENV)/bin/pip install --quiet homeassistant==2025.4.4
	$(HA_VENV)/bin/python -c "import json, pathlib, homeassistant; \
	    m = pathlib.Path(homeassistant.__file__).parent / 'components/mqtt/manifest.json'; \
	    print(*json.loads(m.read_text())['requirements'])" \
	    | xargs $(HA_VENV)/bin/pip install --quiet
	@touch $@

# Today's Home Assistant needs Python >= 3.14.2: a Debian sid chroot, built once (tools/ha-chroot.sh);
# tools/ha-python runs its interpreter as if it were a local one.
HA_ROOT := .ha-2026

ha-chroot:
	tools/ha-chroot.sh $(abspath $(HA_ROOT))

## test-ha: redlight's discovery against the real Home Assistant core (not part of `make test`),
## on 2025.4.4 (the oldest supported, .ha-venv) and 2026.11 (today's, in the chroot).
test-ha: venv $(HA_VENV)/bin/hass ha-chroot
	REDLIGHT_HA_PYTHON=$(abspath $(HA_VENV))/bin/python $(BIN)/python -m pytest \
	    tests/integration/test_homeassistant.py
	REDLIGHT_HA_ROOT=$(abspath $(HA_ROOT)) REDLIGHT_HA_PYTHON=$(abspath tools/ha-python) \
	    $(BIN)/python -m pytest tests/integration/test_homeassistant.py

lint: venv
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench
	$(BIN)/mypy

## bench: redlight's performance against a private mosquitto (see BENCHMARKS.md)
bench: venv
	$(BIN)/python -m bench --quick

demo: venv
	$(BIN)/redlight demo

clean:
	rm -rf $(VENV) $(HA_VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
