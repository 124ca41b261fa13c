"""A real Prometheus (Debian's ``prometheus``) scraping a real metrics endpoint, for tests.

:class:`MetricsApp` is a small HTTP server exposing ``app_requests_total{code}`` counters in
the Prometheus text format; a ticker thread adds ``ok_per_s`` and ``errors_per_s`` to them,
so ``rate()`` over them is the error rate a test chose. Prometheus scrapes it every second
from a tmp dir on a free port and is stopped by its PID.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.support.redis import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
TICK_S = 0.1

ERROR_RATE_QUERY = (
    'sum(rate(app_requests_total{code=~"5.."}[2m])) / sum(rate(app_requests_total[2m]))'
)
"""The share of requests answered 5xx over two minutes, as a dashboard would ask it."""


@dataclass
class MetricsApp:
    """Counters the test steers; served at ``/metrics``."""

    ok_per_s: float = 0.0
    errors_per_s: float = 0.0
    counts: dict[str, float] = field(default_factory=lambda: {"200": 0.0, "500": 0.0})
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    def set_rates(self, ok_per_s: float, errors_per_s: float) -> None:
        with self.lock:
            self.ok_per_s, self.errors_per_s = ok_per_s, errors_per_s

    def add(self, code: str, amount: float) -> None:
        with self.lock:
            self.counts[code] = self.counts.get(code, 0.0) + amount

    def render(self) -> bytes:
        with self.lock:
            lines = [
                "# HELP app_requests_total Requests answered, by status code.",
                "# TYPE app_requests_total counter",
                *(f'app_requests_total{{code="{c}"}} {v}' for c, v in sorted(self.counts.items())),
            ]
        return ("\n".join(lines) + "\n").encode()

    def _tick(self) -> None:
        while not self.stopping.wait(TICK_S):
            with self.lock:
                self.counts["200"] += self.ok_per_s * TICK_S
                self.counts["500"] += self.errors_per_s * TICK_S

    @property
    def address(self) -> str:
        assert self.server is not None
        port = self.server.server_address[1]
        return f"127.0.0.1:{port}"

    def start(self) -> None:
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = app.render() if self.path == "/metrics" else b"not found\n"
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._tick, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class Prometheus:
    port: int
    process: subprocess.Popen[bytes]
    app: MetricsApp
    log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def target(self, **extra: object) -> dict[str, object]:
        return {"url": self.url, **extra}

    def query(self, promql: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        response.raise_for_status()
        data: dict[str, Any] = response.json()["data"]
        return data

    def wait_for(self, promql: str, predicate: Any, timeout_s: float = 20) -> dict[str, Any]:
        """Poll until the query's data satisfies ``predicate`` (scrapes are every second)."""
        deadline = time.monotonic() + timeout_s
        while True:
            data = self.query(promql)
            if predicate(data):
                return data
            if time.monotonic() > deadline:
                raise TimeoutError(f"{promql} never satisfied the predicate; last: {data}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.log is not None:
            self.log.close()


def start_prometheus(workdir: Path, app: MetricsApp) -> Prometheus:
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: app\n    static_configs:\n"
        f"      - targets: ['{app.address}']\n"
    )
    for _ in range(3):
        port = free_port()
        log = (workdir / f"prometheus-{port}.log").open("wb")
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / f'data-{port}'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        server = Prometheus(port, process, app, log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200:
                    # Ready to serve is not yet scraped once: wait for the target to be up.
                    server.wait_for('up{job="app"}', lambda d: bool(d["result"]))
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        server.stop()
    raise RuntimeError(f"prometheus did not start; see {workdir}")


@pytest.fixture(scope="session")
def prometheus() -> Iterator[Prometheus]:
    """One Prometheus and metrics app for the session; tests steer ``prometheus.app``."""
    app = MetricsApp()
    app.start()
    with tempfile.TemporaryDirectory(prefix="fireline-prometheus-") as workdir:
        server = start_prometheus(Path(workdir), app)
        try:
            yield server
        finally:
            server.stop()
            app.stop()
