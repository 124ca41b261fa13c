"""The PostgreSQL modules against a real primary and streaming standby (tests/support/postgres.py).

Each module runs in ``ActivityEnvironment`` (a real activity context, no Temporal server) and
acts on real servers; assertions read the servers' own state (``pg_file_settings``,
``pg_roles``, ``pg_stat_activity``, ``pg_is_in_recovery()``), not what a module returned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from activities.database.postgres import (
    ConnectionLimitInput,
    PostgresModules,
    PromoteInput,
    ReadOnlyInput,
    ReplicationInput,
    SessionMatch,
    SessionsInput,
    TerminateInput,
)
from fireline import errors
from fireline.compile.compiler import PlaybookLibrary
from fireline.modules import IRREVERSIBLE, CheckResult
from fireline.plan import Risk
from fireline.runtime.settings import Settings
from tests.support.postgres import (  # noqa: F401  (fixtures)
    PASSWORD,
    REGISTRY,
    PgCluster,
    PgServer,
    app_can_write,
    auto_conf,
    conditions,
    eventually,
    free_port,
    pg_cluster_fixture,
    pg_fixture,
    raises,
    run,
)
from tests.support.workers import CATALOG


def targets(cluster: PgCluster, **extra: PgServer) -> dict[str, Any]:
    servers = {"primary": cluster.primary, "standby": cluster.standby, **extra}
    out = {name: server.target() for name, server in servers.items()}
    out["down"] = {**cluster.primary.target(), "port": free_port(), "connect_timeout_s": 1}
    return {"postgres": out}


@pytest.fixture
async def modules(pg: PgCluster) -> AsyncIterator[PostgresModules]:
    mods = PostgresModules(Settings(targets=targets(pg)))
    try:
        yield mods
    finally:
        await mods.aclose()


class TestRegistry:
    def test_every_mutating_module_has_a_preview_and_an_undo_or_irreversible(self) -> None:
        """Each database module that changes something previews it and says how it is undone."""
        specs = [s for s in REGISTRY.values() if s.domain == "database"]
        mutating = {s.name for s in specs if s.mutates}
        assert mutating == {
            "database.set_read_only",
            "database.set_read_write",
            "database.terminate_sessions",
            "database.promote_standby",
            "database.set_connection_limit",
            "database.snapshot",
            "database.remove_snapshot",
            "database.restore",
        }
        for spec in specs:
            if spec.mutates:
                assert spec.preview is not None, spec.name
                assert spec.compensation is not None, spec.name
                assert spec.postconditions, spec.name
            if spec.kind == "check":
                assert not spec.local, f"{spec.name} needs credentials: not a local check"

    def test_promotion_is_critical_and_irreversible(self) -> None:
        """Promotion is critical, irreversible, and checks lag and the fence before it runs."""
        spec = REGISTRY["database.promote_standby"]
        assert (spec.risk, spec.compensation) == (Risk.critical, IRREVERSIBLE)
        assert [c.check for c in spec.preconditions] == [
            "database.replication_status",
            "database.fenced",
        ]

    def test_read_only_and_read_write_undo_each_other(self) -> None:
        """set_read_only is compensated by set_read_write and the reverse, from recorded state."""
        ro, rw = REGISTRY["database.set_read_only"], REGISTRY["database.set_read_write"]
        assert ro.compensation is not None
        assert rw.compensation is not None
        assert ro.compensation.module == "database.set_read_write"  # type: ignore[union-attr]
        assert rw.compensation.module == "database.set_read_only"  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        ("module", "with_"),
        [
            ("database.terminate_sessions", {"target": "main", "match": {}}),
            (
                "database.promote_standby",
                {"target": "standby", "old_primary": "main", "max_lag_bytes": 0},
            ),
        ],
    )
    def test_irreversible_steps_compile_only_behind_a_gate(
        self, tmp_path: Path, module: str, with_: dict[str, Any]
    ) -> None:
        """Ending sessions or promoting without ``approval:`` is refused at compile time."""
        step = {"id": "act", "uses": module, "with": with_}
        plans = {
            "bare.yaml": {"name": "bare", "steps": [step]},
            "gated.yaml": {
                "name": "gated",
                "steps": [{**step, "approval": {"role": "sre-oncall", "min_approvals": 2}}],
            },
        }
        (tmp_path / "catalog.yaml").write_text(CATALOG.model_dump_json())
        for name, body in plans.items():
            (tmp_path / name).write_text(json.dumps(body))
        report = PlaybookLibrary.load(tmp_path, registry=REGISTRY).validate_all()
        problems = {Path(f).name: [str(p) for p in ps] for f, ps in report.items()}
        assert problems["gated.yaml"] == []
        [problem] = problems["bare.yaml"]
        assert f"{module} is irreversible" in problem
        assert "needs an approval gate" in problem

    def test_oversized_inputs_are_refused_by_the_models(self) -> None:
        """Lists and names a step could blow up are bounded before anything runs."""
        with pytest.raises(ValidationError):
            SessionMatch(pids=list(range(1001)))
        with pytest.raises(ValidationError):
            TerminateInput(target="main", match=SessionMatch(), max_sessions=1001)
        with pytest.raises(ValidationError):
            ReplicationInput(target="x" * 64)
        with pytest.raises(ValidationError):
            ReplicationInput(target="main; DROP")

    def test_loading_the_registry_does_not_import_psycopg(self) -> None:
        """Compiling playbooks (registry of every domain) never imports the driver."""
        code = (
            "import sys; from fireline.modules import load_registry; "
            "load_registry(['core', 'database']); "
            "assert 'psycopg' not in sys.modules, 'psycopg imported'"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


class TestTargets:
    async def test_unknown_target_is_invalid_input_naming_the_known_ones(
        self, modules: PostgresModules
    ) -> None:
        """A step naming an unconfigured target fails at once, listing what is configured."""
        err = await raises(run(modules.replication_status, ReplicationInput(target="nope")))
        assert err.type == errors.INVALID_INPUT
        assert err.non_retryable
        assert "unknown postgres target 'nope'" in err.message
        assert "primary" in err.message

    async def test_misconfigured_target_names_fields_never_values(self) -> None:
        """A bad target setting is reported by field; its password never reaches the message."""
        mods = PostgresModules(
            Settings(targets={"postgres": {"x": {"password": "hunter2", "port": "many"}}})
        )
        err = await raises(run(mods.replication_status, ReplicationInput(target="x")))
        assert "port" in err.message
        assert "hunter2" not in err.message

    async def test_wrong_password_is_unavailable_without_the_password(self, pg: PgCluster) -> None:
        """Authentication failures are reported, and the secret is not in the report."""
        wrong = {**pg.primary.target(), "password": "not-the-password"}
        mods = PostgresModules(Settings(targets={"postgres": {"bad": wrong}}))
        err = await raises(run(mods.set_read_only, ReadOnlyInput(target="bad")))
        assert "password authentication failed" in err.message
        assert "not-the-password" not in err.message
        assert PASSWORD not in err.message


class TestReplication:
    async def test_primary_sees_its_streaming_standby(self, modules: PostgresModules) -> None:
        """On the primary: standby1 streams, replay lag within bound."""
        pg_result = await run(
            modules.replication_status,
            ReplicationInput(
                target="primary", expect_role="primary", standby="standby1", max_lag_bytes=1 << 20
            ),
        )
        assert pg_result.satisfied, pg_result.detail
        [row] = [s for s in pg_result.observed["standbys"] if s["application_name"] == "standby1"]
        assert row["state"] == "streaming"
        assert row["replay_lag_bytes"] <= 1 << 20

    async def test_missing_standby_is_an_observation(self, modules: PostgresModules) -> None:
        """A standby that is not connected makes the check unsatisfied, with who is connected."""
        result = await run(
            modules.replication_status, ReplicationInput(target="primary", standby="ghost")
        )
        assert not result.satisfied
        assert "standby 'ghost' is not connected (connected: standby1" in result.detail

    async def test_standby_reports_its_own_lag_and_role(self, modules: PostgresModules) -> None:
        """On the standby: in recovery, receiver streaming; expecting a primary is refused."""
        ok = await run(
            modules.replication_status,
            ReplicationInput(target="standby", expect_role="standby", max_lag_bytes=1 << 20),
        )
        assert ok.satisfied, ok.detail
        assert ok.observed["role"] == "standby"
        assert ok.observed["wal_receiver"] == "streaming"
        wrong = await run(
            modules.replication_status, ReplicationInput(target="standby", expect_role="primary")
        )
        assert not wrong.satisfied
        assert "it is a standby (in recovery), not a primary" in wrong.detail

    async def test_unreachable_server_is_an_observation(self, modules: PostgresModules) -> None:
        """Nothing listening: unsatisfied with the connection error, no exception."""
        result = await run(modules.replication_status, ReplicationInput(target="down"))
        assert not result.satisfied
        assert result.observed["reachable"] is False
        assert "down is unreachable" in result.detail


class TestReadOnly:
    async def test_freeze_then_undo_restores_the_unset_setting(
        self, pg: PgCluster, modules: PostgresModules
    ) -> None:
        """Read-only stops application writes; the undo RESETs (the setting was not there)."""
        spec = REGISTRY["database.set_read_only"]
        inp = ReadOnlyInput(target="primary")
        assert all(r.satisfied for r in await conditions(modules, spec, "pre", inp))
        preview = await run(modules.preview_set_read_only, inp)
        assert preview.rollback.startswith("ALTER SYSTEM RESET default_transaction_read_only")
        out = await run(modules.set_read_only, inp)
        assert auto_conf(pg.primary) == "on"
        assert await eventually(lambda: asyncio.to_thread(lambda: not app_can_write(pg.primary)))
        [post] = await conditions(modules, spec, "post", inp, out)
        assert post.satisfied, post.detail
        assert "refuses writes" in post.detail
        [change] = preview.changes
        assert (change.before, change.after) == (out.prior.configured, out.configured.configured)
        assert (change.before, change.after) == (None, "on")

        undo = REGISTRY[spec.compensation.module]  # type: ignore[union-attr]
        await run(getattr(modules, undo.fn.__name__), out.undo, key="wf-1/undo:step-a")
        assert auto_conf(pg.primary) is None
        assert await eventually(lambda: asyncio.to_thread(app_can_write, pg.primary))

    async def test_undo_restores_an_explicit_prior_value_exactly(
        self, pg: PgCluster, modules: PostgresModules
    ) -> None:
        """A prior ``ALTER SYSTEM ... = off`` comes back as 'off', not as a RESET."""
        pg.primary.execute("ALTER SYSTEM SET default_transaction_read_only = off")
        preview = await run(modules.preview_set_read_only, ReadOnlyInput(target="primary"))
        assert preview.rollback.startswith("ALTER SYSTEM SET default_transaction_read_only = off")
        out = await run(modules.set_read_only, ReadOnlyInput(target="primary"))
        assert out.prior.configured == "off"
        await run(modules.set_read_write, out.undo, key="wf-1/undo")
        assert auto_conf(pg.primary) == "off"

    async def test_same_key_twice_keeps_the_first_prior(
        self, pg: PgCluster, modules: PostgresModules
    ) -> None:
        """A retry reports the state the first attempt found; another key sees the new state."""
        first = await run(modules.set_read_only, ReadOnlyInput(target="primary"), key="wf-9/s")
        again = await run(modules.set_read_only, ReadOnlyInput(target="primary"), key="wf-9/s")
        assert again == first
        assert again.prior.configured is None
        assert auto_conf(pg.primary) == "on"
        other = await run(modules.set_read_only, ReadOnlyInput(target="primary"), key="wf-9/t")
        assert other.prior.configured == "on"
        assert not other.changed

    async def test_the_ledger_stays_bounded(self, pg: PgCluster, modules: PostgresModules) -> None:
        """Forty steps later the ledger holds the latest 32 entries, one line of auto.conf."""
        for n in range(40):
            await run(modules.set_read_only, ReadOnlyInput(target="primary"), key=f"wf-l/s{n}")
        entries = json.loads(auto_conf(pg.primary, "fireline.ledger") or "[]")
        assert len(entries) == 32
        assert all(set(e) == {"k", "v"} for e in entries)

    async def test_read_write_undoes_to_read_only(
        self, pg: PgCluster, modules: PostgresModules
    ) -> None:
        """Unfreezing records 'on' and its undo freezes again."""
        pg.primary.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        pg.primary.execute("SELECT pg_reload_conf()")
        spec = REGISTRY["database.set_read_write"]
        inp = ReadOnlyInput(target="primary")
        out = await run(modules.set_read_write, inp)
        assert (out.prior.configured, auto_conf(pg.primary)) == ("on", "off")
        [post] = await eventually(lambda: _satisfied(conditions(modules, spec, "post", inp, out)))
        assert post.satisfied
        await run(modules.set_read_only, out.undo, key="wf-1/undo")
        assert auto_conf(pg.primary) == "on"

    async def test_precondition_refuses_a_standby(self, modules: PostgresModules) -> None:
        """Freezing a standby is refused before it runs, saying it is a standby."""
        spec = REGISTRY["database.set_read_only"]
        [pre] = await conditions(modules, spec, "pre", ReadOnlyInput(target="standby"))
        assert not pre.satisfied
        assert "is a standby" in pre.detail


async def _satisfied(results: Any) -> list[CheckResult] | None:
    found = await results
    return found if all(r.satisfied for r in found) else None


@dataclasses.dataclass
class Blocker:
    """A session holding a lock open in a transaction, and one waiting behind it."""

    pid: int
    waiter_pid: int
    conn: psycopg.Connection[Any]
    waiter: threading.Thread


@pytest.fixture
def blocker(pg: PgCluster) -> Iterator[Callable[[], Blocker]]:
    made: list[Blocker] = []
    pg.primary.execute("CREATE TABLE IF NOT EXISTS locked (x int)")

    def make() -> Blocker:
        conn = psycopg.connect(pg.primary.dsn(), application_name="blocker")
        conn.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        pid = conn.info.backend_pid
        waiter_pid: list[int] = []

        def wait() -> None:
            with psycopg.connect(pg.primary.dsn(), application_name="waiter") as other:
                waiter_pid.append(other.info.backend_pid)
                other.execute("SELECT count(*) FROM locked")

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            blocked = pg.primary.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                params=(pid,),
            )
            if blocked:
                break
            time.sleep(0.02)
        item = Blocker(pid, waiter_pid[0], conn, thread)
        made.append(item)
        return item

    try:
        yield make
    finally:
        for item in made:
            item.conn.close()
            item.waiter.join(5)


def alive(server: PgServer, pid: int) -> bool:
    return bool(
        server.scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", params=(pid,))
    )


BLOCKERS = SessionMatch(min_duration_s=0, blockers_only=True, applications=["blocker"])


class TestSessions:
    async def test_check_lists_the_blocker_and_whom_it_blocks(
        self, modules: PostgresModules, blocker: Callable[[], Blocker]
    ) -> None:
        """pg_blocking_pids: the lock holder is listed with the waiter it blocks."""
        held = blocker()
        result = await run(
            modules.sessions, SessionsInput(target="primary", match=BLOCKERS, at_most=0)
        )
        assert not result.satisfied
        [session] = result.observed["sessions"]
        assert (session["pid"], session["blocking"]) == (held.pid, [held.waiter_pid])
        assert session["state"] == "idle in transaction"
        assert "1 matching session(s)" in result.detail
        assert "expected at most 0" in result.detail

    async def test_terminate_ends_what_the_preview_listed(
        self, pg: PgCluster, modules: PostgresModules, blocker: Callable[[], Blocker]
    ) -> None:
        """The preview names the blocker; terminating ends exactly it and frees the waiter."""
        held = blocker()
        spec = REGISTRY["database.terminate_sessions"]
        inp = TerminateInput(target="primary", match=BLOCKERS)
        [pre] = await conditions(modules, spec, "pre", inp)
        assert pre.satisfied, pre.detail
        preview = await run(modules.preview_terminate_sessions, inp)
        assert [c.attribute for c in preview.changes] == [f"session {held.pid}"]
        assert preview.blast_radius == {"sessions": 1, "unblocked_sessions": 1}
        out = await run(modules.terminate_sessions, inp)
        assert [s.pid for s in out.terminated] == [held.pid]
        assert not alive(pg.primary, held.pid)
        held.waiter.join(5)
        assert not held.waiter.is_alive(), "the waiting query was not released"
        [post] = await conditions(modules, spec, "post", inp, out)
        assert post.satisfied, post.detail

    async def test_same_key_twice_ends_no_new_session(
        self, pg: PgCluster, modules: PostgresModules, blocker: Callable[[], Blocker]
    ) -> None:
        """A retry of the step never ends a session that started matching since."""
        first = blocker()
        inp = TerminateInput(target="primary", match=BLOCKERS)
        out = await run(modules.terminate_sessions, inp, key="wf-2/kill")
        first.waiter.join(5)
        second = blocker()
        again = await run(modules.terminate_sessions, inp, key="wf-2/kill")
        assert [s.pid for s in again.terminated] == [s.pid for s in out.terminated] == [first.pid]
        assert alive(pg.primary, second.pid)

    async def test_more_sessions_than_allowed_are_refused(
        self, pg: PgCluster, modules: PostgresModules, blocker: Callable[[], Blocker]
    ) -> None:
        """Past max_sessions nothing is ended, and the refusal lists what matched."""
        held = blocker()
        idle = psycopg.connect(pg.primary.dsn(), application_name="blocker")
        try:
            idle.execute("SELECT 1")  # idle in transaction, holding nothing
            match = SessionMatch(min_duration_s=0, applications=["blocker"])
            err = await raises(
                run(
                    modules.terminate_sessions,
                    TerminateInput(target="primary", match=match, max_sessions=1),
                )
            )
            assert err.type == errors.TARGET_REFUSED
            assert "2 sessions match on primary, more than max_sessions 1" in err.message
            assert f"pid {held.pid}" in err.message
            assert alive(pg.primary, held.pid)
            assert alive(pg.primary, idle.info.backend_pid)
        finally:
            idle.close()

    async def test_precondition_with_nothing_to_end(self, modules: PostgresModules) -> None:
        """No matching session: the precondition refuses, saying it saw none."""
        spec = REGISTRY["database.terminate_sessions"]
        [pre] = await conditions(
            modules, spec, "pre", TerminateInput(target="primary", match=BLOCKERS)
        )
        assert not pre.satisfied
        assert "0 matching session(s) on primary: none; expected at least 1" in pre.detail


class TestPromotion:
    async def test_fence_refuses_while_the_old_primary_takes_writes(
        self, modules: PostgresModules
    ) -> None:
        """The promotion precondition sees a writable old primary and says so."""
        spec = REGISTRY["database.promote_standby"]
        inp = PromoteInput(target="standby", old_primary="primary", max_lag_bytes=1 << 20)
        lag, fence = await conditions(modules, spec, "pre", inp)
        assert lag.satisfied, lag.detail
        assert not fence.satisfied
        assert "primary is still accepting writes" in fence.detail

    async def test_fenced_promotion(self, pg: PgCluster) -> None:
        """Frozen old primary, fresh standby: promoted, writable; a retry changes nothing."""
        fresh = pg.make_standby(f"promote{free_port()}")
        mods = PostgresModules(Settings(targets=targets(pg, fresh=fresh)))
        try:
            await run(mods.set_read_only, ReadOnlyInput(target="primary"))
            spec = REGISTRY["database.promote_standby"]
            inp = PromoteInput(target="fresh", old_primary="primary", max_lag_bytes=1 << 20)
            pre = await eventually(lambda: _satisfied(conditions(mods, spec, "pre", inp)))
            assert pre, "preconditions never held"
            assert "read-only for new sessions" in pre[1].detail
            preview = await run(mods.preview_promote_standby, inp)
            assert preview.mutates
            assert preview.warnings == []
            assert (preview.changes[0].before, preview.changes[0].after) == ("standby", "primary")

            out = await run(mods.promote_standby, inp, key="wf-3/promote")
            assert out.promoted
            assert fresh.scalar("SELECT pg_is_in_recovery()") is False
            [post] = await eventually(lambda: _satisfied(conditions(mods, spec, "post", inp, out)))
            assert post.satisfied

            again = await run(mods.promote_standby, inp, key="wf-3/promote")
            assert not again.promoted
            [lag, _] = await conditions(mods, spec, "pre", inp)
            assert not lag.satisfied
            assert "it is a primary, not a standby" in lag.detail
        finally:
            await mods.aclose()
            fresh.stop()

    async def test_a_standby_whose_primary_is_gone_can_be_promoted(self, pg: PgCluster) -> None:
        """Its WAL receiver no longer streams, the old primary is unreachable (fenced): the
        preconditions hold on the lag alone, and the promotion goes through."""
        fresh = pg.make_standby(f"orphan{free_port()}")
        mods = PostgresModules(Settings(targets=targets(pg, fresh=fresh)))
        try:
            fresh.execute(
                f"ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={free_port()}'"
            )
            fresh.execute("SELECT pg_reload_conf()")

            async def orphaned() -> bool:
                return fresh.scalar("SELECT count(*) FROM pg_stat_wal_receiver") == 0

            assert await eventually(orphaned), "the WAL receiver kept streaming"
            spec = REGISTRY["database.promote_standby"]
            inp = PromoteInput(target="fresh", old_primary="down", max_lag_bytes=0)
            lag, fence = await conditions(mods, spec, "pre", inp)
            assert lag.satisfied, lag.detail
            assert "receiver stopped" in lag.detail
            assert fence.satisfied
            assert "down is unreachable" in fence.detail
            out = await run(mods.promote_standby, inp)
            assert out.promoted
            assert fresh.scalar("SELECT pg_is_in_recovery()") is False
        finally:
            await mods.aclose()
            fresh.stop()

    async def test_lag_beyond_the_bound_refuses_with_the_bytes(self, pg: PgCluster) -> None:
        """Replay paused on a standby while the primary writes: both sides report the lag."""
        fresh = pg.make_standby(f"lagging{free_port()}")
        mods = PostgresModules(Settings(targets=targets(pg, fresh=fresh)))
        try:
            fresh.execute("SELECT pg_wal_replay_pause()")
            pg.primary.execute(
                "CREATE TABLE IF NOT EXISTS lag_filler AS SELECT g FROM generate_series(1, 20000) g"
            )
            pg.primary.execute("DROP TABLE lag_filler")

            async def standby_lags() -> CheckResult | None:
                result = await run(
                    mods.replication_status,
                    ReplicationInput(target="fresh", expect_role="standby", max_lag_bytes=0),
                )
                return None if result.satisfied else result

            seen = await eventually(standby_lags)
            assert seen is not None, "replay never fell behind"
            assert seen.observed["lag_bytes"] > 0
            assert f"{seen.observed['lag_bytes']} bytes received but not replayed" in seen.detail
            spec = REGISTRY["database.promote_standby"]
            inp = PromoteInput(target="fresh", old_primary="down", max_lag_bytes=0)
            lag, fence = await conditions(mods, spec, "pre", inp)
            assert not lag.satisfied
            assert "more than 0" in lag.detail
            assert fence.satisfied, "an unreachable old primary counts as fenced"
            on_primary = await run(
                mods.replication_status,
                ReplicationInput(target="primary", standby=fresh.name, max_lag_bytes=0),
            )
            assert not on_primary.satisfied
            assert f"standby '{fresh.name}' replay is" in on_primary.detail
        finally:
            await mods.aclose()
            fresh.stop()


class TestConnectionLimit:
    @pytest.fixture
    def role(self, pg: PgCluster) -> Iterator[str]:
        name = f"app_{free_port()}"
        pg.primary.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'app-pw'")
        try:
            yield name
        finally:
            pg.primary.execute(f"DROP ROLE IF EXISTS {name}")

    async def test_throttle_blocks_new_sessions_and_undo_restores(
        self, pg: PgCluster, modules: PostgresModules, role: str
    ) -> None:
        """Limit 0 refuses the role's new sessions; the undo sets the recorded -1 back."""
        spec = REGISTRY["database.set_connection_limit"]
        inp = ConnectionLimitInput(target="primary", role=role, limit=0)
        preview = await run(modules.preview_set_connection_limit, inp)
        out = await run(modules.set_connection_limit, inp)
        assert (preview.changes[0].before, preview.changes[0].after) == (out.prior_limit, 0)
        assert (
            pg.primary.scalar(
                "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", params=(role,)
            )
            == 0
        )
        dsn = f"host=127.0.0.1 port={pg.primary.port} user={role} password=app-pw dbname=postgres"
        with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
            psycopg.connect(dsn, connect_timeout=3).close()
        [post] = await conditions(modules, spec, "post", inp, out)
        assert post.satisfied, post.detail

        await run(modules.set_connection_limit, out.undo, key="wf-1/undo")
        assert (
            pg.primary.scalar(
                "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", params=(role,)
            )
            == -1
        )
        psycopg.connect(dsn, connect_timeout=3).close()

    async def test_database_limit_and_same_key_twice(
        self, pg: PgCluster, modules: PostgresModules
    ) -> None:
        """A database's limit 7 is recorded once; a retry reports 7, not the new 2."""
        db = pg.create_database()
        pg.primary.execute(f'ALTER DATABASE "{db}" CONNECTION LIMIT 7')
        inp = ConnectionLimitInput(target="primary", database=db, limit=2)
        first = await run(modules.set_connection_limit, inp, key="wf-4/limit")
        again = await run(modules.set_connection_limit, inp, key="wf-4/limit")
        assert first.prior_limit == again.prior_limit == 7
        await run(modules.set_connection_limit, again.undo, key="wf-4/undo")
        assert (
            pg.primary.scalar(
                "SELECT datconnlimit FROM pg_database WHERE datname = %s", params=(db,)
            )
            == 7
        )

    async def test_unknown_role_is_refused_and_scope_must_be_one(
        self, modules: PostgresModules
    ) -> None:
        """A role that does not exist is named in the refusal; role and database together fail."""
        err = await raises(
            run(
                modules.set_connection_limit,
                ConnectionLimitInput(target="primary", role="nobody_here", limit=1),
            )
        )
        assert "role 'nobody_here' does not exist" in err.message
        with pytest.raises(ValidationError, match="exactly one of role or database"):
            ConnectionLimitInput(target="primary", role="a", database="b", limit=1)

    async def test_hostile_role_name_is_an_identifier(
        self, pg: PgCluster, modules: PostgresModules
    ) -> None:
        """A role name carrying SQL is quoted as a name, never executed."""
        name = 'x"; DROP ROLE postgres; --'
        err = await raises(
            run(
                modules.set_connection_limit,
                ConnectionLimitInput(target="primary", role=name, limit=1),
            )
        )
        assert "does not exist" in err.message
        assert pg.primary.scalar("SELECT count(*) FROM pg_roles WHERE rolname = 'postgres'") == 1
