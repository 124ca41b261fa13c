"""PostgreSQL targets by name, the connections Fireline holds to them, and the step ledger.

Every database module names a target (``settings.targets["postgres"][name]``); credentials
stay here, never in inputs or history. psycopg is imported only inside these functions, so
loading the registry (compiling a playbook, serving the API) never imports it.

Two kinds of session: the *operator* session Fireline holds per target runs with
``default_transaction_read_only=off`` set by the client, so Fireline can still throttle,
restore or record while the database is frozen for applications; an *application* session is
opened fresh, with nothing overridden, to observe what an application would see.

The *ledger* makes mutating modules idempotent by key: before changing anything a module
records its result under the step's idempotency key in ``fireline.ledger`` (a custom setting
in ``postgresql.auto.conf``, written by ``ALTER SYSTEM``, so it lives with the server and
survives a worker crash). A retry of the same step finds the entry and changes nothing new;
in particular it reports the prior state the first attempt saw, not the state it left.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from activities.core.runtime import invalid_input, refused, target_settings, unavailable
from fireline.modules import ModuleSet
from fireline.runtime.settings import Settings

if TYPE_CHECKING:
    import psycopg

log = structlog.get_logger(__name__)

TARGET_KIND = "postgres"
LEDGER_SETTING = "fireline.ledger"
LEDGER_ENTRIES = 32
"""The ledger keeps the most recent entries only: it bridges retries of one step, not history."""
LEDGER_MAX_CHARS = 32 * 1024
"""And stays small: ``postgresql.auto.conf`` is read by every reload."""
LEDGER_LOCK = 0x46495245
"""Advisory lock id serialising ledger updates from concurrent steps on one server."""
ERROR_EXCERPT_CHARS = 300
DEFAULT_BIN_DIRS = (Path("/usr/lib/postgresql/15/bin"),)


class PostgresTarget(BaseModel):
    """Connection settings of one PostgreSQL server (``[targets.postgres.NAME]``)."""

    model_config = ConfigDict(extra="forbid")

    dsn: SecretStr | None = Field(
        default=None, description="libpq connection string; fields below fill what it omits"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    user: str = "postgres"
    password: SecretStr | None = None
    dbname: str = "postgres"
    connect_timeout_s: float = Field(default=5.0, gt=0, le=300)
    statement_timeout_s: float = Field(default=30.0, gt=0, le=24 * 3600)
    application_name: str = Field(default="fireline", max_length=63)
    bin_dir: Path | None = Field(
        default=None, description="where pg_dump and pg_restore live; PATH when unset"
    )
    snapshot_dir: Path | None = Field(
        default=None, description="where snapshots of this target are written and read"
    )

    def params(self) -> dict[str, Any]:
        """libpq parameters without the password (which travels separately)."""
        from psycopg.conninfo import conninfo_to_dict

        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.dbname,
        }
        if self.dsn is not None:
            params.update(conninfo_to_dict(self.dsn.get_secret_value()))
        params.pop("password", None)
        params["connect_timeout"] = max(int(self.connect_timeout_s), 1)
        params["application_name"] = self.application_name
        return params

    def secret(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.dsn is not None:
            from psycopg.conninfo import conninfo_to_dict

            value = conninfo_to_dict(self.dsn.get_secret_value()).get("password")
            return None if value is None else str(value)
        return None

    def where(self) -> str:
        params = self.params()
        return f"{params.get('host')}:{params.get('port')}/{params.get('dbname')}"


def excerpt(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:ERROR_EXCERPT_CHARS]


def ledger_key(module: str, key: str) -> str:
    """Entries are named by a digest of module and step key (workflow ids have any length)."""
    return hashlib.sha256(f"{module}\n{key}".encode()).hexdigest()[:24]


class PostgresClientSet(ModuleSet):
    """Base of the database module sets: targets by name and one operator session each."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._targets: dict[str, PostgresTarget] = {}
        self._conns: dict[str, psycopg.AsyncConnection[Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def target(self, name: str) -> PostgresTarget:
        """Target ``name``, validated once per worker."""
        if name not in self._targets:
            self._targets[name] = target_settings(self.settings, TARGET_KIND, name, PostgresTarget)
        return self._targets[name]

    async def _connect(self, name: str, *, operator: bool) -> psycopg.AsyncConnection[Any]:
        import psycopg

        target = self.target(name)
        options = f"-c statement_timeout={int(target.statement_timeout_s * 1000)}"
        if operator:
            options += " -c default_transaction_read_only=off"
        try:
            return await asyncio.wait_for(
                psycopg.AsyncConnection.connect(
                    **target.params(),
                    password=target.secret(),
                    options=options,
                    autocommit=True,
                ),
                timeout=target.connect_timeout_s + 1,
            )
        except (psycopg.Error, OSError, TimeoutError) as exc:
            raise unavailable(
                f"postgres target {name!r} ({target.where()}) unreachable: {excerpt(exc)}",
                target=name,
            ) from exc

    @contextlib.asynccontextmanager
    async def session(self, name: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The held operator session of ``name``, one step at a time; reopened when broken."""
        import psycopg

        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            conn = self._conns.get(name)
            if conn is None or conn.closed or conn.broken:
                conn = self._conns[name] = await self._connect(name, operator=True)
            try:
                with self.errors(name):
                    yield conn
            except BaseException:
                if conn.broken or conn.closed:
                    self._conns.pop(name, None)
                raise
            finally:
                if (
                    not conn.closed
                    and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
                ):
                    with contextlib.suppress(psycopg.Error):
                        await conn.rollback()

    @contextlib.asynccontextmanager
    async def app_session(self, name: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A fresh session as an application would open it; closed afterwards."""
        conn = await self._connect(name, operator=False)
        try:
            with self.errors(name):
                yield conn
        finally:
            await conn.close()

    @contextlib.contextmanager
    def errors(self, name: str) -> Any:
        """psycopg errors as Fireline's: lost connections may be retried, refusals not."""
        import psycopg

        try:
            yield
        except psycopg.OperationalError as exc:
            if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
                raise unavailable(f"{name}: {excerpt(exc)}", target=name) from exc
            raise unavailable(f"postgres target {name!r}: {excerpt(exc)}", target=name) from exc
        except psycopg.Error as exc:
            raise refused(f"postgres target {name!r} refused: {excerpt(exc)}", target=name) from exc

    async def aclose(self) -> None:
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                await conn.close()
        self._conns.clear()

    # -- queries shared by the modules -----------------------------------------------------

    @staticmethod
    async def one(conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None) -> Any:
        cur = await conn.execute(query, params)
        return await cur.fetchone()

    @staticmethod
    async def all(conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None) -> list[Any]:
        cur = await conn.execute(query, params)
        return await cur.fetchall()

    @classmethod
    async def in_recovery(cls, conn: psycopg.AsyncConnection[Any]) -> bool:
        row = await cls.one(conn, "SELECT pg_is_in_recovery()")
        return bool(row[0])

    @classmethod
    async def auto_conf(cls, conn: psycopg.AsyncConnection[Any], setting: str) -> str | None:
        """The value ``ALTER SYSTEM`` wrote for ``setting``, None when it wrote none.

        Read from the file (``pg_file_settings``), not the session, so it is exact whether or
        not the configuration has been reloaded and whatever this session overrides.
        """
        row = await cls.one(
            conn,
            "SELECT setting FROM pg_file_settings WHERE name = %s "
            "AND sourcefile LIKE '%%postgresql.auto.conf' ORDER BY seqno DESC LIMIT 1",
            (setting,),
        )
        return None if row is None else str(row[0])

    @classmethod
    async def alter_system(
        cls, conn: psycopg.AsyncConnection[Any], setting: str, value: str | None
    ) -> None:
        """``ALTER SYSTEM SET setting = value`` (``RESET`` for None); no reload."""
        from psycopg import sql

        name = sql.Identifier(*setting.split("."))
        if value is None:
            await conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(name))
        else:
            await conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(name, sql.Literal(value)))

    @classmethod
    async def _ledger(cls, conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
        raw = await cls.auto_conf(conn, LEDGER_SETTING)
        try:
            entries = json.loads(raw) if raw else []
        except ValueError:
            log.warning("ledger unreadable; starting afresh", setting=LEDGER_SETTING)
            return []
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []

    @classmethod
    async def ledger_get(cls, conn: psycopg.AsyncConnection[Any], module: str, key: str) -> Any:
        """What ``module`` recorded under the step key ``key``, or None."""
        digest = ledger_key(module, key)
        for entry in await cls._ledger(conn):
            if entry.get("k") == digest:
                return entry.get("v")
        return None

    @classmethod
    async def ledger_put(
        cls, conn: psycopg.AsyncConnection[Any], module: str, key: str, value: Any
    ) -> None:
        digest = ledger_key(module, key)
        await conn.execute("SELECT pg_advisory_lock(%s)", (LEDGER_LOCK,))
        try:
            entries = [e for e in await cls._ledger(conn) if e.get("k") != digest]
            entries = [*entries, {"k": digest, "v": value}][-LEDGER_ENTRIES:]
            text = json.dumps(entries, separators=(",", ":"))
            while len(text) > LEDGER_MAX_CHARS and len(entries) > 1:
                entries = entries[1:]
                text = json.dumps(entries, separators=(",", ":"))
            if len(text) > LEDGER_MAX_CHARS:
                raise invalid_input(
                    f"{module}: {len(text)} characters to record, more than the ledger's "
                    f"{LEDGER_MAX_CHARS}; narrow the step"
                )
            # A custom setting must be known to the session before ALTER SYSTEM accepts it.
            await conn.execute(f"SET {LEDGER_SETTING} = ''")
            await cls.alter_system(conn, LEDGER_SETTING, text)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (LEDGER_LOCK,))
