"""``redlight run``: assemble the daemon from config and run it until a signal stops it."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path
from typing import Literal, TypeAlias

import structlog

from redlight.broker import BrokerClient, BrokerError, Message
from redlight.config import Config, ConfigError, MqttConfig, config_path, describe
from redlight.logs import configure_logging, register_secret
from redlight.messages import Topics, status_message
from redlight.mqtt import PahoClient, TlsOptions

log = structlog.get_logger("redlight")

LogMode: TypeAlias = Literal["auto", "console", "json"]


def broker_from_config(config: Config, *, client_id: str, will: Message | None) -> BrokerClient:
    """A paho client for the configured broker (TLS, credentials).

    Anything the adapter refuses is a :class:`ConfigError` (exit 78 in ``redlight run``): it
    comes from the config, so restarting would only fail the same way.
    """
    address = config.mqtt.address
    password = config.mqtt.password.get_secret_value() if config.mqtt.password else None
    try:
        return PahoClient(
            host=address.host,
            port=address.port,
            client_id=client_id,
            will=will,
            username=config.mqtt.username,
            password=password,
            tls=tls_options(config),
            protocol=config.mqtt.protocol,
        )
    except BrokerError as error:
        raise ConfigError([f"mqtt: {error}"]) from None


def tls_options(config: Config) -> TlsOptions | None:
    """The TLS settings of an ``mqtts://`` URL, with every file read once to prove it usable.

    ``ConfigError`` names the setting: a missing, unreadable or non-PEM file is reported as
    ``mqtt.tls_ca_file: ...`` rather than as the TLS library's error at connect time.
    """
    mqtt = config.mqtt
    if not mqtt.address.tls:
        return None
    _check_readable(
        {
            "tls_ca_file": mqtt.tls_ca_file,
            "tls_cert_file": mqtt.tls_cert_file,
            "tls_key_file": mqtt.tls_key_file,
        }
    )
    _check_loadable(mqtt)
    return TlsOptions(
        ca_file=mqtt.tls_ca_file,
        cert_file=mqtt.tls_cert_file,
        key_file=mqtt.tls_key_file,
        insecure=mqtt.tls_insecure,
    )


def _check_readable(files: dict[str, Path | None]) -> None:
    """Every configured TLS file can be read; a ``ConfigError`` line for each that cannot."""
    problems: list[str] = []
    for name, path in files.items():
        if path is None:
            continue
        try:
            path.read_bytes()
        except OSError as error:
            problems.append(f"mqtt.{name}: cannot read {path} ({error.strerror or error})")
    if problems:
        raise ConfigError(problems)


def _check_loadable(mqtt: MqttConfig) -> None:
    """The CA file and the certificate with its key are what OpenSSL can load."""
    problems: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if mqtt.tls_ca_file is not None:
        try:
            context.load_verify_locations(cafile=mqtt.tls_ca_file)
        except ssl.SSLError as error:
            problems.append(
                f"mqtt.tls_ca_file: {mqtt.tls_ca_file} holds no usable certificate ({error})"
            )
    if mqtt.tls_cert_file is not None:
        try:
            # An empty passphrase, so an encrypted key is an error here rather than OpenSSL
            # prompting on a terminal that a service does not have.
            context.load_cert_chain(mqtt.tls_cert_file, mqtt.tls_key_file, password="")
        except ssl.SSLError as error:
            problems.append(
                f"mqtt.tls_cert_file: {mqtt.tls_cert_file} and its key are not a usable "
                f"certificate and private key ({error})"
            )
    if problems:
        raise ConfigError(problems)


def run_daemon(
    config: Config,
    *,
    config_file: Path | None = None,
    log_level: str = "info",
    log_format: LogMode = "auto",
) -> int:
    """Run until SIGTERM/SIGINT; return the exit code.

    Raises :class:`ConfigError` (``redlight run`` exits 78, which systemd does not restart) for
    anything in the config the broker adapter cannot use, found before or while starting.
    """
    configure_logging(log_level, mode=log_format)
    if config.mqtt.password is not None:
        register_secret(config.mqtt.password.get_secret_value())
        _warn_if_world_readable(config_file or config_path())
    will = status_message(Topics(config.mqtt.base_topic), online=False)
    # First: a config the adapter refuses exits 78 with only its problem lines, before the
    # history is even opened.
    broker = broker_from_config(config, client_id=config.mqtt.client_id, will=will)
    log.info("starting", **describe(config))
    try:
        return asyncio.run(_main(config, broker))
    except BrokerError as error:
        # Only the config can make the adapter refuse (an address paho rejects, a topic
        # filter): the same config would fail the same way after a restart.
        raise ConfigError([f"mqtt: {error}"]) from None


def _warn_if_world_readable(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & stat.S_IROTH and "password" in path.read_text(encoding="utf-8", errors="replace"):
        log.warning(
            "config_world_readable",
            path=str(path),
            hint="the file holds a password: chmod 600 it, or use $CREDENTIALS_DIRECTORY",
        )


async def _main(config: Config, broker: BrokerClient) -> int:
    from redlight.runtime import Runtime, open_history, restore, system_now
    from redlight.storage import HistoryWriter

    history = open_history(config)
    restored, interrupted = restore(history, config, system_now().wall)
    # After the reader's writes, so that the writer's first one (it starts the WAL at once, off
    # the first ON's way) does not make them wait for the lock.
    writer = HistoryWriter(config.storage.path)
    if history is not None:
        history.close()
    for row in interrupted:
        log.warning("session_interrupted", panel=row.panel, session=row.id)
    runtime = Runtime(config, broker, writer=writer, restored=restored, interrupted=interrupted)
    runtime.install_signal_handlers()
    return await runtime.run()


__all__ = ["broker_from_config", "run_daemon", "tls_options"]
