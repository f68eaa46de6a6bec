"""Fixtures of the black-box tier: a private mosquitto, an observer, plugs and the daemon.

Also the fault matrix's record (``tests/integration/reliability.py``): a session-scoped
recorder, each case's pass/fail taken from its report, and RELIABILITY.md written at the end
of the session only when ``REDLIGHT_RELIABILITY_REPORT=1`` (``make reliability``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest

from tests.integration import reliability
from tests.integration.harness import Observer, System, default_protocol
from tests.mosquitto import MosquittoBroker

_STARTED = pytest.StashKey[float]()


@pytest.fixture
async def system(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[System]:
    """A private mosquitto on a free port with an observer; plugs and daemon come per test.

    The daemon speaks MQTT 5 (its default), or what a test parametrizes ``system`` with
    indirectly (``"5"`` or ``"3.1.1"``), or what ``REDLIGHT_TEST_PROTOCOL`` says for the whole
    run (``make test-3.1.1``).
    """
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    observer = Observer(broker.port)
    await observer.start()
    protocol = getattr(request, "param", None) or default_protocol()
    sut = System(tmp_path, broker, observer, protocol=protocol)
    try:
        yield sut
    finally:
        if sut.daemon is not None:
            sut.daemon.stop_now()
        for plug in sut.plugs.values():
            await plug.stop()
        for link in sut.links.values():
            await link.close()
        await observer.stop()
        broker.stop()


@pytest.fixture(scope="session")
def reliability_recorder(request: pytest.FixtureRequest) -> reliability.Recorder:
    """The fault matrix's rows for the whole session (one per case, in run order)."""
    config = request.config
    if reliability.RECORDER not in config.stash:
        config.stash[reliability.RECORDER] = reliability.Recorder()
    return config.stash[reliability.RECORDER]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Note when the session started, for the report's run time."""
    session.config.stash[_STARTED] = time.monotonic()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Mark a matrix case's row passed or failed (with the first line of why) from its report."""
    report = yield
    row = item.stash.get(reliability.ROW, None)
    if row is None or (report.when == "teardown" and report.passed):
        return report
    if report.failed:
        error = call.excinfo.value if call.excinfo else None
        lines = str(error).strip().splitlines() if error is not None else []
        why = lines[0] if lines else type(error).__name__
        row.outcome = "FAIL" if report.when == "call" else f"ERROR ({report.when})"
        row.happened = f"{row.happened} — {why[:160]}".strip(" —")
    elif report.when == "call" and report.passed:
        row.outcome = "pass"
    elif report.skipped:
        row.outcome = "skipped"
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write RELIABILITY.md when asked to (and only if some case of the matrix ran)."""
    recorder = session.config.stash.get(reliability.RECORDER, None)
    if not reliability.wanted() or recorder is None or not recorder.rows:
        return
    started = session.config.stash.get(_STARTED, time.monotonic())
    text = reliability.render(
        recorder.rows,
        args=[str(a) for a in session.config.invocation_params.args],
        elapsed_s=time.monotonic() - started,
        notes=recorder.notes,
    )
    reliability.REPORT_PATH.write_text(text, encoding="utf-8")
