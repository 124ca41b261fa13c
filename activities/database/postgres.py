"""PostgreSQL modules: replication, sessions, read-only, promotion and connection limits.

Each module names a target (see :mod:`activities.database.connection`) and reads the state it
is about to change before changing it, so its output says what it found and its compensation
restores exactly that. Checks observe: an unreachable server, a standby missing from
``pg_stat_replication`` or a refused write is a result, not an exception.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator
from temporalio.exceptions import ApplicationError

from activities.core.evidence import problems_result
from activities.core.runtime import idempotency_key, refused, running, unavailable
from activities.database.connection import PostgresClientSet, excerpt
from fireline import errors
from fireline.modules import (
    IRREVERSIBLE,
    CheckRef,
    CheckResult,
    CompensationRef,
    check,
    module,
    preview,
)
from fireline.plan import Change, Preview, Risk

log = structlog.get_logger(__name__)

READ_ONLY_SETTING = "default_transaction_read_only"
QUERY_EXCERPT_CHARS = 200
"""Query text kept per session in outputs (and so in history)."""
MAX_LISTED = 50
"""Sessions or standbys listed in one observation; the count is always exact."""

Target = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_.-]+$")


def _primary(target: str = "${{ input.target }}") -> CheckRef:
    return CheckRef(
        check="database.replication_status", with_={"target": target, "expect_role": "primary"}
    )


# -- replication ------------------------------------------------------------------------------


class ReplicationInput(BaseModel):
    target: str = Target
    expect_role: Literal["primary", "standby"] | None = Field(
        default=None, description="unsatisfied when the server has the other role"
    )
    standby: str | None = Field(
        default=None,
        max_length=63,
        description="on a primary: the standby (application_name) that must be streaming",
    )
    max_lag_bytes: int | None = Field(
        default=None,
        ge=0,
        description="on a primary: replay lag of the standby (of every standby when none is "
        "named); on a standby: WAL received but not yet replayed",
    )


class StandbyRow(BaseModel):
    application_name: str
    client_addr: str | None
    state: str | None
    sync_state: str | None
    replay_lag_bytes: int | None
    replay_lag_s: float | None


class WritesInput(BaseModel):
    target: str = Target
    expected: bool = Field(default=True, description="whether writes should be accepted")


class FencedInput(BaseModel):
    target: str = Target


# -- sessions ---------------------------------------------------------------------------------

SessionState = Literal["active", "idle in transaction", "idle in transaction (aborted)", "idle"]
BUSY_STATES: tuple[SessionState, ...] = (
    "active",
    "idle in transaction",
    "idle in transaction (aborted)",
)


class SessionMatch(BaseModel):
    """Which client sessions count: long in their transaction or query, optionally blockers."""

    model_config = ConfigDict(extra="forbid")

    min_duration_s: float = Field(default=60.0, ge=0)
    blockers_only: bool = Field(
        default=False, description="only sessions that block at least one other session"
    )
    states: list[SessionState] = Field(default_factory=lambda: list(BUSY_STATES), min_length=1)
    users: list[str] | None = Field(default=None, max_length=100)
    exclude_users: list[str] = Field(default_factory=list, max_length=100)
    applications: list[str] | None = Field(default=None, max_length=100)
    pids: list[int] | None = Field(
        default=None, max_length=1000, description="only these backends (as listed before)"
    )


class SessionsInput(BaseModel):
    target: str = Target
    match: SessionMatch = Field(default_factory=SessionMatch)
    at_most: int | None = Field(default=None, ge=0, description="satisfied with at most N")
    at_least: int | None = Field(default=None, ge=0, description="satisfied with at least N")


class SessionInfo(BaseModel):
    pid: int
    backend_start: str
    user: str | None
    application: str | None
    client_addr: str | None
    database: str | None
    state: str | None
    duration_s: float
    query: str
    blocking: list[int]
    blocked_by: list[int]


class TerminateInput(BaseModel):
    target: str = Target
    match: SessionMatch = Field(description="which sessions to end (see database.sessions)")
    max_sessions: int = Field(
        default=10, ge=1, le=1000, description="refuse instead of ending more than this many"
    )


class TerminateOutput(BaseModel):
    target: str
    terminated: list[SessionInfo]
    count: int
    match: SessionMatch
    """The match narrowed to the ended backends, for the postcondition."""
    idempotency_key: str


# -- read-only --------------------------------------------------------------------------------


class ReadOnlySetting(BaseModel):
    """``default_transaction_read_only`` as ``ALTER SYSTEM`` left it: None means not set there."""

    configured: str | None


class ReadOnlyInput(BaseModel):
    target: str = Target
    restore_to: ReadOnlySetting | None = Field(
        default=None, description="write exactly this recorded setting instead (compensation)"
    )


class ReadOnlyOutput(BaseModel):
    target: str
    prior: ReadOnlySetting
    configured: ReadOnlySetting
    changed: bool
    undo: ReadOnlyInput
    idempotency_key: str


# -- promotion --------------------------------------------------------------------------------


class PromoteInput(BaseModel):
    target: str = Field(min_length=1, max_length=63, description="the standby to promote")
    old_primary: str = Field(
        min_length=1, max_length=63, description="must be read-only or unreachable (fenced)"
    )
    max_lag_bytes: int = Field(ge=0, description="WAL received but not replayed, at most")
    wait_seconds: int = Field(default=60, ge=1, le=3600)


class PromoteOutput(BaseModel):
    target: str
    promoted: bool
    """False when the server already was a primary (a retry, or promoted by someone else)."""
    lsn_before: str | None
    lsn_after: str
    idempotency_key: str


# -- connection limits ------------------------------------------------------------------------


class ConnectionLimitInput(BaseModel):
    target: str = Target
    role: str | None = Field(default=None, min_length=1, max_length=63)
    database: str | None = Field(default=None, min_length=1, max_length=63)
    limit: int = Field(ge=-1, le=100_000, description="-1 removes the limit")

    @model_validator(mode="after")
    def _one_scope(self) -> ConnectionLimitInput:
        if (self.role is None) == (self.database is None):
            raise ValueError("name exactly one of role or database")
        return self


class ConnectionLimitOutput(BaseModel):
    target: str
    scope: Literal["role", "database"]
    name: str
    prior_limit: int
    limit: int
    changed: bool
    undo: ConnectionLimitInput
    idempotency_key: str


class ConnectionLimitCheckInput(BaseModel):
    target: str = Target
    scope: Literal["role", "database"]
    name: str = Field(min_length=1, max_length=63)
    expected: int


_SESSIONS_SQL = """
SELECT a.pid, a.backend_start::text, a.usename, a.application_name, a.client_addr::text,
       a.datname, a.state,
       extract(epoch FROM now() - coalesce(a.xact_start, a.query_start, a.backend_start))::float8,
       left(coalesce(a.query, ''), %(excerpt)s),
       coalesce(array(SELECT b.pid FROM pg_stat_activity b
                      WHERE a.pid = ANY(pg_blocking_pids(b.pid))), '{}'),
       pg_blocking_pids(a.pid)
FROM pg_stat_activity a
WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
ORDER BY a.pid
"""


def _matches(s: SessionInfo, match: SessionMatch) -> bool:
    return (
        s.state in match.states
        and s.duration_s >= match.min_duration_s
        and (not match.blockers_only or bool(s.blocking))
        and (match.users is None or s.user in match.users)
        and s.user not in match.exclude_users
        and (match.applications is None or s.application in match.applications)
        and (match.pids is None or s.pid in match.pids)
    )


def _describe(s: SessionInfo) -> str:
    blocking = f", blocking {s.blocking}" if s.blocking else ""
    return f"pid {s.pid} ({s.user}, {s.state}, {s.duration_s:.0f} s{blocking})"


class PostgresModules(PostgresClientSet):
    """Replication, sessions, read-only, promotion and connection limits of named servers."""

    # -- checks -----------------------------------------------------------------------------

    @check("database.replication_status", domain="database", local=False)
    async def replication_status(self, request: ReplicationInput) -> CheckResult:
        """Role, standbys and replication lag of a server, as PostgreSQL reports them."""
        async with running("database.replication_status"):
            try:
                async with self.session(request.target) as conn:
                    standby = await self.in_recovery(conn)
                    if standby:
                        row = await self.one(
                            conn,
                            "SELECT pg_last_wal_receive_lsn()::text,"
                            " pg_last_wal_replay_lsn()::text,"
                            " pg_wal_lsn_diff(pg_last_wal_receive_lsn(),"
                            " pg_last_wal_replay_lsn())::bigint,"
                            " (SELECT status FROM pg_stat_wal_receiver)",
                        )
                        return _judge_standby(request, row)
                    rows = await self.all(
                        conn,
                        "SELECT application_name, client_addr::text, state, sync_state,"
                        " pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,"
                        " extract(epoch FROM replay_lag)::float8,"
                        " pg_current_wal_lsn()::text"
                        " FROM pg_stat_replication ORDER BY application_name, pid",
                    )
                    lsn = (
                        rows[0][6]
                        if rows
                        else (await self.one(conn, "SELECT pg_current_wal_lsn()::text"))[0]
                    )
                    return _judge_primary(request, rows, str(lsn))
            except ApplicationError as err:
                if err.type != errors.TARGET_UNAVAILABLE:
                    raise
                return CheckResult(
                    satisfied=False,
                    observed={"reachable": False, "error": err.message},
                    expected=_expected(request),
                    detail=f"{request.target} is unreachable: {err.message}",
                )

    @check("database.accepts_writes", domain="database", local=False)
    async def accepts_writes(self, request: WritesInput) -> CheckResult:
        """Whether a fresh application session may write (a rolled-back temporary table)."""
        import psycopg

        async with running("database.accepts_writes"):
            observed: dict[str, Any] = {"reachable": True}
            try:
                async with self.app_session(request.target) as conn:
                    row = await self.one(
                        conn, "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')"
                    )
                    observed.update(in_recovery=row[0], read_only=row[1] == "on")
                    try:
                        async with conn.transaction(force_rollback=True):
                            await conn.execute(
                                "CREATE TEMPORARY TABLE fireline_write_probe (x int) ON COMMIT DROP"
                            )
                        observed["accepts_writes"] = True
                    except psycopg.Error as exc:
                        observed.update(accepts_writes=False, error=excerpt(exc))
            except ApplicationError as err:
                if err.type != errors.TARGET_UNAVAILABLE:
                    raise
                observed.update(reachable=False, accepts_writes=False, error=err.message)
            accepts = bool(observed["accepts_writes"])
            satisfied = accepts == request.expected
            seen = "accepts writes" if accepts else f"refuses writes ({observed.get('error')})"
            want = "accept" if request.expected else "refuse"
            return CheckResult(
                satisfied=satisfied,
                observed=observed,
                expected={"accepts_writes": request.expected},
                detail=f"{request.target} {seen}"
                + (", as expected" if satisfied else f"; expected it to {want} writes"),
            )

    @check("database.fenced", domain="database", local=False)
    async def fenced(self, request: FencedInput) -> CheckResult:
        """Whether a (former) primary can no longer take application writes.

        Fenced means unreachable, in recovery, or read-only for new sessions. The read-only
        fence is ``default_transaction_read_only``: a client that explicitly asks for a
        read-write transaction can still write, so it fences applications, not operators.
        """
        result = await self.accepts_writes(WritesInput(target=request.target, expected=False))
        observed = result.observed
        if not observed.get("reachable"):
            how = "unreachable"
        elif observed.get("in_recovery"):
            how = "in recovery"
        elif observed.get("read_only"):
            how = "read-only for new sessions"
        else:
            how = "still accepting writes"
        return CheckResult(
            satisfied=result.satisfied,
            observed=observed,
            expected={"fenced": True},
            detail=f"{request.target} is {how}"
            + ("" if result.satisfied else "; freeze or stop it before promoting a standby"),
        )

    @check("database.sessions", domain="database", local=False)
    async def sessions(self, request: SessionsInput) -> CheckResult:
        """Blocking and long-running client sessions (``pg_blocking_pids``, ``pg_stat_activity``).

        ``at_most``/``at_least`` bound how many match; without them the check only lists.
        """
        async with running("database.sessions"):
            async with self.session(request.target) as conn:
                found = [s for s in await self._sessions(conn) if _matches(s, request.match)]
            n = len(found)
            ok = (request.at_most is None or n <= request.at_most) and (
                request.at_least is None or n >= request.at_least
            )
            bounds = [f"at most {request.at_most}"] if request.at_most is not None else []
            bounds += [f"at least {request.at_least}"] if request.at_least is not None else []
            listed = "; ".join(_describe(s) for s in found[:5]) or "none"
            return CheckResult(
                satisfied=ok,
                observed={
                    "count": n,
                    "sessions": [s.model_dump() for s in found[:MAX_LISTED]],
                },
                expected={"at_most": request.at_most, "at_least": request.at_least},
                detail=f"{n} matching session(s) on {request.target}: {listed}"
                + ("" if ok or not bounds else f"; expected {' and '.join(bounds)}"),
            )

    @check("database.connection_limit", domain="database", local=False)
    async def connection_limit(self, request: ConnectionLimitCheckInput) -> CheckResult:
        """The connection limit of a role or database (-1: none)."""
        async with running("database.connection_limit"):
            async with self.session(request.target) as conn:
                limit = await self._limit(conn, request.scope, request.name)
            ok = limit == request.expected
            return CheckResult(
                satisfied=ok,
                observed={"limit": limit},
                expected={"limit": request.expected},
                detail=f"{request.scope} {request.name} has connection limit {limit}"
                + ("" if ok else f"; expected {request.expected}"),
            )

    # -- sessions: terminate ----------------------------------------------------------------

    @module(
        "database.terminate_sessions",
        domain="database",
        risk=Risk.high,
        mutates=True,
        idempotent=True,
        compensation=IRREVERSIBLE,
        preconditions=[
            CheckRef(
                check="database.sessions",
                with_={
                    "target": "${{ input.target }}",
                    "match": "${{ input.match }}",
                    "at_least": 1,
                },
            )
        ],
        postconditions=[
            CheckRef(
                check="database.sessions",
                with_={
                    "target": "${{ input.target }}",
                    "match": "${{ output.match }}",
                    "at_most": 0,
                },
                deadline_s=30,
                poll_interval_s=1,
            )
        ],
        timeout=timedelta(minutes=2),
    )
    async def terminate_sessions(self, request: TerminateInput) -> TerminateOutput:
        """End the matching sessions (``pg_terminate_backend``); their work is rolled back.

        The backends to end are recorded under the step's key first, so a retry ends those
        (if they still exist) and never a session that started matching since.
        """
        async with running("database.terminate_sessions"):
            key = idempotency_key()
            async with self.session(request.target) as conn:
                recorded = await self.ledger_get(conn, "database.terminate_sessions", key)
                current = {s.pid: s for s in await self._sessions(conn)}
                if recorded is not None:
                    chosen = [SessionInfo.model_validate(s) for s in recorded]
                else:
                    chosen = [s for s in current.values() if _matches(s, request.match)]
                    if len(chosen) > request.max_sessions:
                        raise refused(
                            f"{len(chosen)} sessions match on {request.target}, more than "
                            f"max_sessions {request.max_sessions}: "
                            + "; ".join(_describe(s) for s in chosen[:10]),
                            count=len(chosen),
                        )
                    # Without the query texts: the ledger only has to name the backends.
                    await self.ledger_put(
                        conn,
                        "database.terminate_sessions",
                        key,
                        [s.model_copy(update={"query": ""}).model_dump() for s in chosen],
                    )
                # Only a backend with the same start time is the one chosen: pids are reused.
                alive = [
                    s.pid
                    for s in chosen
                    if s.pid in current and current[s.pid].backend_start == s.backend_start
                ]
                if alive:
                    await conn.execute(
                        "SELECT pg_terminate_backend(pid, 5000) FROM unnest(%s::int[]) AS pid",
                        (alive,),
                    )
            log.info("sessions terminated", target=request.target, pids=alive)
            narrowed = request.match.model_copy(update={"pids": [s.pid for s in chosen]})
            return TerminateOutput(
                target=request.target,
                terminated=chosen,
                count=len(chosen),
                match=narrowed,
                idempotency_key=key,
            )

    @preview("database.terminate_sessions")
    async def preview_terminate_sessions(self, request: TerminateInput) -> Preview:
        async with self.session(request.target) as conn:
            found = [s for s in await self._sessions(conn) if _matches(s, request.match)]
        warnings = []
        if len(found) > request.max_sessions:
            warnings.append(
                f"{len(found)} sessions match, more than max_sessions {request.max_sessions}: "
                "the step will refuse"
            )
        blocked = sorted({p for s in found for p in s.blocking})
        return Preview(
            mutates=bool(found),
            summary=f"end {len(found)} session(s) on {request.target}"
            + (f", unblocking {len(blocked)}" if blocked else ""),
            changes=[
                Change(
                    target=request.target,
                    attribute=f"session {s.pid}",
                    before=f"{s.user}@{s.database} {s.state} {s.duration_s:.0f} s: {s.query}",
                    after="terminated",
                )
                for s in found[:MAX_LISTED]
            ],
            blast_radius={"sessions": len(found), "unblocked_sessions": len(blocked)},
            rollback="irreversible: their open transactions are rolled back and clients must "
            "reconnect",
            warnings=warnings,
        )

    async def _sessions(self, conn: Any) -> list[SessionInfo]:
        rows = await self.all(conn, _SESSIONS_SQL, {"excerpt": QUERY_EXCERPT_CHARS})
        return [
            SessionInfo(
                pid=r[0],
                backend_start=r[1],
                user=r[2],
                application=r[3],
                client_addr=r[4],
                database=r[5],
                state=r[6],
                duration_s=round(float(r[7] or 0), 3),
                query=r[8],
                blocking=list(r[9]),
                blocked_by=list(r[10]),
            )
            for r in rows
        ]

    # -- read-only --------------------------------------------------------------------------

    @module(
        "database.set_read_only",
        domain="database",
        risk=Risk.high,
        mutates=True,
        idempotent=True,
        compensation=CompensationRef(module="database.set_read_write", with_="${{ output.undo }}"),
        preconditions=[_primary()],
        postconditions=[
            CheckRef(
                check="database.accepts_writes",
                with_={"target": "${{ input.target }}", "expected": False},
                deadline_s=30,
                poll_interval_s=0.5,
            )
        ],
    )
    async def set_read_only(self, request: ReadOnlyInput) -> ReadOnlyOutput:
        """Freeze application writes: ``default_transaction_read_only = on`` and reload.

        Sessions see it from their next transaction. The prior ``ALTER SYSTEM`` setting is
        recorded and the compensation (``database.set_read_write``) writes exactly it back.
        """
        async with running("database.set_read_only"):
            return await self._set_read_only(request, "on", "database.set_read_write")

    @module(
        "database.set_read_write",
        domain="database",
        risk=Risk.high,
        mutates=True,
        idempotent=True,
        compensation=CompensationRef(module="database.set_read_only", with_="${{ output.undo }}"),
        preconditions=[_primary()],
        postconditions=[
            CheckRef(
                check="database.accepts_writes",
                with_={"target": "${{ input.target }}", "expected": True},
                deadline_s=30,
                poll_interval_s=0.5,
            )
        ],
    )
    async def set_read_write(self, request: ReadOnlyInput) -> ReadOnlyOutput:
        """Unfreeze writes: ``default_transaction_read_only = off`` and reload; records the
        prior setting so the compensation (``database.set_read_only``) restores exactly it."""
        async with running("database.set_read_write"):
            return await self._set_read_only(request, "off", "database.set_read_only")

    async def _set_read_only(
        self, request: ReadOnlyInput, value: str, opposite: str
    ) -> ReadOnlyOutput:
        module = "database.set_read_write" if value == "off" else "database.set_read_only"
        key = idempotency_key()
        async with self.session(request.target) as conn:
            recorded = await self.ledger_get(conn, module, key)
            if recorded is not None:
                out = ReadOnlyOutput.model_validate(recorded)
            else:
                prior = ReadOnlySetting(configured=await self.auto_conf(conn, READ_ONLY_SETTING))
                wanted = request.restore_to or ReadOnlySetting(configured=value)
                out = ReadOnlyOutput(
                    target=request.target,
                    prior=prior,
                    configured=wanted,
                    changed=prior != wanted,
                    undo=ReadOnlyInput(target=request.target, restore_to=prior),
                    idempotency_key=key,
                )
                await self.ledger_put(conn, module, key, out.model_dump(mode="json"))
            # Applied after recording, and again on a retry: setting a value twice is harmless.
            if await self.auto_conf(conn, READ_ONLY_SETTING) != out.configured.configured:
                await self.alter_system(conn, READ_ONLY_SETTING, out.configured.configured)
                await conn.execute("SELECT pg_reload_conf()")
        log.info(
            "read-only setting written",
            target=request.target,
            prior=out.prior.configured,
            configured=out.configured.configured,
            undo=opposite,
        )
        return out

    @preview("database.set_read_only")
    async def preview_set_read_only(self, request: ReadOnlyInput) -> Preview:
        return await self._preview_read_only(request, "on")

    @preview("database.set_read_write")
    async def preview_set_read_write(self, request: ReadOnlyInput) -> Preview:
        return await self._preview_read_only(request, "off")

    async def _preview_read_only(self, request: ReadOnlyInput, value: str) -> Preview:
        async with self.session(request.target) as conn:
            before = await self.auto_conf(conn, READ_ONLY_SETTING)
            row = await self.one(
                conn,
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND pid <> pg_backend_pid()",
            )
        after = request.restore_to.configured if request.restore_to else value
        verb = "freeze writes on" if after == "on" else "allow writes on"
        return Preview(
            mutates=before != after,
            summary=f"{verb} {request.target} ({READ_ONLY_SETTING}: {before or 'unset'} -> "
            f"{after or 'unset'})",
            changes=[
                Change(
                    target=request.target,
                    attribute=f"ALTER SYSTEM {READ_ONLY_SETTING}",
                    before=before,
                    after=after,
                )
            ],
            blast_radius={"servers": 1, "sessions": int(row[0])},
            rollback=(
                f"ALTER SYSTEM SET {READ_ONLY_SETTING} = {before}"
                if before is not None
                else f"ALTER SYSTEM RESET {READ_ONLY_SETTING}"
            )
            + " and reload (the recorded prior setting)",
        )

    # -- promotion --------------------------------------------------------------------------

    @module(
        "database.promote_standby",
        domain="database",
        risk=Risk.critical,
        mutates=True,
        idempotent=True,
        compensation=IRREVERSIBLE,
        preconditions=[
            CheckRef(
                check="database.replication_status",
                with_={
                    "target": "${{ input.target }}",
                    "expect_role": "standby",
                    "max_lag_bytes": "${{ input.max_lag_bytes }}",
                },
            ),
            CheckRef(check="database.fenced", with_={"target": "${{ input.old_primary }}"}),
        ],
        postconditions=[
            CheckRef(
                check="database.accepts_writes",
                with_={"target": "${{ input.target }}", "expected": True},
                deadline_s=60,
                poll_interval_s=0.5,
            )
        ],
        timeout=timedelta(minutes=70),
        heartbeat=timedelta(seconds=15),
    )
    async def promote_standby(self, request: PromoteInput) -> PromoteOutput:
        """Promote a streaming standby to primary (``pg_promote``), once its old primary is
        fenced. A standby that already is a primary is left alone (a retry changes nothing)."""
        async with running("database.promote_standby"):
            async with self.session(request.target) as conn:
                if not await self.in_recovery(conn):
                    row = await self.one(conn, "SELECT pg_current_wal_lsn()::text")
                    return PromoteOutput(
                        target=request.target,
                        promoted=False,
                        lsn_before=None,
                        lsn_after=row[0],
                        idempotency_key=idempotency_key(),
                    )
                before = (await self.one(conn, "SELECT pg_last_wal_replay_lsn()::text"))[0]
                done = (
                    await self.one(
                        conn,
                        "SELECT pg_promote(true, %s)",
                        (request.wait_seconds,),
                    )
                )[0]
                if not done:
                    raise unavailable(
                        f"{request.target} did not finish promotion within "
                        f"{request.wait_seconds} s; it may still complete",
                        target=request.target,
                    )
                after = (await self.one(conn, "SELECT pg_current_wal_lsn()::text"))[0]
            log.info("standby promoted", target=request.target, lsn_before=before)
            return PromoteOutput(
                target=request.target,
                promoted=True,
                lsn_before=before,
                lsn_after=after,
                idempotency_key=idempotency_key(),
            )

    @preview("database.promote_standby")
    async def preview_promote_standby(self, request: PromoteInput) -> Preview:
        status = await self.replication_status(
            ReplicationInput(
                target=request.target, expect_role="standby", max_lag_bytes=request.max_lag_bytes
            )
        )
        fence = await self.fenced(FencedInput(target=request.old_primary))
        observed = status.observed or {}
        in_recovery = observed.get("role") == "standby"
        warnings = [] if status.satisfied else [status.detail]
        if not fence.satisfied:
            warnings.append(fence.detail)
        return Preview(
            mutates=in_recovery,
            summary=(
                f"promote {request.target} to primary (replay at {observed.get('replay_lsn')}, "
                f"{observed.get('lag_bytes')} bytes behind what it received); old primary "
                f"{request.old_primary}: {fence.detail}"
                if in_recovery
                else f"{request.target} is not a standby ({status.detail}); nothing to promote"
            ),
            changes=[
                Change(
                    target=request.target,
                    attribute="role",
                    before=observed.get("role"),
                    after="primary",
                )
            ],
            blast_radius={"servers": 1},
            rollback="irreversible: the old primary must be rebuilt as a standby of the new one "
            "(pg_rewind or pg_basebackup)",
            warnings=warnings,
        )

    # -- connection limits ------------------------------------------------------------------

    @module(
        "database.set_connection_limit",
        domain="database",
        risk=Risk.medium,
        mutates=True,
        idempotent=True,
        compensation=CompensationRef(
            module="database.set_connection_limit", with_="${{ output.undo }}"
        ),
        preconditions=[_primary()],
        postconditions=[
            CheckRef(
                check="database.connection_limit",
                with_={
                    "target": "${{ input.target }}",
                    "scope": "${{ output.scope }}",
                    "name": "${{ output.name }}",
                    "expected": "${{ output.limit }}",
                },
            )
        ],
    )
    async def set_connection_limit(self, request: ConnectionLimitInput) -> ConnectionLimitOutput:
        """Throttle (or restore) ``CONNECTION LIMIT`` of a role or database; records the prior
        limit, which the compensation sets back. Existing sessions are not ended."""
        from psycopg import sql

        async with running("database.set_connection_limit"):
            scope: Literal["role", "database"] = "role" if request.role else "database"
            name = request.role or request.database or ""
            key = idempotency_key()
            async with self.session(request.target) as conn:
                recorded = await self.ledger_get(conn, "database.set_connection_limit", key)
                if recorded is not None:
                    out = ConnectionLimitOutput.model_validate(recorded)
                else:
                    prior = await self._limit(conn, scope, name)
                    undo = request.model_copy(update={"limit": prior})
                    out = ConnectionLimitOutput(
                        target=request.target,
                        scope=scope,
                        name=name,
                        prior_limit=prior,
                        limit=request.limit,
                        changed=prior != request.limit,
                        undo=undo,
                        idempotency_key=key,
                    )
                    await self.ledger_put(
                        conn, "database.set_connection_limit", key, out.model_dump(mode="json")
                    )
                if await self._limit(conn, scope, name) != out.limit:
                    await conn.execute(
                        sql.SQL("ALTER {} {} CONNECTION LIMIT {}").format(
                            sql.SQL(scope.upper()), sql.Identifier(name), sql.Literal(out.limit)
                        )
                    )
            log.info(
                "connection limit set",
                target=request.target,
                scope=scope,
                name=name,
                prior=out.prior_limit,
                limit=out.limit,
            )
            return out

    @preview("database.set_connection_limit")
    async def preview_set_connection_limit(self, request: ConnectionLimitInput) -> Preview:
        scope: Literal["role", "database"] = "role" if request.role else "database"
        name = request.role or request.database or ""
        column = "usename" if scope == "role" else "datname"
        async with self.session(request.target) as conn:
            before = await self._limit(conn, scope, name)
            row = await self.one(
                conn,
                f"SELECT count(*) FROM pg_stat_activity WHERE {column} = %s"
                " AND backend_type = 'client backend'",
                (name,),
            )
        sessions = int(row[0])
        warnings = []
        if 0 <= request.limit < sessions:
            warnings.append(
                f"{sessions} sessions are open, more than the new limit {request.limit}: they "
                "stay, new ones are refused until fewer remain"
            )
        return Preview(
            mutates=before != request.limit,
            summary=f"{scope} {name} on {request.target}: connection limit {before} -> "
            f"{request.limit}",
            changes=[
                Change(
                    target=request.target,
                    attribute=f"{scope} {name} CONNECTION LIMIT",
                    before=before,
                    after=request.limit,
                )
            ],
            blast_radius={"sessions": sessions},
            rollback=f"ALTER {scope.upper()} {name} CONNECTION LIMIT {before} (recorded)",
            warnings=warnings,
        )

    async def _limit(self, conn: Any, scope: str, name: str) -> int:
        query = (
            "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s"
            if scope == "role"
            else "SELECT datconnlimit FROM pg_database WHERE datname = %s"
        )
        row = await self.one(conn, query, (name,))
        if row is None:
            raise refused(f"{scope} {name!r} does not exist", scope=scope, name=name)
        return int(row[0])


def _expected(request: ReplicationInput) -> dict[str, Any]:
    return {
        k: v
        for k, v in {
            "role": request.expect_role,
            "standby": request.standby,
            "max_lag_bytes": request.max_lag_bytes,
        }.items()
        if v is not None
    }


def _judge_standby(request: ReplicationInput, row: Any) -> CheckResult:
    receive, replay, lag, receiver = row
    observed = {
        "reachable": True,
        "role": "standby",
        "receive_lsn": receive,
        "replay_lsn": replay,
        "lag_bytes": lag,
        "wal_receiver": receiver,
    }
    problems = []
    if request.expect_role == "primary":
        problems.append("it is a standby (in recovery), not a primary")
    if request.standby is not None:
        problems.append(f"standby {request.standby!r} can only be observed on a primary")
    # Not streaming is no problem in itself: with its primary gone a standby's WAL receiver
    # stops, and that is exactly when a promotion is wanted. The lag bound is what decides.
    if request.max_lag_bytes is not None and (lag is None or lag > request.max_lag_bytes):
        problems.append(f"{lag} bytes received but not replayed, more than {request.max_lag_bytes}")
    detail = (
        f"{request.target} is a standby, replay at {replay}, {lag} bytes behind receive "
        f"(receiver {receiver or 'stopped'})"
    )
    return problems_result(detail, problems, observed=observed, expected=_expected(request))


def _judge_primary(request: ReplicationInput, rows: list[Any], lsn: str) -> CheckResult:
    standbys = [
        StandbyRow(
            application_name=r[0],
            client_addr=r[1],
            state=r[2],
            sync_state=r[3],
            replay_lag_bytes=r[4],
            replay_lag_s=r[5],
        )
        for r in rows
    ]
    observed: dict[str, Any] = {
        "reachable": True,
        "role": "primary",
        "current_lsn": lsn,
        "standbys": [s.model_dump() for s in standbys[:MAX_LISTED]],
    }
    problems = []
    if request.expect_role == "standby":
        problems.append("it is a primary, not a standby")
    watched = standbys
    if request.standby is not None:
        watched = [s for s in standbys if s.application_name == request.standby]
        if not watched:
            names = ", ".join(s.application_name for s in standbys) or "none"
            problems.append(f"standby {request.standby!r} is not connected (connected: {names})")
        for s in watched:
            if s.state != "streaming":
                problems.append(f"standby {s.application_name!r} is {s.state}, not streaming")
    if request.max_lag_bytes is not None:
        for s in watched:
            lag = s.replay_lag_bytes
            if lag is None or lag > request.max_lag_bytes:
                problems.append(
                    f"standby {s.application_name!r} replay is {lag} bytes behind, more than "
                    f"{request.max_lag_bytes}"
                )
    summary = ", ".join(
        f"{s.application_name} {s.state} {s.replay_lag_bytes} bytes behind" for s in standbys[:5]
    )
    detail = f"{request.target} is a primary at {lsn}; standbys: {summary or 'none'}"
    return problems_result(detail, problems, observed=observed, expected=_expected(request))


__all__ = [
    "ConnectionLimitInput",
    "ConnectionLimitOutput",
    "PostgresModules",
    "PromoteInput",
    "PromoteOutput",
    "ReadOnlyInput",
    "ReadOnlyOutput",
    "ReplicationInput",
    "SessionMatch",
    "SessionsInput",
    "TerminateInput",
    "TerminateOutput",
]
