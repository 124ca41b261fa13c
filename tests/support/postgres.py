"""Real PostgreSQL servers for tests: a primary and streaming standbys on free 127.0.0.1 ports.

The primary is made with ``initdb`` (password authentication over TCP, trust only on its
private Unix socket), each standby with ``pg_basebackup -R`` from it, so replication, lag,
recovery and promotion are PostgreSQL's own. PostgreSQL refuses to run as root, so every
server binary runs as the unprivileged ``postgres`` user through ``runuser``, in a temporary
directory chowned to it. pytest-postgresql would be the maintained choice, but it runs
``pg_ctl`` as the current user (root on this machine), which the server refuses; hence this
small hand-written start-up. Servers run with ``fsync=off`` and friends (start-up in about a
second) and are stopped with ``pg_ctl stop -m immediate``, then by the postmaster PID they
wrote, never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.database.connection import PostgresClientSet
from fireline.modules import CheckResult, ModuleSpec, load_registry
from fireline.playbook.expressions import resolve

BIN_DIR = Path(os.environ.get("FIRELINE_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"
RUNUSER = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin") or "runuser"
PASSWORD = "fl-" + uuid.uuid4().hex[:16]
"""The superuser's password for this test session; TCP connections must give it."""

FAST = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "shared_buffers=16MB",
    "max_connections=40",
    "max_wal_senders=8",
    "wal_keep_size=64MB",
    "hot_standby=on",
    "wal_receiver_status_interval=1s",
    "logging_collector=off",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(*argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    run_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", **(env or {})}
    done = subprocess.run(
        [RUNUSER, "-u", PG_USER, "--", *argv],
        capture_output=True,
        text=True,
        env=run_env,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _chown(path: Path) -> None:
    entry = pwd.getpwnam(PG_USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)


@dataclass
class PgServer:
    """One running server; ``target()`` is its entry for ``Settings.targets["postgres"]``."""

    name: str
    data_dir: Path
    socket_dir: Path
    port: int
    log_file: Path
    running: bool = False
    extra: tuple[str, ...] = field(default_factory=tuple)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn(self, dbname: str = "postgres", *, password: bool = True) -> str:
        dsn = f"host={self.host} port={self.port} user={PG_USER} dbname={dbname}"
        return f"{dsn} password={PASSWORD}" if password else dsn

    def target(self, dbname: str = "postgres", **extra: Any) -> dict[str, Any]:
        """Connection settings as a deployment would write them (password apart from the DSN)."""
        return {
            "host": self.host,
            "port": self.port,
            "user": PG_USER,
            "password": PASSWORD,
            "dbname": dbname,
            "bin_dir": str(BIN_DIR),
            "connect_timeout_s": 3,
            **extra,
        }

    def start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.socket_dir}",
                f"-c cluster_name={self.name}",
                *(f"-c {setting}" for setting in (*FAST, *self.extra)),
            ]
        )
        _as_postgres(
            str(BIN_DIR / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )
        self.running = True

    def postmaster_pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            return int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """``pg_ctl stop -m immediate``; if that fails, SIGKILL the postmaster PID it wrote."""
        if not self.running:
            return
        pid = self.postmaster_pid()
        try:
            _as_postgres(
                str(BIN_DIR / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"
            )
        except (RuntimeError, subprocess.TimeoutExpired):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        self.running = False

    def execute(self, query: str, dbname: str = "postgres", params: Any = None) -> list[Any]:
        """Run one statement as the superuser (autocommit); rows when it returns any."""
        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description is not None else []

    def scalar(self, query: str, dbname: str = "postgres", params: Any = None) -> Any:
        rows = self.execute(query, dbname, params)
        return rows[0][0] if rows else None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text().splitlines()[-lines:])
        return ""


class PgCluster:
    """A primary and the standbys made from it, all under one temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: list[PgServer] = []
        self.primary = self._init_primary()
        self.standby = self.make_standby("standby1")

    def _server(self, name: str, extra: tuple[str, ...] = ()) -> PgServer:
        socket_dir = self.root / f"{name}-sock"
        socket_dir.mkdir()
        _chown(socket_dir)
        server = PgServer(
            name=name,
            data_dir=self.root / name,
            socket_dir=socket_dir,
            port=free_port(),
            log_file=self.root / f"{name}.log",
            extra=extra,
        )
        self.servers.append(server)
        return server

    def _init_primary(self) -> PgServer:
        server = self._server("primary")
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        _chown(pwfile)
        _as_postgres(
            str(BIN_DIR / "initdb"),
            "-D",
            str(server.data_dir),
            "-U",
            PG_USER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        server.start()
        return server

    def make_standby(self, name: str) -> PgServer:
        """A fresh streaming standby of the primary (``pg_basebackup -R``), started and caught up."""
        server = self._server(name)
        _as_postgres(
            str(BIN_DIR / "pg_basebackup"),
            "-h",
            self.primary.host,
            "-p",
            str(self.primary.port),
            "-U",
            PG_USER,
            "-D",
            str(server.data_dir),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
            env={"PGPASSWORD": PASSWORD},
        )
        server.start()
        self.wait_streaming(name)
        return server

    def wait_streaming(self, name: str, timeout_s: float = 15) -> None:
        """Until the primary lists the standby as streaming with nothing left to replay."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            row = self.primary.execute(
                "SELECT state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) "
                "FROM pg_stat_replication WHERE application_name = %s",
                params=(name,),
            )
            if row and row[0][0] == "streaming" and row[0][1] == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"standby {name} is not streaming: {self.primary.log_tail()}")

    def create_database(self, prefix: str = "db") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.primary.execute(f'CREATE DATABASE "{name}"')
        return name

    def reset_primary(self) -> None:
        """Undo what a test may have left on the primary: read-only configuration, ledger."""
        self.primary.execute("ALTER SYSTEM RESET ALL")
        self.primary.execute("SELECT pg_reload_conf()")

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


@pytest.fixture(scope="session", name="pg_cluster")
def pg_cluster_fixture() -> Iterator[PgCluster]:
    """Import this (and ``pg_fixture``) into a test module to get ``pg_cluster`` and ``pg``."""
    root = Path(tempfile.mkdtemp(prefix="fireline-pg-"))
    os.chmod(root, 0o755)
    _chown(root)
    cluster: PgCluster | None = None
    try:
        cluster = PgCluster(root)
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        else:
            for data_dir in root.glob("*/postmaster.pid"):
                PgServer(
                    data_dir.parent.name,
                    data_dir.parent,
                    root,
                    0,
                    root / "x.log",
                    running=True,
                ).stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(name="pg")
def pg_fixture(pg_cluster: PgCluster) -> Iterator[PgCluster]:
    """The session cluster, with the primary's system configuration reset after the test."""
    try:
        yield pg_cluster
    finally:
        pg_cluster.reset_primary()


# -- helpers for the database module tests ----------------------------------------------------

REGISTRY = load_registry(["core", "database"])

SCHEMA = """

CREATE TABLE schema_migrations (version text PRIMARY KEY);
INSERT INTO schema_migrations VALUES ('2'), ('3');
CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric);
INSERT INTO accounts SELECT g, 'owner ' || g, g * 10 FROM generate_series(1, 200) g;
CREATE SCHEMA billing;
CREATE TABLE billing."Invoices" (id int, amount numeric);
INSERT INTO billing."Invoices" VALUES (1, 9.5), (2, 12);
"""


def activity_env(key: str = "wf-1/step-a") -> ActivityEnvironment:

    workflow_id, activity_id = key.split("/", 1)
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(
        ActivityEnvironment.default_info(),
        workflow_id=workflow_id,
        activity_id=activity_id,
        heartbeat_timeout=timedelta(seconds=30),
    )
    return environment


async def run(fn: Callable[..., Any], arg: BaseModel, key: str = "wf-1/step-a") -> Any:
    return await activity_env(key).run(fn, arg)


async def conditions(
    mods: PostgresClientSet | list[PostgresClientSet],
    spec: ModuleSpec,
    stage: str,
    inp: BaseModel,
    out: BaseModel | None = None,
) -> list[CheckResult]:
    """The module's declared pre- or postconditions, resolved as the workflow resolves them,
    each run on whichever of ``mods`` serves that check."""
    refs = spec.preconditions if stage == "pre" else spec.postconditions
    context: dict[str, Any] = {"input": inp.model_dump(mode="json")}
    if out is not None:
        context["output"] = out.model_dump(mode="json")
    sets = mods if isinstance(mods, list) else [mods]
    results = []
    for ref in refs:
        check = REGISTRY[ref.check]
        params = check.input_model.model_validate(resolve(ref.with_, context))
        [owner] = [m for m in sets if check.owner is not None and isinstance(m, check.owner)]
        results.append(await run(getattr(owner, check.fn.__name__), params))
    return results


async def eventually(probe: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Poll ``probe`` until it returns something truthy (configuration reloads are async)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


def auto_conf(server: PgServer, name: str = "default_transaction_read_only") -> str | None:
    return server.scalar(
        "SELECT setting FROM pg_file_settings WHERE name = %s "
        "AND sourcefile LIKE '%%postgresql.auto.conf' ORDER BY seqno DESC LIMIT 1",
        params=(name,),
    )


def app_can_write(server: PgServer, dbname: str = "postgres") -> bool:
    """As an application sees it: a new session, nothing overridden."""
    try:
        with (
            psycopg.connect(server.dsn(dbname), autocommit=True, connect_timeout=3) as conn,
            conn.transaction(force_rollback=True),
        ):
            conn.execute("CREATE TEMPORARY TABLE probe (x int)")
        return True
    except psycopg.Error:
        return False


async def raises(awaitable: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await awaitable
    return caught.value
