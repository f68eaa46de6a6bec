"""The README's install lines agree with the unit file, the shipped examples and each other.

Issue 14 found the README and the unit naming different venv paths, a commented-out
``LoadCredential=`` the README said was in use, ``ProtectHome=yes`` beside a suggested
``~/.local/bin`` link, and the six-panel example copied for a one-plug user. Each of these is a
test here; the lines themselves run in ``tests/package`` (``make test-package``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from redlight import cli, shipped
from redlight.config import load_config

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
UNIT = ROOT / "systemd" / "redlight.service"
CONTAINER = ROOT / "config" / "container"


def install_lines(heading: str) -> list[str]:
    """The command lines of the first ``sh`` block under ``### <heading>``, comments removed."""
    text = README.read_text()
    section = text[text.index(f"### {heading}") :]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert block is not None, heading
    lines = [line.split(" #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def core_lines() -> list[str]:
    """The Core / Linux install lines."""
    return install_lines("Home Assistant Core, or any Linux box")


def unit_setting(key: str, text: str | None = None) -> list[str]:
    """Every active ``key=`` value of the unit file (or of ``text``)."""
    body = UNIT.read_text() if text is None else text
    return [line.split("=", 1)[1] for line in body.splitlines() if line.startswith(f"{key}=")]


def test_both_install_routes_put_redlight_where_the_unit_runs_it() -> None:
    """pipx's bin dir and the venv's link are the binary of ExecStart= and ExecStopPost=."""
    (start,) = unit_setting("ExecStart")
    (stop_post,) = unit_setting("ExecStopPost")
    binary = start.split()[0]
    assert stop_post.split()[0] == binary
    lines = core_lines()
    pipx = next(line for line in lines if "pipx install" in line)
    bin_dir = re.search(r"PIPX_BIN_DIR=(\S+)", pipx)
    assert bin_dir is not None
    assert f"{bin_dir.group(1)}/redlight" == binary
    venv = next(line for line in lines if line.startswith("sudo python3 -m venv "))
    venv_dir = shlex.split(venv)[-1]
    assert f"sudo {venv_dir}/bin/pip install ." in lines
    assert f"sudo ln -sf {venv_dir}/bin/redlight {binary}" in lines
    # The unit's own comment names the same places.
    assert venv_dir in UNIT.read_text()
    assert "PIPX_BIN_DIR=/usr/local/bin" in UNIT.read_text()


def test_nothing_is_installed_where_protect_home_hides_it() -> None:
    """With ProtectHome=yes, neither the README's lines nor the unit use /home, /root or ~."""
    assert unit_setting("ProtectHome") == ["yes"]
    for line in core_lines():
        assert not re.search(r"~|/home\b|/root\b|\.local/bin", line), line
    for value in unit_setting("ExecStart") + unit_setting("ExecStopPost"):
        assert not re.search(r"~|/home\b|/root\b", value)


def test_the_config_path_is_the_units() -> None:
    """The config the README writes and checks is the one the unit runs with."""
    (start,) = unit_setting("ExecStart")
    config = shlex.split(start)[shlex.split(start).index("--config") + 1]
    lines = core_lines()
    assert f"redlight check --config {config}" in lines
    assert any(line.endswith(f"> {config}'") for line in lines if "print-example" in line)


def test_the_password_file_reaches_the_daemon_through_load_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's sed uncomments exactly the unit's LoadCredential=, whose file it writes.

    The unit ships it commented out (systemd refuses a unit whose credential file is
    missing); after the README's line it is active, names the file the README fills, and the
    credential name is the one redlight reads as mqtt.password.
    """
    assert unit_setting("LoadCredential") == []
    lines = core_lines()
    sed = next(line for line in lines if line.startswith("sudo sed -i"))
    pattern, replacement = shlex.split(sed)[3].split("|")[1:3]
    unit_text = re.sub(pattern, replacement, UNIT.read_text(), flags=re.MULTILINE)
    (credential,) = unit_setting("LoadCredential", unit_text)
    name, source = credential.split(":", 1)
    assert name == "mqtt__password"
    assert any(line.endswith(f"> {source}'") for line in lines if "password" in line)
    # What systemd hands over as $CREDENTIALS_DIRECTORY/mqtt__password is mqtt.password.
    (tmp_path / name).write_text("from-the-credential\n")
    config = tmp_path / "config.toml"
    config.write_text('[mqtt]\nusername = "redlight"\n')
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    password = load_config(config).mqtt.password
    assert password is not None
    assert password.get_secret_value() == "from-the-credential"


def test_the_readme_copies_a_one_plug_example_that_passes_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The example the README writes for a first plug has one panel, and `redlight check` passes."""
    line = next(line for line in core_lines() if "print-example" in line)
    name = re.search(r"print-example (\S+)", line)
    assert name is not None
    config = load_config(shipped.example_file(name.group(1)))
    assert len(config.panels) == 1
    path = tmp_path / "config.toml"
    assert cli.main(["print-example", name.group(1)]) == 0
    path.write_text(capsys.readouterr().out)
    assert cli.main(["check", "--config", str(path)]) == 0


def test_print_unit_prints_the_shipped_unit(capsys: pytest.CaptureFixture[str]) -> None:
    """`redlight print-unit` is the repository's unit file, byte for byte."""
    assert cli.main(["print-unit"]) == 0
    assert capsys.readouterr().out == UNIT.read_text()


def test_print_example_names_every_shipped_example(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a name it lists them; an unknown name is one line with the valid ones, exit 1."""
    assert cli.main(["print-example"]) == 0
    names = capsys.readouterr().out.split()
    assert names[0] == "example"
    assert {"tasmota", "two-hips", "zigbee2mqtt"} <= set(names)
    assert cli.main(["print-example", "sonoff"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no example named 'sonoff'; there are: example, " in err


def test_the_compose_example_stops_safely_and_keeps_the_password_in_a_file() -> None:
    """compose.yaml: time to confirm OFFs, the password as a credential file, /data a volume."""
    compose = yaml.safe_load((CONTAINER / "compose.yaml").read_text())
    redlight = compose["services"]["redlight"]
    assert redlight["image"] == "localhost/redlight:0.1.0"  # what `make image` builds
    seconds = int(redlight["stop_grace_period"].removesuffix("s"))
    assert seconds >= 15  # the daemon waits up to 5 s for OFFs after SIGTERM
    env = redlight["environment"]
    assert "REDLIGHT_MQTT__PASSWORD" not in env
    assert env["CREDENTIALS_DIRECTORY"] == "/run/secrets"
    assert redlight["secrets"] == ["mqtt__password"]
    assert any(volume.endswith(":/data") for volume in redlight["volumes"])
    assert "./config.toml:/config/config.toml:ro" in redlight["volumes"]
    assert "mosquitto" in compose["services"]
    assert "allow_anonymous false" in (CONTAINER / "mosquitto.conf").read_text()


def test_the_image_names_agree() -> None:
    """compose.yaml, the README and the Makefile name the same image."""
    makefile = (ROOT / "Makefile").read_text()
    assert "IMAGE := localhost/redlight:$(IMAGE_VERSION)" in makefile
    version = re.search(r'^version = "(.*)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None
    assert f"localhost/redlight:{version.group(1)}" in README.read_text()
