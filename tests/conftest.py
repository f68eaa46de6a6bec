"""Fixtures shared by every test package."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_asyncio import is_async_test

from tests.mosquitto import MosquittoBroker, mosquitto_binary


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private, started mosquitto on a free port in ``tmp_path``; stopped afterwards."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(autouse=True)
def _close_stray_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Close the loop looptime's hook makes the policy create around a sync test.

    looptime asks pytest-asyncio's policy for the current loop before every test; for a sync
    test that follows an async one, that creates a new loop nobody closes (a ResourceWarning).
    """
    yield
    if is_async_test(request.node):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
        try:
            loop = policy.get_event_loop()
        except RuntimeError:
            return
    if not loop.is_running():
        loop.close()
        policy.set_event_loop(None)
