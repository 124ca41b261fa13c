"""A real ``redis-server`` on 127.0.0.1 for tests: started in a tmp dir, stopped by its PID.

pytest-redis starts the same binary, but it is not a dependency here: it would add mirakuru
and port-for for what is twenty lines, and as an auto-loaded pytest plugin it would register
its fixtures and command-line options in every test session of the suite, not just these.
Persistence is off (``--save ''``, ``--appendonly no``): every test starts from what it writes.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    password: str | None = None
    _client: redis.Redis | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """The synchronous client for the test's own reads and writes (one, closed at stop)."""
        if self._client is None:
            self._client = redis.Redis(
                host="127.0.0.1", port=self.port, password=self.password, decode_responses=True
            )
        return self._client

    def target(self, **extra: object) -> dict[str, object]:
        """The ``settings.targets["redis"][NAME]`` entry pointing at this server."""
        auth = {"password": self.password} if self.password else {}
        return {"host": "127.0.0.1", "port": self.port, **auth, **extra}

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_redis(workdir: Path, attempts: int = 3, password: str | None = None) -> RedisServer:
    """Start redis-server on a free port; retry if another process took the port first.

    With ``password`` the server demands it (``--requirepass``) from every client.
    """
    last_error = ""
    for _ in range(attempts):
        port = free_port()
        process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--logfile", str(workdir / f"redis-{port}.log"),
                *(["--requirepass", password] if password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        server = RedisServer(port, process, workdir, password)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if server.client().ping():
                    return server
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        server.stop()
        log = workdir / f"redis-{port}.log"
        last_error = log.read_text()[-500:] if log.exists() else "no log"
    raise RuntimeError(f"redis-server did not start: {last_error}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis for the session; ``redis_db`` empties it for each test."""
    with tempfile.TemporaryDirectory(prefix="fireline-redis-") as workdir:
        server = start_redis(Path(workdir))
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_db(redis_server: RedisServer) -> RedisServer:
    """The session's Redis, emptied before the test (the test's own clean slate)."""
    redis_server.client().flushdb()
    return redis_server
