"""The Home Assistant App's files hold to the rules App authors are held to.

The rules are those of ``frenck/action-addon-linter``'s ``config.schema.json`` (required keys,
known keys, ``arch``, the ``services`` pattern, ``map`` types) and the Supervisor's option
types (``supervisor/addons/validate.py``: every option in ``schema``, each type one it knows),
plus what redlight's entry point needs of them. :func:`problems` is the checker; the tests run
it on the shipped ``config.yaml`` and on broken copies, so a checker that stopped looking
would fail too.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from redlight import app

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "redlight-app"

REQUIRED = ("name", "version", "slug", "description", "arch")
#: The linter schema's top-level keys (it allows no others).
KNOWN = frozenset(
    [
        "advanced",
        "apparmor",
        "arch",
        "audio",
        "auth_api",
        "auto_uart",
        "backup",
        "backup_exclude",
        "backup_pre",
        "backup_post",
        "boot",
        "breaking_versions",
        "codenotary",
        "description",
        "devices",
        "devicetree",
        "discovery",
        "docker_api",
        "environment",
        "full_access",
        "gpio",
        "hassio_api",
        "hassio_role",
        "homeassistant",
        "homeassistant_api",
        "host_dbus",
        "host_ipc",
        "host_network",
        "host_pid",
        "host_uts",
        "image",
        "ingress",
        "ingress_entry",
        "ingress_port",
        "ingress_stream",
        "init",
        "journald",
        "kernel_modules",
        "legacy",
        "machine",
        "map",
        "name",
        "options",
        "panel_admin",
        "panel_icon",
        "panel_title",
        "ports",
        "ports_description",
        "privileged",
        "realtime",
        "schema",
        "services",
        "slug",
        "stage",
        "startup",
        "stdin",
        "timeout",
        "tmpfs",
        "uart",
        "udev",
        "ulimits",
        "url",
        "usb",
        "version",
        "video",
        "watchdog",
        "webui",
    ]
)
#: Supported since Home Assistant 2025.12 (armhf, armv7 and i386 were dropped).
ARCHES = frozenset({"aarch64", "amd64"})
SERVICE = re.compile(r"^(?P<service>mqtt|mysql):(?P<rights>provide|want|need)$")
MAP = re.compile(
    r"^(addon_config|app_config|all_addon_configs|all_app_configs|config|homeassistant_config"
    r"|ssl|addons|local_apps|backup|share|media)(:(rw|ro))?$"
)
#: The Supervisor's option types (RE_SCHEMA_ELEMENT), each optional with a trailing "?".
OPTION_TYPE = re.compile(
    r"^(?:(?:bool|email|url|port|device(?:\(subsystem=[a-z]+\))?)"
    r"|str(?:\(\d*,\d*\))?|password(?:\(\d*,\d*\))?"
    r"|int(?:\(-?\d*,-?\d*\))?|float(?:\(-?[\d.]*,-?[\d.]*\))?"
    r"|match\(.*\)|list\(.+\))\??$"
)
SLUG = re.compile(r"^[a-z0-9_]+$")


def manifest() -> dict[str, Any]:
    """The shipped config.yaml."""
    loaded: dict[str, Any] = yaml.safe_load((APP_DIR / "config.yaml").read_text())
    return loaded


def problems(config: dict[str, Any]) -> list[str]:
    """Every rule ``config`` breaks, one line each (empty: it holds to all of them)."""
    found = [f"{key}: required" for key in REQUIRED if key not in config]
    found += [f"{key}: not a key Apps may have" for key in sorted(set(config) - KNOWN)]
    for key in ("name", "version", "slug", "description"):
        if key in config and not isinstance(config[key], str):
            found.append(f'{key}: must be a string (quote a version like "0.1.0")')
    if isinstance(config.get("slug"), str) and not SLUG.fullmatch(config["slug"]):
        found.append("slug: a-z, 0-9 and _ only")
    arch = config.get("arch", [])
    if not arch or not set(arch) <= ARCHES:
        found.append(f"arch: {arch!r} must be a non-empty subset of {sorted(ARCHES)}")
    found += [f"services: {s!r}" for s in config.get("services", []) if not SERVICE.match(s)]
    found += [f"map: {m!r}" for m in config.get("map", []) if not MAP.match(str(m))]
    found += _option_problems(config.get("options", {}), config.get("schema", {}), "options")
    return found


def _option_problems(options: Any, schema: Any, where: str) -> list[str]:
    """Every option has a schema entry of a known type, and matches it."""
    if isinstance(schema, str):
        if not OPTION_TYPE.match(schema):
            return [f"{where}: unknown option type {schema!r}"]
        return _value_problems(options, schema, where)
    if isinstance(schema, list):
        if not isinstance(options, list) or len(schema) != 1:
            return [f"{where}: a list option needs a list and one schema element"]
        return [
            p
            for i, item in enumerate(options)
            for p in _option_problems(item, schema[0], f"{where}[{i}]")
        ]
    if not isinstance(schema, dict) or not isinstance(options, dict):
        return [f"{where}: options and schema disagree in shape"]
    found = [f"{where}.{key}: not in schema" for key in options if key not in schema]
    for key, kind in schema.items():
        if key in options:
            found += _option_problems(options[key], kind, f"{where}.{key}")
        elif not (isinstance(kind, str) and kind.endswith("?")) and not isinstance(kind, list):
            found.append(f"{where}.{key}: required by the schema but has no default")
    return found


def _value_problems(value: Any, kind: str, where: str) -> list[str]:
    """A default value the type would refuse (what the Supervisor checks at save)."""
    kind = kind.removesuffix("?")
    if kind.startswith("list("):
        choices = kind[5:-1].split("|")
        return [] if value in choices else [f"{where}: {value!r} is not one of {choices}"]
    if kind.startswith("match("):
        return [] if re.fullmatch(kind[6:-1], str(value)) else [f"{where}: {value!r} mismatch"]
    if kind.startswith("int") and not isinstance(value, int):
        return [f"{where}: {value!r} is not an int"]
    return []


def test_the_shipped_manifest_holds_to_every_rule() -> None:
    """config.yaml has the required keys, only known ones, valid arch, services, map, options."""
    assert problems(manifest()) == []


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda c: c.pop("version"), "version: required"),
        (lambda c: c.pop("arch"), "arch:"),
        (lambda c: c.update(arch=["aarch64", "armv7"]), "arch:"),
        (lambda c: c.update(version=0.1), "version: must be a string"),
        (lambda c: c.update(services=["mqtt:needs"]), "services: 'mqtt:needs'"),
        (lambda c: c.update(map=["addon_config:rx"]), "map: 'addon_config:rx'"),
        (lambda c: c.update(colour="red"), "colour: not a key"),
        (lambda c: c["options"].update(extra=1), "options.extra: not in schema"),
        (lambda c: c["schema"].update(log_level="level"), "unknown option type"),
        (lambda c: c["options"].update(log_level="loud"), "'loud' is not one of"),
        (lambda c: c["options"]["panels"][0].update(id="Hip"), "options.panels[0].id"),
    ],
)
def test_the_checker_catches_a_broken_manifest(breakage: Any, expected: str) -> None:
    """Each rule is really checked: breaking config.yaml in one place is reported there."""
    config = copy.deepcopy(manifest())
    breakage(config)
    assert any(expected in line for line in problems(config)), problems(config)


def test_the_manifest_says_what_redlight_needs() -> None:
    """The broker from the Supervisor, no init, its config folder, both arches, time to stop."""
    config = manifest()
    assert config["services"] == ["mqtt:need"]
    assert config["init"] is False
    assert config["map"] == ["addon_config:rw"]
    assert set(config["arch"]) == ARCHES
    # The daemon waits up to 5 s for OFFs to be confirmed after SIGTERM (default stop: 10 s).
    assert config["timeout"] >= 15
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert config["version"] == version
    assert f"## {version}" in (APP_DIR / "CHANGELOG.md").read_text()


def test_the_options_schema_matches_the_entry_point() -> None:
    """Every panel option the UI offers is one the entry point reads, with the same choices."""
    panel_schema = manifest()["schema"]["panels"][0]
    assert set(panel_schema) == set(app._PANEL_KEYS)
    presets = panel_schema["preset"].removeprefix("list(").removesuffix(")").split("|")
    assert presets == list(app.TOPIC_KEYS)
    assert panel_schema["id"] == f"match(^{app._ID.pattern}$)"
    levels = manifest()["schema"]["log_level"].removeprefix("list(").removesuffix(")")
    assert tuple(levels.split("|")) == app.LOG_LEVELS


def test_every_option_is_translated() -> None:
    """translations/en.yaml names and describes every top-level option."""
    translations = yaml.safe_load((APP_DIR / "translations" / "en.yaml").read_text())
    for key in manifest()["schema"]:
        entry = translations["configuration"][key]
        assert entry["name"]
        assert entry["description"]


def test_the_app_folder_has_its_files() -> None:
    """DOCS.md, CHANGELOG.md, a Dockerfile that starts from BUILD_FROM, and repository.yaml."""
    assert (APP_DIR / "DOCS.md").read_text().startswith("# redlight")
    dockerfile = (APP_DIR / "Dockerfile").read_text().splitlines()
    code = [line for line in dockerfile if line and not line.startswith("#")]
    assert code[0].startswith("ARG BUILD_FROM")
    assert code[1].startswith("FROM ${BUILD_FROM}")
    assert "STOPSIGNAL SIGTERM" in code
    repository = yaml.safe_load((ROOT / "repository.yaml").read_text())
    assert repository["name"] == "redlight"
    # The Supervisor reads the slug's folder; the name must not shadow the package `redlight`.
    assert not (ROOT / "redlight").exists()
