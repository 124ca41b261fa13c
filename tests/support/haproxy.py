"""A real HAProxy (the Debian package) in front of small real HTTP backends, on 127.0.0.1.

``start_haproxy`` writes a config into a fresh temporary folder (short path: unix socket paths
are limited to 108 bytes), starts ``haproxy -f cfg -db`` in the foreground and stops it by the
PID it started. The admin socket is offered twice, as a unix socket and on a free TCP port, so
both kinds of target are tested. Backends answer ``/health`` (HAProxy's health check) and
``/<server>/slow``, which holds the request open until the test releases it: a real session
that a drain has to wait for; ``/broken`` answers 503, a service that is still failing. ``use-server`` rules pin ``/<server>/...`` to that server, so a
test decides where its slow session lands.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from activities.platform.haproxy_api import ServerState, parse_servers_state
from fireline.runtime.settings import Settings

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
BACKEND = "web"
"""The backend the fixture configures, with servers s1 (weight 10), s2 (20), s3 (30)."""


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Health checks hang up early; that is not worth a traceback."""


@dataclass
class Backend:
    """One small HTTP server; ``gate`` holds ``/<name>/slow`` requests until set."""

    name: str
    server: ThreadingHTTPServer
    gate: threading.Event = field(default_factory=threading.Event)
    served: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def _backend(name: str) -> Backend:
    holder: dict[str, Backend] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            me = holder["backend"]
            if self.path.endswith("/slow"):
                me.gate.wait(30)
            if self.path != "/health":
                me.served.append(self.path)
            body = f"{me.name} {self.path}\n".encode()
            try:
                self.send_response(503 if self.path == "/broken" else 200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = _Quiet(("127.0.0.1", 0), Handler)
    backend = Backend(name, server)
    holder["backend"] = backend
    threading.Thread(
        target=server.serve_forever, args=(0.05,), name=f"backend-{name}", daemon=True
    ).start()
    return backend


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


WEIGHTS = {"s1": 10, "s2": 20, "s3": 30}

CONFIG = """\
global
    stats socket {socket} mode 600 level admin
    stats socket ipv4@127.0.0.1:{admin_port} level admin
    stats timeout 30s
    log stderr format short local0 err

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 1s

frontend fe
    bind 127.0.0.1:{port}
    default_backend {backend}

backend {backend}
    balance roundrobin
    option httpchk GET /health
    default-server inter 100ms fastinter 100ms downinter 100ms rise 1 fall 1
{use_servers}
{servers}
"""


class Haproxy:
    """A running HAProxy; every helper talks to it through real sockets."""

    def __init__(self, folder: Path, backends: dict[str, Backend]) -> None:
        self.folder = folder
        self.backends = backends
        self.socket = str(folder / "admin.sock")
        self.admin_port = free_port()
        self.port = free_port()
        self.config = folder / "haproxy.cfg"
        self.config.write_text(
            CONFIG.format(
                socket=self.socket,
                admin_port=self.admin_port,
                port=self.port,
                backend=BACKEND,
                use_servers="\n".join(
                    f"    use-server {n} if {{ path_beg /{n}/ }}" for n in backends
                ),
                servers="\n".join(
                    f"    server {n} 127.0.0.1:{b.port} check weight {WEIGHTS.get(n, 1)}"
                    for n, b in backends.items()
                ),
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Its log goes to a file: every state change is logged, and an unread pipe would fill
        # up and stall HAProxy (admin socket included) after a few hundred changes.
        self.log = self.folder / "haproxy.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [HAPROXY, "-f", str(self.config), "-db"], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"haproxy exited {self.process.returncode}: {err}")
            with contextlib.suppress(OSError, ValueError):
                states = self.states()
                if states and all(s.operational == "running" for s in states.values()):
                    return
            time.sleep(0.02)
        raise RuntimeError("haproxy did not report every server running within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    # -- reading and poking it directly, as an operator with socat would --------------------

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(self.socket)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, ServerState]:
        return {
            s.server: s
            for s in parse_servers_state(self.command(f"show servers state {BACKEND}"))
            if s.backend == BACKEND
        }

    def snapshot(self) -> dict[str, tuple[str, int, int]]:
        """server -> (admin state, forced admin bits, weight): what a rollback must restore."""
        return {n: (s.admin_state, s.forced_bits, s.weight) for n, s in self.states().items()}

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def settings(self, name: str = "edge", **extra: Any) -> Settings:
        return Settings(targets={"haproxy": {name: {"socket": self.socket}}}, **extra)

    def wait_for(self, server: str, operational: str, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while self.states()[server].operational != operational:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{server} never became {operational}")
            time.sleep(0.02)


class SlowSession:
    """An HTTP request through HAProxy to ``/<server>/slow``, held open by its backend."""

    def __init__(self, haproxy: Haproxy, server: str) -> None:
        self.backend = haproxy.backends[server]
        self.sock = socket.create_connection(("127.0.0.1", haproxy.port), timeout=30)
        self.sock.sendall(
            f"GET /{server}/slow HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()
        )

    def finish(self) -> bytes:
        """Let the backend answer; read the whole response."""
        self.backend.gate.set()
        chunks = []
        while chunk := self.sock.recv(65536):
            chunks.append(chunk)
        self.sock.close()
        return b"".join(chunks)


def wait_for_sessions(haproxy: Haproxy, server: str, count: int, timeout_s: float = 10) -> None:
    """Until HAProxy's ``show stat`` counts ``count`` current sessions on ``server``."""
    deadline = time.monotonic() + timeout_s
    while True:
        for line in haproxy.command("show stat").splitlines():
            parts = line.split(",")
            if parts[:2] == [BACKEND, server] and parts[4] == str(count):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server} never had {count} current sessions")
        time.sleep(0.02)


@contextlib.contextmanager
def running_haproxy(servers: tuple[str, ...] = ("s1", "s2", "s3")) -> Iterator[Haproxy]:
    folder = Path(tempfile.mkdtemp(prefix="flhx-", dir="/tmp"))
    backends = {name: _backend(name) for name in servers}
    haproxy = Haproxy(folder, backends)
    try:
        haproxy.start()
        yield haproxy
    finally:
        haproxy.stop()
        for backend in backends.values():
            backend.close()
        shutil.rmtree(folder, ignore_errors=True)
