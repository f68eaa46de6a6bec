"""A stub Home Assistant Supervisor: ``GET /services/mqtt`` on 127.0.0.1, for the App's tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: The token the stub accepts (the Supervisor hands an App its own as $SUPERVISOR_TOKEN).
TOKEN = "stub-supervisor-token"  # noqa: S105 - a test value, accepted only by the stub


@dataclass
class StubSupervisor:
    """What the stub answers, and what it was asked."""

    #: The ``data`` of a successful answer (the Mosquitto App's shape).
    broker: dict[str, Any] = field(default_factory=dict)
    #: Answer with this HTTP status and Supervisor error body instead, when set.
    status: int = 200
    message: str = ""
    #: The ``Authorization`` header of every request, in order.
    authorizations: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    url: str = ""


def _handler(stub: StubSupervisor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            stub.paths.append(self.path)
            stub.authorizations.append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._answer(401, {"result": "error", "message": "Unauthorized"})
            elif self.path != "/services/mqtt":
                self._answer(404, {"result": "error", "message": "Not found"})
            elif stub.status != 200:
                self._answer(stub.status, {"result": "error", "message": stub.message})
            else:
                self._answer(200, {"result": "ok", "data": stub.broker})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            encoded = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test asserts on what was asked, not on a log."""

    return Handler


@contextmanager
def stub_supervisor(broker: dict[str, Any] | None = None) -> Iterator[StubSupervisor]:
    """A running stub on a free port of 127.0.0.1 (``stub.url``); shut down afterwards."""
    stub = StubSupervisor(broker=dict(broker or {}))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll, so that shutdown() (at every test's end) returns at once.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
