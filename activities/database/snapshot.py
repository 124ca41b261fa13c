"""Snapshots of a PostgreSQL database: ``pg_dump -Fc`` with a manifest, restore, integrity.

A snapshot is two files in the target's ``snapshot_dir``: ``NAME.dump`` (custom format) and
``NAME.manifest.json`` (row count and checksum per table, the schema version, the dump's
SHA-256). Both are taken inside one exported transaction snapshot (``pg_export_snapshot`` +
``pg_dump --snapshot``), so the manifest describes exactly the data in the dump. Names are
plain file names resolved inside ``snapshot_dir``; a step can never point at another path.

``pg_dump``/``pg_restore`` run as child processes with the password in ``PGPASSWORD``, never on
the command line, and are killed if the step is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, Field, ValidationError, field_validator

from activities.core.runtime import idempotency_key, invalid_input, refused, running, unavailable
from activities.database.connection import (
    DEFAULT_BIN_DIRS,
    ERROR_EXCERPT_CHARS,
    PostgresClientSet,
    PostgresTarget,
)
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

SCHEMA_COMPATIBLE = "app_schema_compatible"
"""The fact a restore requires: the snapshot's schema suits the running application."""
SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
QUALIFIED = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?")
MAX_TABLES = 1000
"""A database with more tables needs a snapshot tool of its own, not a manifest per table."""
MAX_LISTED = 20
PREVIEW_EXACT_ROWS = 1_000_000
"""Up to this many live rows (planner estimate) a restore's preview compares checksums."""

_TABLES_SQL = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'
ORDER BY 1, 2
"""


_ESTIMATE_SQL = """
SELECT sum(greatest(c.reltuples, 0)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%%'
"""


def _name(value: str) -> str:
    if not SNAPSHOT_NAME.fullmatch(value) or ".." in value:
        raise ValueError(
            "a snapshot name is a plain file name: letters, digits, '_', '-', '.', at most 100, "
            "no '..'"
        )
    return value


class SnapshotRef(BaseModel):
    target: str = Field(min_length=1, max_length=63)
    snapshot: str = Field(description="snapshot name (a file name inside snapshot_dir)")

    @field_validator("snapshot")
    @classmethod
    def _snapshot(cls, value: str) -> str:
        return _name(value)


class SnapshotInput(BaseModel):
    target: str = Field(min_length=1, max_length=63)
    snapshot: str = Field(description="name for the new snapshot; must not exist yet")
    version_table: str = Field(
        default="public.schema_migrations", description="table holding the schema version"
    )
    version_column: str = "version"

    @field_validator("snapshot")
    @classmethod
    def _snapshot(cls, value: str) -> str:
        return _name(value)

    @field_validator("version_table", "version_column")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not QUALIFIED.fullmatch(value):
            raise ValueError(f"{value!r} is not a plain (optionally schema-qualified) identifier")
        return value


class TableDigest(BaseModel):
    table: str
    rows: int
    checksum: str


class Manifest(BaseModel):
    """What a snapshot holds, written last so a manifest means a complete dump."""

    format: int = 1
    snapshot: str
    target: str
    database: str
    created_at: datetime
    idempotency_key: str
    server_version: str
    schema_version: str | None
    dump_bytes: int
    dump_sha256: str
    tables: list[TableDigest]


class SnapshotOutput(BaseModel):
    target: str
    snapshot: str
    path: str
    bytes: int
    sha256: str
    tables: int
    rows: int
    schema_version: str | None
    created: bool
    """False when this step had already taken it (a retry)."""
    undo: SnapshotRef
    idempotency_key: str


class RemoveOutput(BaseModel):
    target: str
    snapshot: str
    removed: list[str]
    bytes: int


class IntactInput(SnapshotRef):
    present: bool = Field(default=True, description="False: satisfied when it does not exist")


class RestoreInput(SnapshotRef):
    undo_snapshot: str | None = Field(
        default=None,
        description="a snapshot of the current state, restored if the run rolls back",
    )

    @field_validator("undo_snapshot")
    @classmethod
    def _undo(cls, value: str | None) -> str | None:
        return None if value is None else _name(value)


class RestoreOutput(BaseModel):
    target: str
    snapshot: str
    tables: int
    rows: int
    restored: bool
    """False when this step had already restored it (a retry)."""
    idempotency_key: str


class CompatibilityInput(SnapshotRef):
    expected_version: str = Field(
        min_length=1, max_length=200, description="schema version the running application expects"
    )
    compatible_versions: list[str] = Field(
        default_factory=list, max_length=100, description="other versions it also works with"
    )


class CompatibilityOutput(BaseModel):
    snapshot: str
    schema_version: str
    expected_version: str
    compatible: bool


class SnapshotModules(PostgresClientSet):
    """``pg_dump``/``pg_restore`` snapshots with manifests, and checks against them."""

    # -- files ------------------------------------------------------------------------------

    def paths(self, target_name: str, name: str) -> tuple[Path, Path]:
        target = self.target(target_name)
        if target.snapshot_dir is None:
            raise invalid_input(
                f"postgres target {target_name!r} has no snapshot_dir configured",
                target=target_name,
            )
        folder = target.snapshot_dir.resolve()
        try:
            _name(name)
        except ValueError as exc:
            raise invalid_input(f"snapshot {name[:100]!r}: {exc}") from None
        dump, manifest = folder / f"{name}.dump", folder / f"{name}.manifest.json"
        if dump.parent != folder or manifest.parent != folder:
            raise invalid_input(f"snapshot {name!r} resolves outside snapshot_dir")
        return dump, manifest

    def manifest(self, target_name: str, name: str) -> Manifest | None:
        _, path = self.paths(target_name, name)
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError, ValueError) as exc:
            raise refused(
                f"snapshot {name!r}: manifest unreadable ({exc.__class__.__name__})"
            ) from None

    def need_manifest(self, target_name: str, name: str) -> Manifest:
        found = self.manifest(target_name, name)
        if found is None:
            raise refused(f"snapshot {name!r} does not exist on {target_name!r}", snapshot=name)
        return found

    def binary(self, target: PostgresTarget, tool: str) -> str:
        folders = [target.bin_dir] if target.bin_dir else list(DEFAULT_BIN_DIRS)
        for folder in folders:
            candidate = folder / tool
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        found = None if target.bin_dir else shutil.which(tool)
        if found is None:
            raise invalid_input(f"{tool} not found (set bin_dir on the postgres target)")
        return found

    async def run_tool(self, target_name: str, tool: str, args: list[str]) -> None:
        """Run a PostgreSQL client program against the target; its own errors become ours."""
        from psycopg.conninfo import make_conninfo

        target = self.target(target_name)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            # Fireline's own sessions write even while applications are frozen read-only,
            # give up on locks rather than queue behind them, and end on the server too when
            # the program is killed (a cancelled step), instead of waiting on in a lock queue.
            "PGOPTIONS": "-c default_transaction_read_only=off "
            f"-c lock_timeout={int(target.statement_timeout_s * 1000)} "
            "-c client_connection_check_interval=1000",
        }
        secret = target.secret()
        if secret is not None:
            env["PGPASSWORD"] = secret
        conninfo = make_conninfo(**{k: str(v) for k, v in target.params().items()})
        proc = await asyncio.create_subprocess_exec(
            self.binary(target, tool),
            f"--dbname={conninfo}",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            _, stderr = await proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            text = stderr.decode(errors="replace").strip()[-ERROR_EXCERPT_CHARS:]
            message = f"{tool} on {target_name!r} failed (exit {proc.returncode}): {text}"
            if "connection to server" in text or "could not connect" in text:
                raise unavailable(message, target=target_name)
            if "lock timeout" in text:
                raise unavailable(message, target=target_name)
            raise refused(message, target=target_name)

    # -- snapshot ---------------------------------------------------------------------------

    @module(
        "database.snapshot",
        domain="database",
        risk=Risk.low,
        mutates=True,
        idempotent=True,
        compensation=CompensationRef(module="database.remove_snapshot", with_="${{ output.undo }}"),
        preconditions=[
            CheckRef(check="database.replication_status", with_={"target": "${{ input.target }}"})
        ],
        postconditions=[
            CheckRef(
                check="database.snapshot_intact",
                with_={"target": "${{ input.target }}", "snapshot": "${{ input.snapshot }}"},
            )
        ],
        timeout=timedelta(hours=2),
        heartbeat=timedelta(seconds=20),
    )
    async def snapshot(self, request: SnapshotInput) -> SnapshotOutput:
        """Dump the database (``pg_dump -Fc``) and write its manifest, both from one snapshot."""
        async with running("database.snapshot"):
            key = idempotency_key()
            dump, manifest_path = self.paths(request.target, request.snapshot)
            existing = self.manifest(request.target, request.snapshot)
            if existing is not None:
                if existing.idempotency_key != key:
                    raise refused(
                        f"snapshot {request.snapshot!r} already exists (taken "
                        f"{existing.created_at:%Y-%m-%d %H:%M:%S} UTC by "
                        f"{existing.idempotency_key}); choose another name",
                        snapshot=request.snapshot,
                    )
                return _snapshot_output(request, existing, dump, created=False, key=key)
            dump.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            partial = dump.with_suffix(".dump.partial")
            try:
                manifest = await self._dump(request, partial, key)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            partial.chmod(0o600)
            manifest = manifest.model_copy(
                update={
                    "dump_bytes": partial.stat().st_size,
                    "dump_sha256": await asyncio.to_thread(_sha256, partial),
                }
            )
            partial.replace(dump)
            _write_private(manifest_path, manifest.model_dump_json(indent=1))
            log.info(
                "snapshot taken",
                target=request.target,
                snapshot=request.snapshot,
                bytes=manifest.dump_bytes,
                tables=len(manifest.tables),
            )
            return _snapshot_output(request, manifest, dump, created=True, key=key)

    async def _dump(self, request: SnapshotInput, partial: Path, key: str) -> Manifest:
        conn = await self._connect(request.target, operator=True)
        try:
            with self.errors(request.target):
                async with conn.transaction():
                    await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    exported = (await self.one(conn, "SELECT pg_export_snapshot()"))[0]
                    info = await self.one(
                        conn, "SELECT current_database(), current_setting('server_version')"
                    )
                    tables = await self.digests(conn)
                    version = await self._schema_version(conn, request)
                    # pg_dump sees the very snapshot the digests were computed in.
                    await self.run_tool(
                        request.target,
                        "pg_dump",
                        ["--format=custom", f"--snapshot={exported}", f"--file={partial}"],
                    )
        finally:
            await conn.close()
        return Manifest(
            snapshot=request.snapshot,
            target=request.target,
            database=info[0],
            created_at=datetime.now(UTC),
            idempotency_key=key,
            server_version=info[1],
            schema_version=version,
            dump_bytes=0,
            dump_sha256="",
            tables=tables,
        )

    async def digests(self, conn: Any, only: list[str] | None = None) -> list[TableDigest]:
        """Row count and an order-independent checksum (md5 of sorted row md5s) per table."""
        from psycopg import sql

        names = [(r[0], r[1]) for r in await self.all(conn, _TABLES_SQL)]
        if only is not None:
            wanted = set(only)
            names = [n for n in names if f"{n[0]}.{n[1]}" in wanted]
        if len(names) > MAX_TABLES:
            raise refused(f"{len(names)} tables: more than the {MAX_TABLES} a manifest covers")
        out = []
        for schema, table in names:
            row = await self.one(
                conn,
                sql.SQL(
                    "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' "
                    "ORDER BY md5(t::text))), md5('')) FROM {} AS t"
                ).format(sql.Identifier(schema, table)),
            )
            out.append(TableDigest(table=f"{schema}.{table}", rows=row[0], checksum=row[1]))
        return out

    async def _schema_version(self, conn: Any, request: SnapshotInput) -> str | None:
        import psycopg
        from psycopg import sql

        parts = request.version_table.split(".")
        try:
            async with conn.transaction():
                row = await self.one(
                    conn,
                    sql.SQL("SELECT max({})::text FROM {}").format(
                        sql.Identifier(request.version_column), sql.Identifier(*parts)
                    ),
                )
        except psycopg.Error:
            return None
        return None if row is None or row[0] is None else str(row[0])

    @preview("database.snapshot")
    async def preview_snapshot(self, request: SnapshotInput) -> Preview:
        dump, _ = self.paths(request.target, request.snapshot)
        existing = self.manifest(request.target, request.snapshot)
        async with self.session(request.target) as conn:
            size = (await self.one(conn, "SELECT pg_database_size(current_database())"))[0]
            tables = len(await self.all(conn, _TABLES_SQL))
        return Preview(
            mutates=existing is None,
            summary=f"dump {request.target} ({tables} tables, {size} bytes on disk) to {dump.name}",
            changes=[
                Change(target=str(dump.parent), attribute=dump.name, before=None, after="written")
            ],
            blast_radius={"files": 2, "tables": tables},
            rollback="remove the dump and its manifest",
            warnings=[f"snapshot {request.snapshot!r} already exists"] if existing else [],
        )

    @module(
        "database.remove_snapshot",
        domain="database",
        risk=Risk.medium,
        mutates=True,
        idempotent=True,
        compensation=IRREVERSIBLE,
        postconditions=[
            CheckRef(
                check="database.snapshot_intact",
                with_={
                    "target": "${{ input.target }}",
                    "snapshot": "${{ input.snapshot }}",
                    "present": False,
                },
            )
        ],
    )
    async def remove_snapshot(self, request: SnapshotRef) -> RemoveOutput:
        """Delete a snapshot's dump and manifest (gone already: nothing to do)."""
        async with running("database.remove_snapshot"):
            dump, manifest = self.paths(request.target, request.snapshot)
            removed, size = [], 0
            # The manifest goes first: a dump without one is never mistaken for a snapshot.
            for path in (manifest, dump, dump.with_suffix(".dump.partial")):
                with contextlib.suppress(FileNotFoundError):
                    size += path.stat().st_size
                    path.unlink()
                    removed.append(path.name)
            log.info("snapshot removed", target=request.target, snapshot=request.snapshot)
            return RemoveOutput(
                target=request.target, snapshot=request.snapshot, removed=removed, bytes=size
            )

    @preview("database.remove_snapshot")
    async def preview_remove_snapshot(self, request: SnapshotRef) -> Preview:
        dump, manifest = self.paths(request.target, request.snapshot)
        present = [p for p in (manifest, dump) if p.exists()]
        return Preview(
            mutates=bool(present),
            summary=f"delete snapshot {request.snapshot!r} ({len(present)} file(s))",
            changes=[
                Change(target=str(p.parent), attribute=p.name, before="present", after=None)
                for p in present
            ],
            blast_radius={"files": len(present)},
            rollback="irreversible: the dump is gone",
        )

    # -- checks -----------------------------------------------------------------------------

    @check(
        "database.snapshot_intact", domain="database", local=False, timeout=timedelta(minutes=10)
    )
    async def snapshot_intact(self, request: IntactInput) -> CheckResult:
        """A snapshot's files are complete: the dump matches its manifest's size and SHA-256
        and ``pg_restore --list`` reads it (or, with ``present: false``, that it is gone)."""
        async with running("database.snapshot_intact"):
            dump, manifest_path = self.paths(request.target, request.snapshot)
            if not request.present:
                left = [p.name for p in (dump, manifest_path) if p.exists()]
                return CheckResult(
                    satisfied=not left,
                    observed={"files": left},
                    expected={"files": []},
                    detail=f"snapshot {request.snapshot!r}: "
                    + (f"{', '.join(left)} still present" if left else "no files, as expected"),
                )
            problem, observed = await self._intact(request.target, request.snapshot, dump)
            return CheckResult(
                satisfied=problem is None,
                observed=observed,
                expected={"intact": True},
                detail=f"snapshot {request.snapshot!r} "
                + (problem or f"is intact ({observed.get('bytes')} bytes, sha256 matches)"),
            )

    async def _intact(
        self, target: str, name: str, dump: Path
    ) -> tuple[str | None, dict[str, Any]]:
        try:
            manifest = self.manifest(target, name)
        except Exception as exc:  # an unreadable manifest is what we report
            return f"has an unreadable manifest ({exc})", {"manifest": "unreadable"}
        if manifest is None:
            return "has no manifest", {"manifest": None}
        size = await asyncio.to_thread(_size, dump)
        if size is None:
            return "has no dump file", {"dump": None}
        observed: dict[str, Any] = {"bytes": size}
        if observed["bytes"] != manifest.dump_bytes:
            return (
                f"dump is {observed['bytes']} bytes, manifest says {manifest.dump_bytes}",
                observed,
            )
        observed["sha256"] = await asyncio.to_thread(_sha256, dump)
        if observed["sha256"] != manifest.dump_sha256:
            return "dump does not match the manifest's sha256", observed
        try:
            await self.run_tool(target, "pg_restore", ["--list", str(dump)])
        except Exception as exc:  # the archive's problem is the observation
            return f"is not a readable archive: {exc}", observed
        return None, observed

    @check("database.integrity", domain="database", local=False, timeout=timedelta(minutes=10))
    async def integrity(self, request: SnapshotRef) -> CheckResult:
        """Row counts and checksums of the live tables against a snapshot's manifest."""
        async with running("database.integrity"):
            manifest = self.need_manifest(request.target, request.snapshot)
            async with self.session(request.target) as conn, conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                live = {d.table: d for d in await self.digests(conn)}
            mismatched, missing = [], []
            for want in manifest.tables:
                got = live.get(want.table)
                if got is None:
                    missing.append(want.table)
                elif got.rows != want.rows or got.checksum != want.checksum:
                    mismatched.append(
                        {
                            "table": want.table,
                            "rows_expected": want.rows,
                            "rows_observed": got.rows,
                            "checksum_matches": got.checksum == want.checksum,
                        }
                    )
            extra = sorted(set(live) - {t.table for t in manifest.tables})
            ok = not mismatched and not missing
            total = len(manifest.tables)
            parts = [f"{total - len(mismatched) - len(missing)} of {total} tables match"]
            if mismatched:
                parts.append(
                    "differ: "
                    + ", ".join(
                        f"{m['table']} ({m['rows_observed']} rows, expected {m['rows_expected']}"
                        + ("" if m["checksum_matches"] else ", checksum differs")
                        + ")"
                        for m in mismatched[:5]
                    )
                )
            if missing:
                parts.append(f"missing: {', '.join(missing[:5])}")
            if extra:
                parts.append(f"not in the snapshot: {', '.join(extra[:5])}")
            return CheckResult(
                satisfied=ok,
                observed={
                    "tables": len(live),
                    "mismatched": mismatched[:MAX_LISTED],
                    "missing": missing[:MAX_LISTED],
                    "extra": extra[:MAX_LISTED],
                },
                expected={"snapshot": request.snapshot, "tables": len(manifest.tables)},
                detail=f"{request.target} against {request.snapshot!r}: " + "; ".join(parts),
            )

    # -- compatibility and restore ----------------------------------------------------------

    @module(
        "database.check_schema_compatibility",
        domain="database",
        risk=Risk.low,
        provides=[SCHEMA_COMPATIBLE],
        preconditions=[
            CheckRef(
                check="database.snapshot_intact",
                with_={"target": "${{ input.target }}", "snapshot": "${{ input.snapshot }}"},
            )
        ],
    )
    async def check_schema_compatibility(self, request: CompatibilityInput) -> CompatibilityOutput:
        """Refuse unless the snapshot's schema version is one the running application accepts;
        establishes the fact ``app_schema_compatible`` a restore requires."""
        async with running("database.check_schema_compatibility"):
            manifest = self.need_manifest(request.target, request.snapshot)
            accepted = [request.expected_version, *request.compatible_versions]
            version = manifest.schema_version
            if version is None:
                raise refused(
                    f"snapshot {request.snapshot!r} records no schema version; the application "
                    f"expects {request.expected_version}",
                    snapshot=request.snapshot,
                )
            if version not in accepted:
                raise refused(
                    f"snapshot {request.snapshot!r} has schema version {version}; the running "
                    f"application accepts {', '.join(accepted)}",
                    snapshot=request.snapshot,
                    observed=version,
                )
            return CompatibilityOutput(
                snapshot=request.snapshot,
                schema_version=version,
                expected_version=request.expected_version,
                compatible=True,
            )

    @module(
        "database.restore",
        domain="database",
        risk=Risk.critical,
        mutates=True,
        idempotent=True,
        requires=[SCHEMA_COMPATIBLE],
        compensation=CompensationRef(
            module="database.restore",
            with_={"target": "${{ input.target }}", "snapshot": "${{ input.undo_snapshot }}"},
            when="undo_snapshot",
        ),
        preconditions=[
            CheckRef(
                check="database.snapshot_intact",
                with_={"target": "${{ input.target }}", "snapshot": "${{ input.snapshot }}"},
            ),
            CheckRef(
                check="database.replication_status",
                with_={"target": "${{ input.target }}", "expect_role": "primary"},
            ),
        ],
        postconditions=[
            CheckRef(
                check="database.integrity",
                with_={"target": "${{ input.target }}", "snapshot": "${{ input.snapshot }}"},
                deadline_s=60,
                poll_interval_s=1,
            )
        ],
        timeout=timedelta(hours=2),
        heartbeat=timedelta(seconds=20),
    )
    async def restore(self, request: RestoreInput) -> RestoreOutput:
        """Restore the snapshot's objects and data (``pg_restore --clean --single-transaction``):
        all or nothing. Objects that exist only in the live database are left as they are."""
        async with running("database.restore"):
            key = idempotency_key()
            dump, _ = self.paths(request.target, request.snapshot)
            manifest = self.need_manifest(request.target, request.snapshot)
            if request.undo_snapshot is not None:
                self.need_manifest(request.target, request.undo_snapshot)
            async with self.session(request.target) as conn:
                recorded = await self.ledger_get(conn, "database.restore", key)
            if recorded is not None:
                return RestoreOutput.model_validate({**recorded, "restored": False})
            problem, _ = await self._intact(request.target, request.snapshot, dump)
            if problem is not None:
                raise refused(f"snapshot {request.snapshot!r} {problem}", snapshot=request.snapshot)
            await self.run_tool(
                request.target,
                "pg_restore",
                ["--clean", "--if-exists", "--single-transaction", "--exit-on-error", str(dump)],
            )
            out = RestoreOutput(
                target=request.target,
                snapshot=request.snapshot,
                tables=len(manifest.tables),
                rows=sum(t.rows for t in manifest.tables),
                restored=True,
                idempotency_key=key,
            )
            # Recorded only once it is done: a retry after a crash restores again (same data).
            async with self.session(request.target) as conn:
                await self.ledger_put(conn, "database.restore", key, out.model_dump(mode="json"))
            log.info("snapshot restored", target=request.target, snapshot=request.snapshot)
            return out

    @preview("database.restore")
    async def preview_restore(self, request: RestoreInput) -> Preview:
        manifest = self.need_manifest(request.target, request.snapshot)
        warnings = []
        async with self.session(request.target) as conn:
            estimated = (await self.one(conn, _ESTIMATE_SQL))[0] or 0
            if estimated <= PREVIEW_EXACT_ROWS:
                live = {d.table: d for d in await self.digests(conn)}
            else:
                # Checksumming every row before a gate would load the database it is about
                # to fix: name every table, with the planner's row estimate.
                live = {}
                warnings.append(
                    f"about {int(estimated)} live rows: more than {PREVIEW_EXACT_ROWS}, so the "
                    "preview lists every table instead of comparing checksums"
                )
        changes = []
        for want in manifest.tables:
            got = live.get(want.table)
            if got is None or got.checksum != want.checksum or got.rows != want.rows:
                changes.append(
                    Change(
                        target=request.target,
                        attribute=want.table,
                        before=None if got is None else f"{got.rows} rows",
                        after=f"{want.rows} rows (snapshot {request.snapshot})",
                    )
                )
        return Preview(
            warnings=warnings,
            mutates=True,
            summary=f"replace {len(manifest.tables)} tables of {request.target} with snapshot "
            f"{request.snapshot!r} ({len(changes)} differ now)",
            changes=changes[: MAX_LISTED * 2],
            blast_radius={
                "tables": len(manifest.tables),
                "rows": sum(t.rows for t in manifest.tables),
                "tables_changed": len(changes),
            },
            rollback=(
                f"restore snapshot {request.undo_snapshot!r} (taken before)"
                if request.undo_snapshot
                else "irreversible: no snapshot of the current state is named (undo_snapshot)"
            ),
        )


def _snapshot_output(
    request: SnapshotInput, manifest: Manifest, dump: Path, *, created: bool, key: str
) -> SnapshotOutput:
    return SnapshotOutput(
        target=request.target,
        snapshot=request.snapshot,
        path=str(dump),
        bytes=manifest.dump_bytes,
        sha256=manifest.dump_sha256,
        tables=len(manifest.tables),
        rows=sum(t.rows for t in manifest.tables),
        schema_version=manifest.schema_version,
        created=created,
        undo=SnapshotRef(target=request.target, snapshot=request.snapshot),
        idempotency_key=key,
    )


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_private(path: Path, text: str) -> None:
    """Write via a private temporary file and rename: never a half-written manifest."""
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    partial.replace(path)


__all__ = [
    "SCHEMA_COMPATIBLE",
    "CompatibilityInput",
    "IntactInput",
    "Manifest",
    "RestoreInput",
    "SnapshotInput",
    "SnapshotModules",
    "SnapshotOutput",
    "SnapshotRef",
]
