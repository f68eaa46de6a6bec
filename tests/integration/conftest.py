"""Fixtures of the black-box tier: a private mosquitto, an observer, plugs and the daemon."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.harness import Observer, System
from tests.mosquitto import MosquittoBroker


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    """A private mosquitto on a free port with an observer; plugs and daemon come per test."""
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    observer = Observer(broker.port)
    await observer.start()
    sut = System(tmp_path, broker, observer)
    try:
        yield sut
    finally:
        if sut.daemon is not None:
            sut.daemon.stop_now()
        for plug in sut.plugs.values():
            await plug.stop()
        await observer.stop()
        broker.stop()
