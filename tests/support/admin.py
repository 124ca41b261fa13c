"""A real admin endpoint with maintenance state, on 127.0.0.1, that records what it receives.

``GET /maintenance`` answers ``{"enabled": bool}``; ``PUT /maintenance`` sets it from the JSON
body. Unlike :mod:`tests.support.target`, whose replies are scripted, this one has state, so a
module's read-then-switch and its compensation meet what a real admin API would do.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class AdminHit:
    method: str
    path: str
    headers: dict[str, str]
    json: Any


@dataclass
class AdminApp:
    enabled: bool = False
    hits: list[AdminHit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        port = self.server.server_address[1]
        return f"http://127.0.0.1:{port}"

    @property
    def host(self) -> str:
        return self.base_url.removeprefix("http://")

    def puts(self) -> list[AdminHit]:
        with self.lock:
            return [h for h in self.hits if h.method == "PUT"]

    def start(self) -> None:
        app = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self, body: Any) -> None:
                with app.lock:
                    app.hits.append(
                        AdminHit(
                            self.command,
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                        )
                    )

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._record(None)
                if self.path != "/maintenance":
                    self._send(404, {"error": "no such path"})
                    return
                with app.lock:
                    self._send(200, {"enabled": app.enabled})

            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError:
                    body = None
                self._record(body)
                if self.path != "/maintenance" or not isinstance(body, dict):
                    self._send(400, {"error": "PUT /maintenance {enabled: bool}"})
                    return
                with app.lock:
                    app.enabled = bool(body.get("enabled"))
                    self._send(200, {"enabled": app.enabled})

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests read the recorded hits."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def admin() -> Iterator[AdminApp]:
    app = AdminApp()
    app.start()
    try:
        yield app
    finally:
        app.stop()
