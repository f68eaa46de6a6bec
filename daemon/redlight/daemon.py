"""``redlight run``: assemble the daemon from config and run it until a signal stops it."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Literal, TypeAlias

import structlog

from redlight.broker import BrokerClient, Message
from redlight.config import Config, config_path, describe
from redlight.logs import configure_logging, register_secret
from redlight.messages import Topics, status_message
from redlight.mqtt import PahoClient, TlsOptions, parse_broker_url

log = structlog.get_logger("redlight")

LogMode: TypeAlias = Literal["auto", "console", "json"]


def broker_from_config(config: Config, *, client_id: str, will: Message | None) -> BrokerClient:
    """A paho client for the configured broker (TLS, credentials)."""
    host, port, use_tls = parse_broker_url(config.mqtt.url)
    tls = None
    if use_tls:
        tls = TlsOptions(
            ca_file=config.mqtt.tls_ca_file,
            cert_file=config.mqtt.tls_cert_file,
            key_file=config.mqtt.tls_key_file,
            insecure=config.mqtt.tls_insecure,
        )
    password = config.mqtt.password.get_secret_value() if config.mqtt.password else None
    return PahoClient(
        host=host,
        port=port,
        client_id=client_id,
        will=will,
        username=config.mqtt.username,
        password=password,
        tls=tls,
    )


def run_daemon(
    config: Config,
    *,
    config_file: Path | None = None,
    log_level: str = "info",
    log_format: LogMode = "auto",
) -> int:
    """Run until SIGTERM/SIGINT; return the exit code."""
    configure_logging(log_level, mode=log_format)
    if config.mqtt.password is not None:
        register_secret(config.mqtt.password.get_secret_value())
        _warn_if_world_readable(config_file or config_path())
    log.info("starting", **describe(config))
    return asyncio.run(_main(config))


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


async def _main(config: Config) -> int:
    from redlight.runtime import Runtime, open_history, restore, system_now

    history, writer = open_history(config)
    restored, interrupted = restore(history, config, system_now().wall)
    if history is not None:
        history.close()
    for row in interrupted:
        log.warning("session_interrupted", panel=row.panel, session=row.id)
    will = status_message(Topics(config.mqtt.base_topic), online=False)
    broker = broker_from_config(config, client_id=config.mqtt.client_id, will=will)
    runtime = Runtime(config, broker, writer=writer, restored=restored, interrupted=interrupted)
    runtime.install_signal_handlers()
    return await runtime.run()


__all__ = ["broker_from_config", "run_daemon"]
