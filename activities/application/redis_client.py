"""One Redis client per named target, and the journal that makes Redis steps idempotent.

redis-py is imported here, lazily, when a worker first talks to a target: compiling a playbook
or running the API never imports it. Each step's result is journalled in Redis itself under its
idempotency key (atomically with the change, for flags), so a retry of the same step returns
what the first attempt did and records the prior state the first attempt found.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from temporalio import activity

from activities.application.targets import RedisTarget
from activities.core.runtime import idempotency_key, refused, target_settings, unavailable
from fireline.modules import ModuleSet
from fireline.runtime.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

JOURNAL_PREFIX = "fireline:journal:"
"""Keys Fireline writes for itself; a cache flush never deletes them."""
JOURNAL_TTL_S = 7 * 24 * 3600
"""How long a step's record is kept: longer than any run retries a step."""


def text(raw: bytes | str) -> str:
    """A Redis reply as text; the client keeps bytes so odd key names survive a round trip."""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def is_journal(key: bytes | str) -> bool:
    return text(key).startswith(JOURNAL_PREFIX)


def journal_key() -> str:
    """The step's record: its idempotency key plus the run id, because a workflow id can be
    reused by a later run (an incident's playbook, a re-run), whose steps must act again."""
    info = activity.info()
    key = idempotency_key()
    if info.workflow_run_id:
        key = f"{key}@{info.workflow_run_id}"
    return JOURNAL_PREFIX + key


class RedisSet(ModuleSet):
    """Module sets that talk to Redis targets share this: clients per target, error mapping."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._clients: dict[str, tuple[RedisTarget, Redis]] = {}

    def target(self, name: str) -> RedisTarget:
        return target_settings(self.settings, "redis", name, RedisTarget)

    def client(self, name: str) -> Redis:
        if name not in self._clients:
            import redis.asyncio as aioredis

            target = self.target(name)
            password = target.password.get_secret_value() if target.password else None
            common: dict[str, Any] = {
                "username": target.username,
                "password": password,
                "socket_timeout": target.timeout_s,
                "socket_connect_timeout": target.timeout_s,
            }
            if target.url is not None:
                client = aioredis.Redis.from_url(target.url, **common)
            else:
                client = aioredis.Redis(
                    host=target.host, port=target.port, db=target.db, ssl=target.tls, **common
                )
            self._clients[name] = (target, client)
        return self._clients[name][1]

    @asynccontextmanager
    async def talking(self, name: str) -> AsyncIterator[Redis]:
        """The target's client, with redis-py's errors turned into Fireline's failure types."""
        import redis.exceptions as rerr

        client = self.client(name)
        try:
            yield client
        except (rerr.AuthenticationError, rerr.AuthorizationError) as exc:
            # Wrong credentials stay wrong on a retry; the message never carries them.
            raise refused(
                f"redis target {name!r} refused the credentials in settings: {type(exc).__name__}",
                target=name,
            ) from None
        except (rerr.ConnectionError, rerr.TimeoutError) as exc:
            raise unavailable(
                f"redis target {name!r} did not answer: {type(exc).__name__}: {exc}", target=name
            ) from None
        except rerr.ResponseError as exc:
            # WRONGTYPE, READONLY (a replica), NOSCRIPT, OOM...: the server said no.
            raise refused(f"redis target {name!r} refused: {exc}", target=name) from None

    async def recorded(self, client: Redis, key: str) -> dict[str, Any] | None:
        raw = await client.get(key)
        return None if raw is None else json.loads(raw)

    async def record(self, client: Redis, key: str, result: dict[str, Any]) -> None:
        await client.set(key, json.dumps(result), ex=JOURNAL_TTL_S)

    async def aclose(self) -> None:
        for _, client in self._clients.values():
            await client.aclose()
        self._clients.clear()
