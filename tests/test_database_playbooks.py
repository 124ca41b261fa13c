"""The database playbooks end to end: real Temporal, real workers, real PostgreSQL and HAProxy.

``database-primary-failure`` fails over from the session primary to a standby made for the
test, through a real HAProxy in TCP mode in front of both; ``data-inconsistency`` restores a
damaged database from a snapshot. Each runs once to success and once into a late failure,
and the assertions read the servers, the proxy and the snapshot files.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from fireline.compile.compiler import PlaybookLibrary
from fireline.messages import (
    QUERY_STATUS,
    RunPhase,
    RunState,
    StepStatus,
)
from fireline.modules import load_registry
from fireline.runtime.settings import Settings
from tests.support.postgres import (  # noqa: F401  (fixtures)
    SCHEMA,
    PgCluster,
    PgServer,
    app_can_write,
    auto_conf,
    free_port,
    pg_cluster_fixture,
    pg_fixture,
)
from tests.support.target import Reply, Target
from tests.support.workers import approve as signed_approve
from tests.support.workers import fireline_workers, reject, start_run

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
DOMAINS = ("core", "database", "platform")
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

PROXY_CONFIG = """\
global
    stats socket {socket} mode 600 level admin
    log stderr format short local0 err

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 1s

frontend pg
    bind 127.0.0.1:{port}
    default_backend postgres

backend postgres
    default-server inter 100ms fastinter 100ms downinter 100ms rise 1 fall 1
    server old 127.0.0.1:{old} check
    server new 127.0.0.1:{new} check
"""


class PgProxy:
    """HAProxy in TCP mode in front of two PostgreSQL servers; ``new`` starts in maintenance.

    Started with ``-db`` in the foreground and stopped by the PID it started.
    """

    def __init__(self, old: PgServer, new: PgServer) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="fl-pgp-"))
        self.socket = str(self.folder / "admin.sock")
        self.port = free_port()
        config = self.folder / "haproxy.cfg"
        config.write_text(
            PROXY_CONFIG.format(socket=self.socket, port=self.port, old=old.port, new=new.port)
        )
        self.process = subprocess.Popen(
            [HAPROXY, "-f", str(config), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while not self.states().get("old", "").startswith("2 "):  # srv_op_state 2: running
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("haproxy did not start")
            time.sleep(0.02)
        # At run time, not with `disabled` in the config: that sets the configuration
        # maintenance bit, which `set server ... state ready` does not clear.
        self.command("set server postgres/new state maint")

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(self.socket)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """server -> "operational_state admin_state" from ``show servers state``."""
        with contextlib.suppress(OSError):
            out: dict[str, str] = {}
            for line in self.command("show servers state postgres").splitlines():
                fields = line.split()
                if len(fields) > 6 and fields[1] == "postgres":
                    out[fields[3]] = f"{fields[5]} {fields[6]}"
            return out
        return {}

    def admin(self) -> dict[str, int]:
        """server -> admin state bits (0 ready, 1 forced maintenance)."""
        return {name: int(state.split()[1]) for name, state in self.states().items()}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> PlaybookLibrary:
    """The two shipped playbook files and the shipped catalog as they are (its
    ``quarter-close`` embargo covers the database domain, judged at every database step)."""
    folder = tmp_path_factory.mktemp("playbooks")
    for name in ("database-primary-failure.yaml", "data-inconsistency.yaml"):
        shutil.copy(PLAYBOOKS / name, folder / name)
    shutil.copy(PLAYBOOKS / "catalog.yaml", folder / "catalog.yaml")
    return PlaybookLibrary.load(folder, registry=load_registry(DOMAINS))


@pytest.fixture
def failover(pg: PgCluster) -> Iterator[tuple[PgServer, PgProxy]]:
    """A standby to promote (made for this test) and HAProxy pointing at the primary."""
    fresh = pg.make_standby(f"failover{free_port()}")
    proxy = PgProxy(pg.primary, fresh)
    try:
        yield fresh, proxy
    finally:
        proxy.stop()
        fresh.stop()


def failover_settings(pg: PgCluster, fresh: PgServer, proxy: PgProxy) -> Settings:
    via_proxy = {**pg.primary.target(), "port": proxy.port}
    return Settings(
        targets={
            "postgres": {
                "primary": pg.primary.target(),
                "standby": fresh.target(),
                "service": via_proxy,
            },
            "haproxy": {"edge": {"socket": proxy.socket}},
        }
    )


def failover_inputs(fresh: PgServer) -> dict[str, Any]:
    return {
        "standby_name": fresh.name,
        "service": "service",
        "old_server": "old",
        "new_server": "new",
    }


async def status(handle: WorkflowHandle[Any, Any]) -> RunState:
    return await handle.query(QUERY_STATUS, result_type=RunState)


async def until_awaiting(handle: WorkflowHandle[Any, Any], step: str) -> RunState:
    async with asyncio.timeout(60):
        while True:
            state = await status(handle)
            by_id = {s.id: s for s in state.steps}
            if by_id[step].status is StepStatus.awaiting_approval or state.phase.terminal:
                return state
            await asyncio.sleep(0.1)


async def finished(handle: WorkflowHandle[Any, Any]) -> RunState:
    """The run's final state, whether it succeeded or failed."""
    with contextlib.suppress(WorkflowFailureError):
        await handle.result()
    return await status(handle)


def explain(state: RunState) -> str:
    failed = [f"{s.id}: {s.error}" for s in state.steps if s.error]
    return f"{state.phase}: {state.reason}; {failed}"


async def approve(handle: WorkflowHandle[Any, Any], step: str, *people: str) -> None:
    for person in people:
        await signed_approve(handle, step, person)


class TestPrimaryFailurePlaybook:
    async def test_fails_over_and_traffic_reaches_the_new_primary(
        self,
        client: Client,
        task_queue_prefix: str,
        pg: PgCluster,
        failover: tuple[PgServer, PgProxy],
        library: PlaybookLibrary,
    ) -> None:
        """Freeze, in sync, two approvals, promote, repoint, writes through the proxy."""
        fresh, proxy = failover
        assert not await asyncio.to_thread(app_can_write, fresh)
        plan = library.compile("database-primary-failure")
        async with fireline_workers(
            client,
            task_queue_prefix,
            domains=DOMAINS,
            settings=failover_settings(pg, fresh, proxy),
        ):
            handle = await start_run(client, task_queue_prefix, plan, failover_inputs(fresh))
            state = await until_awaiting(handle, "promote")
            assert not state.phase.terminal, state.reason
            assert auto_conf(pg.primary) == "on"
            assert fresh.scalar("SELECT pg_is_in_recovery()") is True
            gate = {s.id: s for s in state.steps}["promote"]
            assert gate.preview is not None, gate.preview_error
            assert gate.preview.warnings == []
            assert [(c.attribute, c.before, c.after) for c in gate.preview.changes] == [
                ("role", "standby", "primary")
            ]
            assert "read-only for new sessions" in gate.preview.summary
            await approve(handle, "promote", "alice", "bob")
            result = await finished(handle)

        assert result.phase is RunPhase.succeeded, explain(result)
        assert result.outputs["promoted"] is True
        assert result.outputs["frozen_before"] is None
        assert fresh.scalar("SELECT pg_is_in_recovery()") is False
        assert proxy.admin() == {"old": 1, "new": 0}
        via_proxy = PgServer("via", fresh.data_dir, fresh.socket_dir, proxy.port, fresh.log_file)
        assert await asyncio.to_thread(app_can_write, via_proxy)
        # The old primary stays fenced: it must be rebuilt before it takes writes again.
        assert auto_conf(pg.primary) == "on"
        assert not await asyncio.to_thread(app_can_write, pg.primary)

    async def test_rejected_promotion_lifts_the_freeze_exactly(
        self,
        client: Client,
        task_queue_prefix: str,
        pg: PgCluster,
        failover: tuple[PgServer, PgProxy],
        library: PlaybookLibrary,
    ) -> None:
        """An approver says no at the promotion gate: the freeze is undone, nothing else ran."""
        fresh, proxy = failover
        plan = library.compile("database-primary-failure")
        async with fireline_workers(
            client,
            task_queue_prefix,
            domains=DOMAINS,
            settings=failover_settings(pg, fresh, proxy),
        ):
            handle = await start_run(client, task_queue_prefix, plan, failover_inputs(fresh))
            await until_awaiting(handle, "promote")
            assert not await asyncio.to_thread(app_can_write, pg.primary)
            await reject(handle, "promote", "alice", "not yet")
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            state = await status(handle)

        assert state.phase is RunPhase.compensated, state.reason
        steps = {s.id: s.status for s in state.steps}
        assert steps["freeze"] is StepStatus.compensated
        assert auto_conf(pg.primary) is None
        assert await asyncio.to_thread(app_can_write, pg.primary)
        assert fresh.scalar("SELECT pg_is_in_recovery()") is True
        assert proxy.admin() == {"old": 0, "new": 1}

    async def test_a_failure_after_the_promotion_halts_and_keeps_the_fence(
        self,
        client: Client,
        task_queue_prefix: str,
        pg: PgCluster,
        failover: tuple[PgServer, PgProxy],
        library: PlaybookLibrary,
    ) -> None:
        """Writes cannot be verified after the promotion: nothing is rolled back (unfreezing
        the old primary now would make two writable primaries); the run halts for a human."""
        fresh, proxy = failover
        settings = failover_settings(pg, fresh, proxy)
        nowhere = {**pg.primary.target(), "port": free_port(), "connect_timeout_s": 1}
        settings.targets["postgres"]["nowhere"] = nowhere
        plan = library.compile("database-primary-failure")
        async with fireline_workers(client, task_queue_prefix, domains=DOMAINS, settings=settings):
            handle = await start_run(
                client, task_queue_prefix, plan, {**failover_inputs(fresh), "service": "nowhere"}
            )
            await until_awaiting(handle, "promote")
            await approve(handle, "promote", "alice", "bob")
            state = await finished(handle)

        assert state.phase is RunPhase.failed, explain(state)
        steps = {s.id: s for s in state.steps}
        assert steps["writes"].status is StepStatus.failed
        assert "refuses writes" in (steps["writes"].error or "")
        assert state.compensations == []
        assert fresh.scalar("SELECT pg_is_in_recovery()") is False
        assert auto_conf(pg.primary) == "on"
        assert proxy.admin() == {"old": 1, "new": 0}


@pytest.fixture
def damaged(pg: PgCluster, tmp_path: Path) -> tuple[str, Path]:
    """A database of its own and the folder its snapshots go to."""
    name = pg.create_database("incons")
    for statement in SCHEMA.strip().split(";\n"):
        pg.primary.execute(statement, name)
    return name, tmp_path / "snapshots"


@pytest.fixture
async def good_snapshot(damaged: tuple[str, Path], pg: PgCluster) -> None:
    """Snapshot 'good' of the intact data, then the damage a bad job would do."""
    from activities.database.snapshot import SnapshotInput, SnapshotModules
    from tests.support.postgres import run

    name, folder = damaged
    mods = SnapshotModules(inconsistency_settings(pg, name, folder))
    try:
        await run(mods.snapshot, SnapshotInput(target="main", snapshot="good"))
    finally:
        await mods.aclose()
    pg.primary.execute("UPDATE accounts SET balance = -1 WHERE id % 3 = 0", name)
    pg.primary.execute("DELETE FROM accounts WHERE id > 190", name)


def inconsistency_settings(pg: PgCluster, name: str, folder: Path) -> Settings:
    target = pg.primary.target(name, snapshot_dir=str(folder))
    return Settings(targets={"postgres": {"main": target}})


def damage(pg: PgCluster, name: str) -> tuple[int, int]:
    return (
        pg.primary.scalar("SELECT count(*) FROM accounts", name),
        pg.primary.scalar("SELECT count(*) FROM accounts WHERE balance = -1", name),
    )


class TestDataInconsistencyPlaybook:
    async def test_restores_verifies_and_unfreezes(
        self,
        client: Client,
        task_queue_prefix: str,
        pg: PgCluster,
        damaged: tuple[str, Path],
        good_snapshot: None,
        target: Target,
        library: PlaybookLibrary,
    ) -> None:
        """Freeze, safety snapshot, checks, approved restore, verified, writes allowed again."""
        name, folder = damaged
        assert damage(pg, name) == (190, 63)
        target.route("GET", "/health", Reply(200))
        plan = library.compile("data-inconsistency")
        async with fireline_workers(
            client,
            task_queue_prefix,
            domains=DOMAINS,
            settings=inconsistency_settings(pg, name, folder),
        ):
            handle = await start_run(
                client,
                task_queue_prefix,
                plan,
                {
                    "good_snapshot": "good",
                    "safety_snapshot": "before-restore",
                    "app_schema_version": "3",
                    "app_health_url": target.url("/health"),
                },
            )
            state = await until_awaiting(handle, "restore")
            assert not state.phase.terminal, state.reason
            assert not await asyncio.to_thread(app_can_write, pg.primary, name)
            gate = {s.id: s for s in state.steps}["restore"]
            assert gate.preview is not None, gate.preview_error
            assert [(c.attribute, c.before, c.after) for c in gate.preview.changes] == [
                ("public.accounts", "190 rows", "200 rows (snapshot good)")
            ]
            assert gate.preview.rollback == "restore snapshot 'before-restore' (taken before)"
            await approve(handle, "restore", "alice", "bob")
            result = await finished(handle)

        assert result.phase is RunPhase.succeeded, explain(result)
        assert result.outputs["restored_rows"] == 204
        assert damage(pg, name) == (200, 0)
        assert (folder / "before-restore.dump").exists()
        assert auto_conf(pg.primary) == "off"
        assert await asyncio.to_thread(app_can_write, pg.primary, name)

    async def test_a_late_failure_brings_the_present_state_back(
        self,
        client: Client,
        task_queue_prefix: str,
        pg: PgCluster,
        damaged: tuple[str, Path],
        good_snapshot: None,
        target: Target,
        library: PlaybookLibrary,
    ) -> None:
        """The application is unhealthy after the restore: unfreeze, restore, safety snapshot
        and freeze are undone in reverse; data, files and setting are as before the run."""
        name, folder = damaged
        before = damage(pg, name)
        target.route("GET", "/health", Reply(503))
        plan = library.compile("data-inconsistency")
        async with fireline_workers(
            client,
            task_queue_prefix,
            domains=DOMAINS,
            settings=inconsistency_settings(pg, name, folder),
        ):
            handle = await start_run(
                client,
                task_queue_prefix,
                plan,
                {
                    "good_snapshot": "good",
                    "safety_snapshot": "before-restore",
                    "app_schema_version": "3",
                    "app_health_url": target.url("/health"),
                },
            )
            await until_awaiting(handle, "restore")
            await approve(handle, "restore", "alice", "bob")
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            state = await status(handle)

        assert state.phase is RunPhase.compensated, state.reason
        undone = [c.step for c in state.compensations]
        assert undone == ["unfreeze", "restore", "safety", "freeze"]
        assert all(c.status == "succeeded" for c in state.compensations)
        assert damage(pg, name) == before
        assert sorted(p.name for p in folder.iterdir()) == ["good.dump", "good.manifest.json"]
        assert auto_conf(pg.primary) is None
        assert await asyncio.to_thread(app_can_write, pg.primary, name)
