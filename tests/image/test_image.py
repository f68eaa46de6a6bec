"""The images under podman: the container for Home Assistant Container users, and the App.

Each test runs the real image against a private mosquitto on a free port (never 1883) and a
simulated Tasmota plug in the test process, whose own off-timer (``PulseTime``) runs on the
test's event loop: so a killed container can be seen to leave the panel to the plug.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from redlight.simplug import SimulatedPlug
from tests.image.podman import APP_IMAGE, IMAGE, ULIMITS, Container, missing_image, podman
from tests.integration.harness import Observer, start_plug
from tests.mosquitto import MosquittoBroker, mosquitto_binary
from tests.supervisor import TOKEN, stub_supervisor

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parents[2]
PANEL = "hip_left"
#: The plug of config.yaml's default options, so the App test runs those options unchanged.
PLUG = {"preset": "tasmota", "topic": "panel_left"}
#: The container image's user (redlight-app/Dockerfile), who must own the /data volume.
IMAGE_UID = 10001
#: A container starts in a few seconds; the machine is shared, so the bounds are generous.
START_S = 60.0
WAIT_S = 20.0


@dataclass
class Rig:
    """Broker, observer and plug of one test, and the containers it started."""

    tmp: Path
    broker: MosquittoBroker
    observer: Observer
    plug: SimulatedPlug
    containers: list[Container] = field(default_factory=list)

    def container(self, image: str, **kwargs: Any) -> Container:
        """A container that the fixture removes at the end, whatever happened."""
        container = Container(image, **kwargs)
        self.containers.append(container)
        return container

    def start(self, seconds: float) -> int:
        """Ask for a session as Home Assistant would; the observer mark from before."""
        mark = self.observer.mark()
        body = json.dumps({"action": "start", "duration": seconds})
        self.observer.publish(f"redlight/panel/{PANEL}/set", body)
        return mark

    async def online(self, mark: int) -> None:
        """Until the daemon says ``online`` and has switched the plug off (safety rule 8)."""
        await self.observer.wait(
            "redlight/status", lambda m: m.payload == b"online", since=mark, within=START_S
        )
        await self.observer.wait(
            f"redlight/panel/{PANEL}/state", lambda m: m.json()["plug"] == "off", since=mark
        )

    async def plug_is(self, on: bool, within: float = WAIT_S) -> None:
        """Until the simulated plug's relay is ``on`` (or off)."""
        await bounded(self.plug.wait_for(lambda plug: plug.is_on == on), within)


async def bounded(awaitable: Any, within: float) -> None:
    """``awaitable``, failing the test after ``within`` seconds."""
    async with asyncio.timeout(within):
        await awaitable


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """A private mosquitto, an observer and the plug; every container removed afterwards."""
    for reason in (missing_image(IMAGE), missing_image(APP_IMAGE)):
        if reason:
            pytest.skip(reason)
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    observer = Observer(broker.port)
    plug: SimulatedPlug | None = None
    sut: Rig | None = None
    try:
        await observer.start()
        plug = await start_plug(broker.port, PANEL, PLUG, "image-plug")
        sut = Rig(tmp_path, broker, observer, plug)
        yield sut
    finally:
        for container in sut.containers if sut else ():
            container.remove()
        if plug is not None:
            await plug.stop()
        await observer.stop()
        broker.stop()


def container_volumes(rig: Rig) -> list[str]:
    """The container image's mounts: /config (the TOML, read-only) and /data (the history)."""
    config, data = rig.tmp / "config", rig.tmp / "data"
    config.mkdir(exist_ok=True)
    data.mkdir(exist_ok=True)
    os.chown(data, IMAGE_UID, IMAGE_UID)
    (config / "config.toml").write_text(
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{rig.broker.port}"\n'
        # A short margin, so the plug's own timer ends a killed session within the test.
        '[safety]\nconfirm_timeout = "2s"\nfailsafe_margin = "3s"\n'
        f'[panels.{PANEL}]\nname = "Left hip panel"\n'
        f'plug = {{ preset = "tasmota", topic = "{PLUG["topic"]}" }}\n'
    )
    return [f"{config}:/config:ro", f"{data}:/data"]


async def test_a_session_starts_and_ends_on_time(
    rig: Rig, record_property: Callable[[str, object], None]
) -> None:
    """In the container image a 4 s session switches the panel on, and off 4 s later."""
    container = rig.container(IMAGE, volumes=container_volumes(rig))
    mark = rig.observer.mark()
    began = time.monotonic()
    await container.run()
    await rig.online(mark)
    # The figure for the README: make test-image writes it to build/test-image.xml.
    record_property("run_to_online_s", round(time.monotonic() - began, 1))
    assert await container.health() == 0, container.logs()
    mark = rig.start(4)
    await rig.plug_is(True)
    await rig.plug_is(False)
    start, end = rig.plug.on_intervals[-1]
    assert end is not None
    assert 3.5 <= end - start <= 5.5
    finished = await rig.observer.event("session_finished", panel=PANEL, since=mark)
    assert finished["reason"] == "completed"
    assert rig.plug.timer_fired == 0  # redlight's OFF, not the plug's own timer
    assert (rig.tmp / "data" / "redlight.db").exists()  # the history is in the /data volume


async def test_the_container_runs_from_environment_variables_alone(rig: Rig) -> None:
    """With no config file mounted, REDLIGHT_* variables (panels as JSON) are the whole config."""
    data = rig.tmp / "data"
    data.mkdir()
    os.chown(data, IMAGE_UID, IMAGE_UID)
    panels = {PANEL: {"name": "Left hip panel", "plug": PLUG}}
    container = rig.container(
        IMAGE,
        volumes=[f"{data}:/data"],
        env={
            "REDLIGHT_CONFIG": "/etc/redlight/empty.toml",
            "REDLIGHT_MQTT__URL": f"mqtt://127.0.0.1:{rig.broker.port}",
            "REDLIGHT_PANELS": json.dumps(panels),
        },
    )
    mark = rig.observer.mark()
    await container.run()
    await rig.online(mark)
    rig.start(2)
    await rig.plug_is(True)
    await rig.plug_is(False)


def readme_container_line(start: str) -> list[str]:
    """The README's Container line starting with ``start``, split as the shell would."""
    lines = [line for line in readme_container_lines() if line.startswith(start)]
    assert len(lines) == 1, start
    return shlex.split(lines[0])


def readme_container_lines() -> list[str]:
    """The command lines of every ``sh`` block in the README's Container section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Home Assistant Container") :]
    section = section[: section.index("\n### ")]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


async def test_the_readmes_container_lines_run_under_podman(rig: Rig) -> None:
    """`docker run ... print-example` and the env-only `docker run -d` work as written.

    podman stands in for docker (with this machine's runtime flags); the broker's port is the
    test's own, never 1883; the named volume is a directory the image's user owns.
    """
    argv = readme_container_line("docker run --rm localhost/redlight")
    redirect = argv.index(">")  # the shell's `> config.toml`: the test reads stdout instead
    assert argv[redirect - 1] == "tasmota"
    printed = podman(argv[1], *ULIMITS, *argv[2:redirect])
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == (ROOT / "config" / "examples" / "tasmota.toml").read_text()

    argv = readme_container_line("docker run -d --name redlight")
    data = rig.tmp / "data"
    data.mkdir()
    os.chown(data, IMAGE_UID, IMAGE_UID)
    container = rig.container(IMAGE)
    words = [
        word.replace("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{rig.broker.port}").replace(
            "redlight-data:/data", f"{data}:/data"
        )
        for word in argv[2:]
    ]
    words[words.index("--name") + 1] = container.name
    mark = rig.observer.mark()
    started = await asyncio.to_thread(podman, "run", *ULIMITS, *words)
    assert started.returncode == 0, started.stderr
    await rig.online(mark)
    assert await container.stop() == 0


async def test_podman_stop_mid_session_switches_the_panel_off(rig: Rig) -> None:
    """SIGTERM (podman stop) switches the panel off, says offline, and the container exits 0."""
    container = rig.container(IMAGE, volumes=container_volumes(rig))
    mark = rig.observer.mark()
    await container.run()
    await rig.online(mark)
    mark = rig.start(60)
    await rig.plug_is(True)
    assert await container.stop() == 0, container.logs()
    assert not rig.plug.is_on
    assert rig.plug.timer_fired == 0
    finished = await rig.observer.event("session_finished", panel=PANEL, since=mark)
    assert finished["reason"] == "shutdown"
    status = rig.observer.matching("redlight/status", mark)
    assert status[-1].payload == b"offline"


async def test_podman_kill_leaves_the_panel_to_the_plug_and_the_next_start_switches_off(
    rig: Rig,
) -> None:
    """SIGKILL: the plug's own timer ends the session; after a second kill, a start does."""
    container = rig.container(IMAGE, volumes=container_volumes(rig))
    mark = rig.observer.mark()
    await container.run()
    await rig.online(mark)
    rig.start(5)  # the plug's PulseTime: 5 s + the 3 s margin
    await rig.plug_is(True)
    await container.kill()
    assert await container.wait() != 0
    assert rig.plug.is_on  # nothing ran after the kill: no ExecStopPost in a container
    await rig.plug_is(False, within=WAIT_S)
    assert rig.plug.timer_fired == 1  # the plug's own off-timer (safety rule 5)

    again = rig.container(IMAGE, volumes=container_volumes(rig))
    mark = rig.observer.mark()
    await again.run()
    await rig.online(mark)
    rig.start(60)
    await rig.plug_is(True)
    await again.kill()
    assert rig.plug.is_on
    third = rig.container(IMAGE, volumes=container_volumes(rig))
    mark = rig.observer.mark()
    await third.run()
    await rig.online(mark)  # the start switched it off (safety rule 8), long before 63 s
    assert not rig.plug.is_on
    assert rig.plug.timer_fired == 1


def app_data(rig: Rig) -> Path:
    """/data of the App: the options a fresh install gets (config.yaml's ``options``)."""
    data = rig.tmp / "app-data"
    data.mkdir()
    (rig.tmp / "app-config").mkdir()
    options = yaml.safe_load((ROOT / "redlight-app" / "config.yaml").read_text())["options"]
    (data / "options.json").write_text(json.dumps(options))
    return data


async def test_the_app_gets_the_broker_from_the_supervisor(rig: Rig) -> None:
    """The App image asks the Supervisor, runs a session with its options, and stops safe."""
    password = f"app-{secrets.token_hex(8)}"
    broker = {
        "host": "127.0.0.1", "port": rig.broker.port, "ssl": False, "protocol": "3.1.1",
        "username": "addons", "password": password,
    }  # fmt: skip
    with stub_supervisor(broker) as supervisor:
        container = rig.container(
            APP_IMAGE,
            volumes=[f"{app_data(rig)}:/data", f"{rig.tmp / 'app-config'}:/config"],
            env={"SUPERVISOR_TOKEN": TOKEN},
            command=["python3", "-m", "redlight.app", "--supervisor", supervisor.url],
        )
        mark = rig.observer.mark()
        await container.run()
        await rig.online(mark)
        assert supervisor.authorizations == [f"Bearer {TOKEN}"]
    mark = rig.start(3)
    await rig.plug_is(True)
    await rig.plug_is(False)
    rig.start(60)
    await rig.plug_is(True)
    assert await container.stop() == 0
    assert not rig.plug.is_on
    logs = container.logs()
    assert (
        f"redlight app: broker mqtt://127.0.0.1:{rig.broker.port} (MQTT 3.1.1, user addons)" in logs
    )
    assert password not in logs
    assert password not in container.inspect()  # neither its command line nor its environment
    assert "Traceback" not in logs


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "redlight app: SUPERVISOR_TOKEN is not set"),
        (
            {"SUPERVISOR_TOKEN": TOKEN},
            "redlight app: cannot reach the Supervisor at http://127.0.0.1:9",
        ),
    ],
)
async def test_the_app_without_a_supervisor_says_so_in_one_line(
    rig: Rig, env: dict[str, str], expected: str
) -> None:
    """No token, or no Supervisor: one line in the App log, a non-zero exit, no traceback."""
    container = rig.container(
        APP_IMAGE,
        volumes=[f"{app_data(rig)}:/data"],
        env=env,
        command=["python3", "-m", "redlight.app", "--supervisor", "http://127.0.0.1:9"],
    )
    await container.run()
    assert await container.wait() == 1
    logs = container.logs()
    assert logs.startswith(expected), logs
    assert logs.count("\n") == 1
