"""Snapshots (``pg_dump``/``pg_restore``), manifests, integrity and schema compatibility.

Against the real primary of tests/support/postgres.py, each test in a database of its own;
assertions read the tables and the files on disk.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from activities.database import snapshot as snapshot_module
from activities.database.postgres import PostgresModules, ReadOnlyInput
from activities.database.snapshot import (
    CompatibilityInput,
    IntactInput,
    RestoreInput,
    SnapshotInput,
    SnapshotModules,
    SnapshotRef,
)
from fireline.compile.compiler import PlaybookLibrary
from fireline.runtime.settings import Settings
from tests.support.postgres import (  # noqa: F401  (fixtures)
    PASSWORD,
    REGISTRY,
    SCHEMA,
    PgCluster,
    conditions,
    eventually,
    pg_cluster_fixture,
    pg_fixture,
    raises,
    run,
)
from tests.support.workers import CATALOG


class Db:
    def __init__(self, cluster: PgCluster, name: str, snapshots: Path) -> None:
        self.cluster, self.name, self.snapshots = cluster, name, snapshots

    def sql(self, query: str, params: Any = None) -> list[Any]:
        return self.cluster.primary.execute(query, self.name, params)

    def scalar(self, query: str) -> Any:
        return self.cluster.primary.scalar(query, self.name)

    def settings(self) -> Settings:
        target = self.cluster.primary.target(self.name, snapshot_dir=str(self.snapshots))
        return Settings(targets={"postgres": {"app": target, "primary": target}})


@pytest.fixture
def db(pg: PgCluster, tmp_path: Path) -> Db:
    name = pg.create_database("snap")
    for statement in SCHEMA.strip().split(";\n"):
        pg.primary.execute(statement, name)
    return Db(pg, name, tmp_path / "snapshots")


@pytest.fixture
async def snaps(db: Db) -> AsyncIterator[SnapshotModules]:
    mods = SnapshotModules(db.settings())
    try:
        yield mods
    finally:
        await mods.aclose()


@pytest.fixture
async def sets(db: Db, snaps: SnapshotModules) -> AsyncIterator[list[Any]]:
    """Both database module sets, for conditions that use checks of either."""
    mods = PostgresModules(db.settings())
    try:
        yield [snaps, mods]
    finally:
        await mods.aclose()


async def take(mods: SnapshotModules, name: str = "good", key: str = "wf-1/snap") -> Any:
    return await run(mods.snapshot, SnapshotInput(target="app", snapshot=name), key=key)


class TestSnapshot:
    async def test_dump_and_manifest_describe_the_database(
        self, db: Db, snaps: SnapshotModules, sets: list[Any]
    ) -> None:
        """The dump exists (private), the manifest counts every table, the postcondition holds."""
        spec = REGISTRY["database.snapshot"]
        inp = SnapshotInput(target="app", snapshot="good")
        [pre] = await conditions(sets, spec, "pre", inp)
        assert pre.satisfied, pre.detail
        preview = await run(snaps.preview_snapshot, inp)
        assert preview.mutates
        assert preview.blast_radius["tables"] == 3
        out = await run(snaps.snapshot, inp)
        dump = db.snapshots / "good.dump"
        assert dump.stat().st_size == out.bytes > 0
        assert dump.stat().st_mode & 0o077 == 0
        manifest = snaps.need_manifest("app", "good")
        assert {t.table: t.rows for t in manifest.tables} == {
            "billing.Invoices": 2,
            "public.accounts": 200,
            "public.schema_migrations": 2,
        }
        assert manifest.schema_version == "3"
        [post] = await conditions(snaps, spec, "post", inp, out)
        assert post.satisfied, post.detail

    async def test_undo_removes_the_files(self, db: Db, snaps: SnapshotModules) -> None:
        """The compensation deletes dump and manifest; its postcondition sees them gone."""
        out = await take(snaps)
        removed = await run(snaps.remove_snapshot, out.undo, key="wf-1/undo")
        assert sorted(removed.removed) == ["good.dump", "good.manifest.json"]
        assert list(db.snapshots.iterdir()) == []
        spec = REGISTRY["database.remove_snapshot"]
        [post] = await conditions(snaps, spec, "post", out.undo)
        assert post.satisfied, post.detail

    async def test_same_key_twice_dumps_once_and_another_key_is_refused(
        self, db: Db, snaps: SnapshotModules
    ) -> None:
        """A retry returns the snapshot it took; a different step may not overwrite it."""
        first = await take(snaps, key="wf-5/snap")
        mtime = (db.snapshots / "good.dump").stat().st_mtime_ns
        again = await take(snaps, key="wf-5/snap")
        assert (again.created, again.sha256) == (False, first.sha256)
        assert (db.snapshots / "good.dump").stat().st_mtime_ns == mtime
        err = await raises(take(snaps, key="wf-6/snap"))
        assert "snapshot 'good' already exists" in err.message
        assert "wf-5/snap" in err.message

    @pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/b", "..", ".hidden", ""])
    def test_names_cannot_leave_the_snapshot_dir(self, name: str) -> None:
        """A snapshot name is a plain file name: paths and dot-dot are refused by the model."""
        with pytest.raises(ValidationError, match="plain file name"):
            SnapshotRef(target="app", snapshot=name)

    async def test_hostile_version_table_is_refused(self) -> None:
        """The schema version table is an identifier, never SQL."""
        with pytest.raises(ValidationError, match="not a plain"):
            SnapshotInput(target="app", snapshot="x", version_table="t; DROP TABLE accounts")

    async def test_password_travels_in_the_environment_only(
        self, db: Db, snaps: SnapshotModules, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """pg_dump gets PGPASSWORD; no argument carries the password (``ps`` would show it)."""
        seen: list[tuple[tuple[str, ...], dict[str, str]]] = []
        real = asyncio.create_subprocess_exec

        async def recording(*argv: str, **kwargs: Any) -> Any:
            seen.append((argv, dict(kwargs.get("env") or {})))
            return await real(*argv, **kwargs)

        monkeypatch.setattr(asyncio, "create_subprocess_exec", recording)
        await take(snaps)
        [(argv, environment)] = [s for s in seen if s[0][0].endswith("pg_dump")]
        assert environment["PGPASSWORD"] == PASSWORD
        assert not any(PASSWORD in arg for arg in argv)
        assert any(arg.startswith("--snapshot=") for arg in argv)

    async def test_a_dsn_target_keeps_its_password_out_of_argv(
        self, db: Db, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A target given as one DSN (password inside) dumps; the password is taken out of it."""
        seen: list[tuple[str, ...]] = []
        real = asyncio.create_subprocess_exec

        async def recording(*argv: str, **kwargs: Any) -> Any:
            seen.append(argv)
            return await real(*argv, **kwargs)

        monkeypatch.setattr(asyncio, "create_subprocess_exec", recording)
        dsn = db.cluster.primary.dsn(db.name)
        assert PASSWORD in dsn
        settings = Settings(
            targets={"postgres": {"app": {"dsn": dsn, "snapshot_dir": str(db.snapshots)}}}
        )
        mods = SnapshotModules(settings)
        try:
            out = await take(mods)
        finally:
            await mods.aclose()
        assert out.tables == 3
        assert seen
        assert not any(PASSWORD in arg for argv in seen for arg in argv)

    async def test_a_cancelled_step_kills_its_pg_dump(
        self, db: Db, snaps: SnapshotModules, tmp_path: Path
    ) -> None:
        """pg_dump waiting on a lock is killed when the step is cancelled: its session ends."""
        locker = await asyncio.to_thread(
            psycopg.connect, db.cluster.primary.dsn(db.name), application_name="locker"
        )
        try:
            await asyncio.to_thread(locker.execute, "LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
            dump = snaps.run_tool("app", "pg_dump", ["--format=custom", f"--file={tmp_path / 'x'}"])
            task = asyncio.create_task(dump)

            async def waiting() -> bool:
                return bool(
                    db.scalar(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                        "'fireline' AND wait_event_type = 'Lock'"
                    )
                )

            assert await eventually(waiting), "pg_dump never queued behind the lock"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

            async def gone() -> bool:
                return not await waiting()

            assert await eventually(gone), "pg_dump's session outlived the cancelled step"
        finally:
            locker.close()

    async def test_tampered_dump_is_not_intact(self, db: Db, snaps: SnapshotModules) -> None:
        """One flipped byte: the check reports the sha256 mismatch; a missing manifest too."""
        await take(snaps)
        dump = db.snapshots / "good.dump"
        data = bytearray(dump.read_bytes())
        data[len(data) // 2] ^= 0xFF
        dump.write_bytes(bytes(data))
        result = await run(snaps.snapshot_intact, IntactInput(target="app", snapshot="good"))
        assert not result.satisfied
        assert "does not match the manifest's sha256" in result.detail
        none = await run(snaps.snapshot_intact, IntactInput(target="app", snapshot="other"))
        assert not none.satisfied
        assert "has no manifest" in none.detail


class TestIntegrity:
    async def test_live_changes_are_named_per_table(self, db: Db, snaps: SnapshotModules) -> None:
        """Matching at first; an update changes the checksum, a delete the count, by table."""
        await take(snaps)
        ok = await run(snaps.integrity, SnapshotRef(target="app", snapshot="good"))
        assert ok.satisfied, ok.detail
        db.sql("UPDATE accounts SET balance = 0 WHERE id = 7")
        db.sql('DELETE FROM billing."Invoices" WHERE id = 2')
        bad = await run(snaps.integrity, SnapshotRef(target="app", snapshot="good"))
        assert not bad.satisfied
        assert {m["table"]: m for m in bad.observed["mismatched"]} == {
            "public.accounts": {
                "table": "public.accounts",
                "rows_expected": 200,
                "rows_observed": 200,
                "checksum_matches": False,
            },
            "billing.Invoices": {
                "table": "billing.Invoices",
                "rows_expected": 2,
                "rows_observed": 1,
                "checksum_matches": False,
            },
        }
        assert "1 of 3 tables match" in bad.detail


class TestCompatibility:
    async def test_matching_version_provides_the_fact(self, snaps: SnapshotModules) -> None:
        """Version 3 suits an application expecting 3 (or accepting it)."""
        await take(snaps)
        out = await run(
            snaps.check_schema_compatibility,
            CompatibilityInput(
                target="app", snapshot="good", expected_version="4", compatible_versions=["3"]
            ),
        )
        assert (out.compatible, out.schema_version) == (True, "3")
        assert REGISTRY["database.check_schema_compatibility"].provides == (
            "app_schema_compatible",
        )

    async def test_other_version_is_refused_with_what_was_seen(
        self, db: Db, snaps: SnapshotModules
    ) -> None:
        """Expecting 4: refused, naming 3; without a version table: refused, saying so."""
        await take(snaps)
        err = await raises(
            run(
                snaps.check_schema_compatibility,
                CompatibilityInput(target="app", snapshot="good", expected_version="4"),
            )
        )
        assert "has schema version 3; the running application accepts 4" in err.message
        db.sql("DROP TABLE schema_migrations")
        await take(snaps, "noversion", key="wf-1/snap2")
        err = await raises(
            run(
                snaps.check_schema_compatibility,
                CompatibilityInput(target="app", snapshot="noversion", expected_version="4"),
            )
        )
        assert "records no schema version" in err.message

    def test_compiler_refuses_a_restore_without_a_compatibility_check(self, tmp_path: Path) -> None:
        """requires: app_schema_compatible: no earlier step provides it, so no plan."""
        folder = tmp_path / "pb"
        folder.mkdir()
        (folder / "catalog.yaml").write_text(CATALOG.model_dump_json())
        (folder / "r.yaml").write_text(
            textwrap.dedent(
                """
                name: r
                steps:
                  - id: restore
                    uses: database.restore
                    with: {target: app, snapshot: good}
                    approval: {role: sre-oncall}
                """
            )
        )
        library = PlaybookLibrary.load(folder, registry=REGISTRY)
        report = library.validate_all()
        problems = [str(p) for ps in report.values() for p in ps]
        assert any(
            "requires fact 'app_schema_compatible'" in p
            and "database.check_schema_compatibility" in p
            for p in problems
        ), problems


class TestRestore:
    async def test_restore_returns_the_snapshot_and_undo_returns_the_present(
        self, db: Db, snaps: SnapshotModules, sets: list[Any]
    ) -> None:
        """Damage, restore good (postcondition holds), undo: the damaged state is back."""
        await take(snaps)
        db.sql("DELETE FROM accounts WHERE id > 150")
        db.sql("INSERT INTO accounts VALUES (999, 'intruder', 1)")
        await take(snaps, "before", key="wf-1/safety")
        spec = REGISTRY["database.restore"]
        inp = RestoreInput(target="app", snapshot="good", undo_snapshot="before")
        pre = await conditions(sets, spec, "pre", inp)
        assert all(r.satisfied for r in pre), [r.detail for r in pre]
        preview = await run(snaps.preview_restore, inp)
        assert [c.attribute for c in preview.changes] == ["public.accounts"]
        assert (preview.changes[0].before, preview.changes[0].after) == (
            "151 rows",
            "200 rows (snapshot good)",
        )
        out = await run(snaps.restore, inp)
        assert out.restored
        assert db.scalar("SELECT count(*) FROM accounts") == 200
        assert db.scalar("SELECT count(*) FROM accounts WHERE id = 999") == 0
        [post] = await conditions(snaps, spec, "post", inp, out)
        assert post.satisfied, post.detail

        undo = RestoreInput(target="app", snapshot="before")
        await run(snaps.restore, undo, key="wf-1/undo:restore")
        assert db.scalar("SELECT count(*) FROM accounts") == 151
        assert db.scalar("SELECT owner FROM accounts WHERE id = 999") == "intruder"

    async def test_preview_of_a_big_database_names_tables_without_reading_them(
        self, db: Db, snaps: SnapshotModules, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past the row bound the preview uses the planner's estimate and says so."""
        await take(snaps)
        db.sql("ANALYZE")
        monkeypatch.setattr(snapshot_module, "PREVIEW_EXACT_ROWS", 10)
        preview = await run(snaps.preview_restore, RestoreInput(target="app", snapshot="good"))
        assert len(preview.changes) == 3
        [warning] = preview.warnings
        assert "lists every table instead of comparing checksums" in warning

    async def test_same_key_twice_restores_once(self, db: Db, snaps: SnapshotModules) -> None:
        """A retry after success does not restore over what happened since."""
        await take(snaps)
        inp = RestoreInput(target="app", snapshot="good")
        await run(snaps.restore, inp, key="wf-7/restore")
        db.sql("INSERT INTO accounts VALUES (1000, 'after', 0)")
        again = await run(snaps.restore, inp, key="wf-7/restore")
        assert not again.restored
        assert db.scalar("SELECT count(*) FROM accounts WHERE id = 1000") == 1

    async def test_restore_works_while_applications_are_frozen(
        self, db: Db, snaps: SnapshotModules
    ) -> None:
        """Read-only stops applications, not Fireline's restore."""
        await take(snaps)
        db.sql("DELETE FROM accounts")
        mods = PostgresModules(db.settings())
        try:
            await run(mods.set_read_only, ReadOnlyInput(target="app"))
            await run(snaps.restore, RestoreInput(target="app", snapshot="good"))
        finally:
            await mods.aclose()
        assert db.scalar("SELECT count(*) FROM accounts") == 200

    async def test_tampered_snapshot_is_refused_and_nothing_changes(
        self, db: Db, snaps: SnapshotModules
    ) -> None:
        """A dump that no longer matches its manifest is never restored."""
        await take(snaps)
        db.sql("DELETE FROM accounts WHERE id > 100")
        dump = db.snapshots / "good.dump"
        dump.write_bytes(dump.read_bytes()[:-10])
        err = await raises(run(snaps.restore, RestoreInput(target="app", snapshot="good")))
        assert "manifest says" in err.message
        assert db.scalar("SELECT count(*) FROM accounts") == 100
