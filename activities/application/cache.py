"""Flush a cache by key pattern: ``SCAN`` + ``UNLINK`` in bounded batches, never ``FLUSHALL``.

``KEYS`` and ``FLUSHALL`` block a Redis that is already in trouble and take everything with
them; ``SCAN`` walks the keyspace a batch at a time and ``UNLINK`` frees memory off the main
thread. A pattern with no literal character (``*``, ``?*``, ``[a-z]*``) would flush the whole
cache and is refused unless the step says ``allow_match_all: true``.

The flush is irreversible: restoring the entries (``DUMP``/``RESTORE``) would bring back the
very entries flushed for being bad, and the snapshot would have to live either in workflow
history (cached data, maybe personal, maybe megabytes) or in the same Redis whose memory the
flush is meant to free. A cache refills from its source; the step needs an approval instead.
"""

from __future__ import annotations

import re
from datetime import timedelta

import structlog
from pydantic import BaseModel, Field, field_validator

from activities.application.redis_client import RedisSet, is_journal, journal_key, text
from activities.core.runtime import invalid_input, running
from fireline.modules import IRREVERSIBLE, CheckRef, CheckResult, check, module, preview
from fireline.plan import Change, Preview, Risk

from .targets import TARGET_NAME

log = structlog.get_logger(__name__)

MAX_BATCH = 1000
"""Keys per SCAN/UNLINK round trip: small enough that no single command stalls the server."""
MAX_KEYS_LIMIT = 1_000_000
SAMPLE_KEYS = 5
"""Key names a preview shows, so an approver sees what the pattern really matches."""

_CLASS = re.compile(r"\[[^\]]*\]")


def match_all(pattern: str) -> bool:
    """True when the glob has no literal character left, so it matches (nearly) every key."""
    stripped = _CLASS.sub("", pattern.replace("\\\\", "").replace("\\*", "x").replace("\\?", "x"))
    return not re.sub(r"[*?]", "", stripped)


class PatternRef(BaseModel):
    target: str = Field(pattern=TARGET_NAME, description="a name under settings targets.redis")
    pattern: str = Field(min_length=1, max_length=512, description="a Redis glob, e.g. api:v2:*")
    allow_match_all: bool = Field(
        default=False, description="allow a pattern with no literal part (flushes everything)"
    )

    @field_validator("pattern")
    @classmethod
    def _no_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the pattern is blank")
        return value

    def refuse_match_all(self) -> None:
        if match_all(self.pattern) and not self.allow_match_all:
            raise invalid_input(
                f"pattern {self.pattern!r} matches every key; name the keys (e.g. 'api:v2:*') "
                "or set allow_match_all: true",
                pattern=self.pattern,
            )


class FlushCacheInput(PatternRef):
    batch_size: int = Field(default=200, ge=1, le=MAX_BATCH)
    max_keys: int = Field(
        ge=1,
        le=MAX_KEYS_LIMIT,
        description="the blast radius: refuse (precondition) if more keys match; never delete more",
    )
    remaining_at_most: int = Field(
        default=0, ge=0, description="postcondition: keys still matching afterwards (refills)"
    )


class CacheKeysInput(PatternRef):
    at_most: int = Field(ge=0, le=MAX_KEYS_LIMIT, description="satisfied when count <= at_most")
    scan_count: int = Field(default=MAX_BATCH, ge=1, le=MAX_BATCH)


class FlushCacheOutput(BaseModel):
    target: str
    pattern: str
    deleted: int
    batches: int
    complete: bool = Field(description="false when max_keys was reached with keys left")
    remaining_at_most: int = Field(description="the bound the postcondition holds it to")
    replayed: bool = Field(default=False, description="this idempotency key had already run")


class CacheModules(RedisSet):
    """Cache maintenance on Redis targets."""

    async def count(
        self, ref: PatternRef, limit: int, scan_count: int = MAX_BATCH
    ) -> tuple[int, bool, list[str]]:
        """Keys matching, counted up to ``limit`` (then it stops: ``complete`` False)."""
        found = 0
        sample: list[str] = []
        async with self.talking(ref.target) as client:
            cursor = 0
            while True:
                cursor, keys = await client.scan(cursor, match=ref.pattern, count=scan_count)
                for key in keys:
                    if is_journal(key):
                        continue
                    found += 1
                    if len(sample) < SAMPLE_KEYS:
                        sample.append(text(key))
                    if found >= limit:
                        return found, False, sample
                if cursor == 0:
                    return found, True, sample

    @module(
        "application.flush_cache",
        domain="application",
        risk=Risk.high,
        mutates=True,
        idempotent=True,
        compensation=IRREVERSIBLE,
        preconditions=[
            CheckRef(
                check="application.cache_keys",
                with_={
                    "target": "${{ input.target }}",
                    "pattern": "${{ input.pattern }}",
                    "at_most": "${{ input.max_keys }}",
                },
            )
        ],
        postconditions=[
            CheckRef(
                check="application.cache_keys",
                with_={
                    "target": "${{ output.target }}",
                    "pattern": "${{ output.pattern }}",
                    "at_most": "${{ output.remaining_at_most }}",
                },
                deadline_s=30,
                poll_interval_s=1,
            )
        ],
        timeout=timedelta(minutes=10),
        heartbeat=timedelta(seconds=20),
    )
    async def flush_cache(self, request: FlushCacheInput) -> FlushCacheOutput:
        """Delete the keys matching a pattern, a bounded batch at a time (irreversible)."""
        request.refuse_match_all()
        async with running("application.flush_cache"), self.talking(request.target) as client:
            record_key = journal_key()
            earlier = await self.recorded(client, record_key)
            if earlier is not None:
                return FlushCacheOutput.model_validate({**earlier, "replayed": True})
            deleted = batches = 0
            cursor = 0
            complete = True
            while True:
                cursor, keys = await client.scan(
                    cursor, match=request.pattern, count=request.batch_size
                )
                keys = [k for k in keys if not is_journal(k)]
                room = request.max_keys - deleted
                if len(keys) > room:
                    keys, complete = keys[:room], False
                if keys:
                    deleted += await client.unlink(*keys)
                    batches += 1
                if cursor == 0 or not complete:
                    break
            result = FlushCacheOutput(
                target=request.target,
                pattern=request.pattern,
                deleted=deleted,
                batches=batches,
                complete=complete,
                remaining_at_most=request.remaining_at_most,
            )
            await self.record(client, record_key, result.model_dump())
            log.info(
                "cache flushed",
                target=request.target,
                pattern=request.pattern,
                deleted=deleted,
                complete=complete,
            )
            return result

    # SCAN visits the whole keyspace when few keys match: minutes on a very large one.
    @check(
        "application.cache_keys",
        domain="application",
        local=False,
        timeout=timedelta(minutes=2),
    )
    async def cache_keys(self, probe: CacheKeysInput) -> CheckResult:
        """How many keys match a pattern, against a bound (counted with SCAN, stops early)."""
        async with running("application.cache_keys"):
            found, complete, sample = await self.count(probe, probe.at_most + 1, probe.scan_count)
        satisfied = found <= probe.at_most
        counted = f"{found}" if complete else f"more than {probe.at_most}"
        where = f"keys matching {probe.pattern!r} on redis target {probe.target}"
        return CheckResult(
            satisfied=satisfied,
            observed={"count": found, "counted_all": complete, "sample": sample},
            expected={"at_most": probe.at_most},
            detail=f"{counted} {where}"
            + (", as expected" if satisfied else f"; expected at most {probe.at_most}"),
        )

    @preview("application.flush_cache")
    async def flush_cache_preview(self, request: FlushCacheInput) -> Preview:
        request.refuse_match_all()
        found, complete, sample = await self.count(request, request.max_keys + 1)
        counted = f"{found}" if complete else f"more than {request.max_keys}"
        warnings = (
            []
            if complete
            else [f"more than max_keys={request.max_keys} keys match: the step will refuse"]
        )
        return Preview(
            mutates=found > 0,
            summary=f"delete {counted} keys matching {request.pattern!r} on {request.target}",
            changes=[
                Change(
                    target=f"redis:{request.target}",
                    attribute=f"keys matching {request.pattern}",
                    before={"count": found, "counted_all": complete, "sample": sample},
                    after={"count": 0},
                )
            ],
            blast_radius={"keys": found},
            rollback="irreversible: flushed entries are not restored; the cache refills from "
            "its source",
            warnings=warnings,
        )
