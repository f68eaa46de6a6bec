"""A private mosquitto for tests: its own directory, a free port kept across restarts.

Never port 1883: the machine's shared mosquitto lives there, and a test must not see (or be
seen by) anything but its own clients.
"""

from __future__ import annotations

import getpass
import json
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: How long start and stop may take before the test fails with the broker's log.
STARTUP_TIMEOUT: Final = 10.0
SHUTDOWN_TIMEOUT: Final = 10.0
#: The shared broker's port, never used by tests.
SHARED_PORT: Final = 1883


def mosquitto_binary() -> str | None:
    """The mosquitto executable, or ``None`` when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    fallback = Path("/usr/sbin/mosquitto")
    return str(fallback) if fallback.exists() else None


def dynsec_plugin() -> str | None:
    """mosquitto's dynamic security plugin, or ``None`` when it is not installed."""
    for pattern in (
        "/usr/lib/*/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto_dynamic_security.so",
    ):
        for found in sorted(Path("/").glob(pattern.lstrip("/"))):
            return str(found)
    return None


def deny_subscriptions(path: Path, filters: list[str]) -> Path:
    """A dynamic-security file: anonymous clients may do anything but subscribe to ``filters``.

    mosquitto's ``acl_file`` never refuses a SUBSCRIBE (it grants it and withholds the
    messages), so a test that needs a SUBACK failure (0x80) uses the dynamic-security plugin,
    whose ``subscribePattern`` rules do refuse. The plugin rewrites the file: it must be
    writable.
    """
    acls = [
        {"acltype": "subscribePattern", "topic": topic, "priority": 0, "allow": False}
        for topic in filters
    ]
    document = {
        "defaultACLAccess": {
            "publishClientSend": True,
            "publishClientReceive": True,
            "subscribe": True,
            "unsubscribe": True,
        },
        "clients": [],
        "groups": [{"groupname": "anonymous", "roles": [{"rolename": "denied"}]}],
        "roles": [{"rolename": "denied", "acls": acls}],
        "anonymousGroup": "anonymous",
    }
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener's port and files (see :func:`make_certificates`)."""

    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    require_client_cert: bool = False


def make_certificates(directory: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1, and a client certificate (openssl).

    Returns paths by name: ``ca``, ``ca_key``, ``server``, ``server_key``, ``client``,
    ``client_key``, and ``other_ca`` (a second CA that signed nothing here).
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        name: directory / f"{name}.pem"
        for name in ("ca", "ca_key", "server", "server_key", "client", "client_key", "other_ca")
    }

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    for ca, key in (("ca", "ca_key"), ("other_ca", "other_ca_key")):
        key_path = paths.get(key, directory / f"{key}.pem")
        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN=redlight test {ca}", "-keyout", str(key_path), "-out", str(paths[ca]),
        )  # fmt: skip
    for name, subject, ext in (
        ("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1"),
        ("client", "/CN=redlight", "extendedKeyUsage=clientAuth"),
    ):
        request = directory / f"{name}.csr"
        extfile = directory / f"{name}.ext"
        extfile.write_text(ext + "\n")
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
            "-keyout", str(paths[f"{name}_key"]), "-out", str(request),
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", str(request), "-CA", str(paths["ca"]),
            "-CAkey", str(paths["ca_key"]), "-CAcreateserial", "-days", "2",
            "-extfile", str(extfile), "-out", str(paths[name]),
        )  # fmt: skip
    for path in paths.values():
        path.chmod(0o644)  # mosquitto may read them as another user
    return paths


class MosquittoBroker:
    """A mosquitto process on 127.0.0.1 with persistence, so retained messages survive restarts."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        password_file: Path | None = None,
        tls: TlsListener | None = None,
        acl_file: Path | None = None,
        dynsec_file: Path | None = None,
    ) -> None:
        """Prepare (not start) a broker whose config, data and log live in ``directory``.

        With ``tls``, a second listener speaks TLS (and wants the password file's users, if
        given), while the first stays plain and anonymous for simulated plugs and observers.
        ``dynsec_file`` loads the dynamic-security plugin with that file (see
        :func:`deny_subscriptions`).
        """
        if port == SHARED_PORT:
            raise ValueError("port 1883 belongs to the machine's shared mosquitto")
        self.directory = directory
        self._port = port
        self.password_file = password_file
        self.tls = tls
        self.acl_file = acl_file
        self.dynsec_file = dynsec_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The listening port, picked once and reused by every restart."""
        if self._port is None:
            self._port = free_port()
        return self._port

    @property
    def url(self) -> str:
        """The broker URL for redlight's config."""
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The broker's log file."""
        return self.directory / "mosquitto.log"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Write the config, start mosquitto and wait until it accepts TCP connections."""
        if self.running:
            return
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "mosquitto.conf"
        config.write_text(self._config_text(), encoding="utf-8")
        self._process = subprocess.Popen(
            [binary, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_listening()

    def stop(self) -> None:
        """Stop mosquitto with SIGTERM (it saves retained messages) and wait for it to exit."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=SHUTDOWN_TIMEOUT)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        """Everything mosquitto logged so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _config_text(self) -> str:
        if self.tls is None:
            lines = [
                f"listener {self.port} 127.0.0.1",
                f"allow_anonymous {'false' if self.password_file else 'true'}",
            ]
        else:
            tls = self.tls
            # The plain listener stays anonymous (plugs, observers); the TLS one takes the
            # password file's users when there is one.
            lines = [
                "per_listener_settings true",
                f"listener {self.port} 127.0.0.1",
                "allow_anonymous true",
                f"listener {tls.port} 127.0.0.1",
                f"cafile {tls.ca_file}",
                f"certfile {tls.cert_file}",
                f"keyfile {tls.key_file}",
                f"require_certificate {'true' if tls.require_client_cert else 'false'}",
                f"allow_anonymous {'false' if self.password_file else 'true'}",
            ]
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.dynsec_file is not None:
            plugin = dynsec_plugin()
            if plugin is None:
                raise RuntimeError("mosquitto's dynamic security plugin is not installed")
            lines += [f"plugin {plugin}", f"plugin_opt_config_file {self.dynsec_file}"]
        lines += [
            "persistence true",
            # mosquitto joins location and file name as strings: the slash is required.
            f"persistence_location {self.directory}/",
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
            # As root, mosquitto would switch to the 'mosquitto' user and lose access to the
            # test's directory; naming the current user keeps it (a no-op when not root).
            f"user {getpass.getuser()}",
        ]
        return "\n".join(lines) + "\n"

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)  # polling a condition with a deadline, not hoping
        tail = "\n".join(self.log_text().splitlines()[-20:])
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port}; log tail:\n{tail}")


__all__ = [
    "MosquittoBroker",
    "deny_subscriptions",
    "dynsec_plugin",
    "free_port",
    "mosquitto_binary",
]
