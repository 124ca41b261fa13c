"""What the database modules cost on top of the psycopg call (or pg_dump run) doing the same.

Each figure runs a module in a real activity context (``ActivityEnvironment``, no Temporal
server: the engine's per-step cost is ``python -m bench``'s business) against a real
PostgreSQL primary with a streaming standby on 127.0.0.1 (tests/support/postgres.py), next to
its raw twin: the same work written directly against psycopg on a held connection, or the
same client program. The difference is Fireline's own work per step: target resolution,
input validation, the ledger that makes a step idempotent by key, logging context, and the
CheckResult or Preview.

    .venv/bin/python -m bench.database [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg
from temporalio.testing import ActivityEnvironment

from activities.database.postgres import (
    ConnectionLimitInput,
    PostgresModules,
    ReadOnlyInput,
    ReplicationInput,
    SessionMatch,
    SessionsInput,
    WritesInput,
)
from activities.database.snapshot import SnapshotInput, SnapshotModules, SnapshotRef
from bench.application import paired, summary
from fireline.runtime.logging import configure_logging
from fireline.runtime.settings import Settings
from tests.support.postgres import BIN_DIR, PASSWORD, PgCluster, _chown


def env() -> ActivityEnvironment:
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(
        ActivityEnvironment.default_info(),
        workflow_id="bench",
        activity_id=f"step-{uuid.uuid4().hex[:12]}",
    )
    return environment


async def measure(repeat: int, cluster: PgCluster, snapshots: Path) -> list[dict[str, Any]]:
    primary = cluster.primary
    db = cluster.create_database("bench")
    primary.execute(
        "CREATE TABLE items AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g",
        db,
    )
    target = primary.target(db, snapshot_dir=str(snapshots))
    settings = Settings(targets={"postgres": {"main": target}})
    mods, snaps = PostgresModules(settings), SnapshotModules(settings)
    raw = await psycopg.AsyncConnection.connect(primary.dsn(db), autocommit=True)
    out = []
    few = max(repeat // 10, 5)

    async def raw_replication() -> None:
        await raw.execute(
            "SELECT application_name, state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)"
            " FROM pg_stat_replication"
        )

    async def raw_writes() -> None:
        conn = await psycopg.AsyncConnection.connect(primary.dsn(db), autocommit=True)
        try:
            async with conn.transaction(force_rollback=True):
                await conn.execute("CREATE TEMPORARY TABLE probe (x int) ON COMMIT DROP")
        finally:
            await conn.close()

    async def module_read_only() -> None:
        done = await env().run(mods.set_read_only, ReadOnlyInput(target="main"))
        await env().run(mods.set_read_write, done.undo)

    async def raw_read_only() -> None:
        for value in ("on", "off"):
            await raw.execute(f"ALTER SYSTEM SET default_transaction_read_only = {value}")
            await raw.execute("SELECT pg_reload_conf()")

    async def module_limit() -> None:
        done = await env().run(
            mods.set_connection_limit, ConnectionLimitInput(target="main", database=db, limit=5)
        )
        await env().run(mods.set_connection_limit, done.undo)

    async def raw_limit() -> None:
        await raw.execute("SELECT datconnlimit FROM pg_database WHERE datname = %s", (db,))
        for value in (5, -1):
            await raw.execute(f'ALTER DATABASE "{db}" CONNECTION LIMIT {value}')

    async def module_snapshot() -> None:
        name = f"s{uuid.uuid4().hex[:8]}"
        done = await env().run(snaps.snapshot, SnapshotInput(target="main", snapshot=name))
        await env().run(snaps.remove_snapshot, done.undo)

    async def raw_snapshot() -> None:
        path = snapshots / f"raw{uuid.uuid4().hex[:8]}.dump"
        proc = await asyncio.create_subprocess_exec(
            str(BIN_DIR / "pg_dump"),
            f"--dbname={primary.dsn(db, password=False)}",
            "--format=custom",
            f"--file={path}",
            env={"PGPASSWORD": PASSWORD, "PATH": os.environ.get("PATH", "")},
        )
        await proc.wait()
        path.unlink()

    async def raw_digest() -> None:
        await raw.execute(
            "SELECT count(*), md5(string_agg(md5(t::text), '' ORDER BY md5(t::text)))"
            " FROM items AS t"
        )

    try:
        status = ReplicationInput(target="main", standby="standby1", max_lag_bytes=0)
        out.append(
            summary(
                "replication_status (check)",
                await paired(
                    lambda: env().run(mods.replication_status, status), raw_replication, repeat
                ),
                "one pg_stat_replication query on a held connection",
            )
        )
        writes = WritesInput(target="main")
        out.append(
            summary(
                "accepts_writes (check, fresh session)",
                await paired(lambda: env().run(mods.accepts_writes, writes), raw_writes, few),
                "connect + CREATE TEMPORARY TABLE in a rolled-back transaction",
            )
        )
        sessions = SessionsInput(target="main", match=SessionMatch(min_duration_s=0))
        out.append(
            summary(
                "sessions (check)",
                await paired(
                    lambda: env().run(mods.sessions, sessions),
                    lambda: raw.execute("SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity"),
                    repeat,
                ),
                "one pg_stat_activity query with pg_blocking_pids",
            )
        )
        out.append(
            summary(
                "set_read_only + its undo",
                await paired(module_read_only, raw_read_only, few),
                "2 x (ALTER SYSTEM SET, pg_reload_conf())",
            )
        )
        out.append(
            summary(
                "set_connection_limit + its undo",
                await paired(module_limit, raw_limit, few),
                "read the limit, 2 x ALTER DATABASE ... CONNECTION LIMIT",
            )
        )
        await env().run(snaps.snapshot, SnapshotInput(target="main", snapshot="ref"))
        out.append(
            summary(
                "integrity (5000 rows)",
                await paired(
                    lambda: env().run(snaps.integrity, SnapshotRef(target="main", snapshot="ref")),
                    raw_digest,
                    few,
                ),
                "the same count + checksum query",
            )
        )
        out.append(
            summary(
                "snapshot + remove (5000 rows)",
                await paired(module_snapshot, raw_snapshot, few),
                "pg_dump -Fc to a file, then unlink",
            )
        )
    finally:
        await mods.aclose()
        await snaps.aclose()
        await raw.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    configure_logging("console", "WARNING")
    root = Path(tempfile.mkdtemp(prefix="fireline-bench-pg-"))
    os.chmod(root, 0o755)
    _chown(root)
    snapshots = Path(tempfile.mkdtemp(prefix="fireline-bench-snap-"))
    cluster = PgCluster(root)
    try:
        rows = asyncio.run(measure(args.repeat, cluster, snapshots))
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(snapshots, ignore_errors=True)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return
    print(f"{'figure':<40} {'module':>9} {'raw':>9} {'overhead':>9} {'ratio':>6}")
    for row in rows:
        print(
            f"{row['figure']:<40} {row['module_p50_us']:>7}us {row['raw_p50_us']:>7}us "
            f"{row['overhead_us']:>7}us {row['ratio']:>6}"
        )


if __name__ == "__main__":
    main()
