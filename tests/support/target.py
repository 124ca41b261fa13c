"""A real HTTP server on 127.0.0.1 that tests program with replies and inspect afterwards.

Modules under test talk to it over real sockets, so headers, retries, timeouts and refused
connections behave as they do against a real target. Each route answers with a queue of
replies (the last one repeats); every request is recorded on arrival, before any hold or delay,
so a test can see a request in flight.

In a pytest module: ``from tests.support.target import target`` and take the ``target``
fixture. From another process: ``python -m tests.support.target --port N --routes FILE``
serves the routes in FILE (``[{"method", "path", "replies": [{"status", "json", "delay_s"}]}]``)
and lists what it recorded at ``GET /_target/hits``.
"""

from __future__ import annotations

import argparse
import asyncio
import json as jsonlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

HITS_PATH = "/_target/hits"
"""Not recorded, not routable: lets another process read what was recorded."""


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    """Body as JSON; None sends ``{"ok": true}``."""
    delay_s: float = 0.0
    """Sleep before answering (the request is already recorded)."""


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    body: bytes


@dataclass
class _Route:
    replies: list[Reply]
    taken: int = 0

    def next(self) -> Reply:
        reply = self.replies[min(self.taken, len(self.replies) - 1)]
        self.taken += 1
        return reply


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    routes: dict[tuple[str, str], _Route] = field(default_factory=dict)
    holds: dict[tuple[str, str], threading.Event] = field(default_factory=dict)
    hits: list[Recorded] = field(default_factory=list)
    closing: threading.Event = field(default_factory=threading.Event)


class Target:
    """A started server; see the module docstring. Every method is thread-safe."""

    def __init__(self, server: ThreadingHTTPServer, state: _State, thread: threading.Thread):
        self._server = server
        self._state = state
        self._thread = thread
        host, port = server.server_address[:2]
        self.base_url = f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def route(self, method: str, path: str, *replies: Reply) -> None:
        """Answer ``method path`` with ``replies`` in order; the last one repeats forever."""
        if not replies:
            raise ValueError("a route needs at least one Reply")
        with self._state.lock:
            self._state.routes[(method.upper(), path)] = _Route(list(replies))

    def hold(self, method: str, path: str) -> threading.Event:
        """Requests to the route wait until the returned event is set, then answer as routed."""
        event = threading.Event()
        with self._state.lock:
            self._state.holds[(method.upper(), path)] = event
        return event

    def hits(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        with self._state.lock:
            return [
                hit
                for hit in self._state.hits
                if (method is None or hit.method == method.upper())
                and (path is None or hit.path == path)
            ]

    def wait_for_hits(
        self, method: str | None, path: str | None, count: int, timeout_s: float = 30
    ) -> list[Recorded]:
        """Block until at least ``count`` matching requests arrived; raise on timeout.

        It blocks the calling thread: from async tests whose workers share the event loop use
        :meth:`wait_for_hits_async`, or the requests it waits for can never be sent.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.hits(method, path)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(self._shortfall(method, path, count, found))
            time.sleep(0.02)

    async def wait_for_hits_async(
        self, method: str | None, path: str | None, count: int, timeout_s: float = 30
    ) -> list[Recorded]:
        """:meth:`wait_for_hits` that yields to the event loop while it polls."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.hits(method, path)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(self._shortfall(method, path, count, found))
            await asyncio.sleep(0.02)

    def _shortfall(
        self, method: str | None, path: str | None, count: int, found: list[Recorded]
    ) -> str:
        seen = [f"{h.method} {h.path}" for h in self.hits()]
        return f"wanted {count} x {method or '*'} {path or '*'}, got {len(found)}; all hits: {seen}"

    def close(self) -> None:
        """Release held requests and stop serving."""
        self._state.closing.set()
        with self._state.lock:
            holds = list(self._state.holds.values())
        for event in holds:
            event.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            method = self.command.upper()
            if method == "GET" and parts.path == HITS_PATH:
                with state.lock:
                    hits = [_hit_json(h) for h in state.hits]
                self._send(200, hits)
                return
            try:
                parsed = jsonlib.loads(body) if body else None
            except ValueError:
                parsed = None
            key = (method, parts.path)
            with state.lock:
                state.hits.append(
                    Recorded(
                        method=method,
                        path=parts.path,
                        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                        headers={k.lower(): v for k, v in self.headers.items()},
                        json=parsed,
                        body=body,
                    )
                )
                held = state.holds.get(key)
            if held is not None:
                while not held.wait(0.1) and not state.closing.is_set():
                    pass
            with state.lock:
                route = state.routes.get(key)
                reply = route.next() if route else None
            if reply is None:
                self._send(404, {"error": f"no route for {method} {parts.path}"})
                return
            if reply.delay_s:
                state.closing.wait(reply.delay_s)
            self._send(reply.status, {"ok": True} if reply.json is None else reply.json)

        def _send(self, status: int, payload: Any) -> None:
            data = b"" if status in (204, 304) else jsonlib.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout under test): nothing left to answer

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests read the recorded hits instead."""

    return Handler


def _hit_json(hit: Recorded) -> dict[str, Any]:
    data = asdict(hit)
    data["body"] = hit.body.decode("utf-8", "replace")
    return data


def start_target(port: int = 0) -> Target:
    """Serve on 127.0.0.1 (``port`` 0 picks a free one) from a daemon thread."""
    state = _State()
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="target", daemon=True)
    thread.start()
    return Target(server, state, thread)


@pytest.fixture
def target() -> Iterator[Target]:
    """A fresh target server per test, stopped afterwards."""
    server = start_target()
    try:
        yield server
    finally:
        server.close()


def load_routes(target: Target, path: Path) -> None:
    for entry in jsonlib.loads(path.read_text()):
        replies = [Reply(**reply) for reply in entry.get("replies") or [{}]]
        target.route(entry["method"], entry["path"], *replies)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve programmed HTTP replies on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--routes", type=Path, help="JSON list of {method, path, replies}")
    args = parser.parse_args(argv)
    server = start_target(args.port)
    if args.routes:
        load_routes(server, args.routes)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(server.base_url, flush=True)
    stop.wait()
    server.close()


if __name__ == "__main__":
    main()
