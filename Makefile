# redlight: `make demo` and `make test` each create their own virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make test-ha` runs Home Assistant's real core, which wants Python 3.13, in its own .ha-venv:
# a python3.13 from PATH that runs (a pyenv shim may not), else pyenv's 3.13.0.
HA_PYTHON ?= $(shell python3.13 -c 'import sys; print(sys.executable)' 2>/dev/null \
	|| echo /root/.pyenv/versions/3.13.0/bin/python3.13)
HA_VENV := .ha-venv

.PHONY: venv test test-unit test-integration test-3.1.1 test-ha ha-chroot lint demo bench clean \
	podman image test-image test-package

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
	$(BIN)/python -m coverage run -m pytest -m "not integration and not image and not package"
	$(BIN)/python -m coverage combine --quiet
	$(BIN)/python -m coverage report
	$(BIN)/python -m pytest -m integration

test-unit: venv
	$(BIN)/python -m pytest tests/unit tests/contract -m "not integration and not image and not package"

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

## image: the Home Assistant App and the container image, built offline with podman: a Debian
## bookworm base made from the mirror with debootstrap (once), wheels built outside the build.
## Needs root (debootstrap, podman as root); installs podman, runc and debootstrap if missing.
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE := localhost/redlight:$(IMAGE_VERSION)
APP_IMAGE := localhost/redlight-app:$(IMAGE_VERSION)
BASE_IMAGE := localhost/redlight-base:bookworm
# podman on these machines: runc with cgroupfs, explicit ulimits (crun fails here).
PODMAN := podman --runtime runc --cgroup-manager cgroupfs
ULIMITS := --ulimit nofile=1024:1024 --ulimit nproc=1024:1024
MIRROR = $(shell sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
WHEELS := redlight-app/wheels

podman:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null \
	    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        podman runc debootstrap >/dev/null; }

image: podman
	@$(PODMAN) image exists $(BASE_IMAGE) || { \
	    set -e; root=$$(mktemp -d); \
	    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
	        bookworm $$root $(or $(MIRROR),http://deb.debian.org/debian) >/dev/null; \
	    rm -rf $$root/var/lib/apt/lists/* $$root/var/cache/apt/*.bin \
	        $$root/usr/share/doc/* $$root/usr/share/man/* $$root/usr/share/locale/*; \
	    tar -C $$root -c . | $(PODMAN) import - $(BASE_IMAGE) >/dev/null; rm -rf $$root; }
	rm -rf $(WHEELS)
	$(PYTHON) -m pip wheel --quiet --no-deps -w $(WHEELS) .
	# The image's Python is bookworm's 3.11: its binary wheels, whatever this machine runs.
	$(PYTHON) -m pip download --quiet --only-binary=:all: --python-version 3.11 \
	    --implementation cp --platform manylinux2014_$$(uname -m) -d $(WHEELS) $(WHEELS)/redlight-*.whl
	# Docker format: OCI images have no HEALTHCHECK (podman drops it with a warning). The
	# images these replace are removed (only those: a prune would take other projects' too).
	old="$$($(PODMAN) images -q $(IMAGE)) $$($(PODMAN) images -q $(APP_IMAGE))"; \
	$(PODMAN) build $(ULIMITS) --format docker --network none --build-arg BUILD_FROM=$(BASE_IMAGE) \
	    --build-arg BUILD_VERSION=$(IMAGE_VERSION) --target container -t $(IMAGE) redlight-app \
	&& $(PODMAN) build $(ULIMITS) --format docker --network none --build-arg BUILD_FROM=$(BASE_IMAGE) \
	    --build-arg BUILD_VERSION=$(IMAGE_VERSION) --target app -t $(APP_IMAGE) redlight-app \
	&& for id in $$old; do $(PODMAN) rmi $$id >/dev/null 2>&1 || true; done

## test-image: both images under podman against a private mosquitto and simulated plugs
## (tests/image; not part of `make test`).
test-image: venv image
	REDLIGHT_IMAGE=$(IMAGE) REDLIGHT_APP_IMAGE=$(APP_IMAGE) $(BIN)/python -m pytest -m image \
	    --junitxml=build/test-image.xml -o junit_family=xunit1 tests/image

## test-package: the wheel as PyPI would get it: twine check, a fresh venv, `redlight demo`.
PACKAGE_VENV := build/package-tools
test-package: venv
	@test -x $(PACKAGE_VENV)/bin/twine || { $(PYTHON) -m venv $(PACKAGE_VENV) \
	    && $(PACKAGE_VENV)/bin/pip install --quiet build twine; }
	REDLIGHT_PACKAGE_TOOLS=$(abspath $(PACKAGE_VENV))/bin $(BIN)/python -m pytest -m package \
	    tests/package

demo: venv
	$(BIN)/redlight demo

clean:
	rm -rf $(VENV) $(HA_VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* \
	    $(WHEELS) build *.egg-info
