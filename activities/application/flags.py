"""Feature flags in Redis: set, clear and restore, each recording the value it found.

A flag NAME is the string key ``flag_prefix + NAME`` of its target (``flag:NAME`` by default).
The change and the record of the prior value happen in one Lua script, so a retry of the same
step (same idempotency key) changes nothing and reports the value the first attempt found;
the compensation restores exactly that value, or absence.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Literal

import structlog
from pydantic import BaseModel, Field

from activities.application.redis_client import JOURNAL_TTL_S, RedisSet, journal_key, text
from activities.core.evidence import setting_preview, state_result
from activities.core.runtime import running
from fireline.modules import CheckRef, CheckResult, CompensationRef, check, module, preview
from fireline.plan import Change, Preview, Risk

from .targets import TARGET_NAME

log = structlog.get_logger(__name__)

FLAG_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}$"
VALUE_LIMIT = 4096
"""Flag values are switches and small settings, not documents; they go into history."""

_CHANGE = """
local done = redis.call('GET', KEYS[2])
if done then return {1, done} end
local prev = redis.call('GET', KEYS[1])
if ARGV[1] == 'set' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
local rec
if prev then
  rec = cjson.encode({present = true, previous = prev})
else
  rec = cjson.encode({present = false})
end
redis.call('SET', KEYS[2], rec, 'EX', ARGV[3])
return {0, rec}
"""
"""Read the prior value, change the flag and journal both, atomically; replay a journalled step."""


class FlagRef(BaseModel):
    target: str = Field(pattern=TARGET_NAME, description="a name under settings targets.redis")
    flag: str = Field(pattern=FLAG_NAME)


class SetFlagInput(FlagRef):
    value: str = Field(max_length=VALUE_LIMIT)
    expect_current: str | None = Field(
        default=None, max_length=VALUE_LIMIT, description="refuse unless the flag has this value"
    )
    expect_absent: Literal[True] | None = Field(
        default=None, description="refuse unless the flag is not set at all"
    )


class ClearFlagInput(FlagRef):
    expect_current: str | None = Field(
        default=None, max_length=VALUE_LIMIT, description="refuse unless the flag has this value"
    )


class RestoreFlagInput(FlagRef):
    value: str | None = Field(
        default=None, max_length=VALUE_LIMIT, description="the value to put back; null: absent"
    )


class FlagIsInput(FlagRef):
    value: str | None = Field(
        default=None, max_length=VALUE_LIMIT, description="expected value; null: not set"
    )


class FlagChange(BaseModel):
    target: str
    flag: str
    previous: str | None = Field(description="the value found before the change; null: absent")
    value: str | None = Field(description="the value now; null: absent")
    changed: bool
    replayed: bool = Field(
        default=False, description="this idempotency key had already run: nothing was changed"
    )


def _show(value: str | None) -> str:
    return "absent" if value is None else repr(value)


def _flag_pre(value: str) -> list[CheckRef]:
    common = {"target": "${{ input.target }}", "flag": "${{ input.flag }}"}
    return [
        CheckRef(
            check="application.flag_is",
            with_={**common, "value": "${{ input.expect_current }}"},
            when="expect_current",
        ),
        *(
            [
                CheckRef(
                    check="application.flag_is",
                    with_={**common, "value": None},
                    when="expect_absent",
                )
            ]
            if value == "set"
            else []
        ),
    ]


def _flag_post(value: Any) -> list[CheckRef]:
    return [
        CheckRef(
            check="application.flag_is",
            with_={"target": "${{ output.target }}", "flag": "${{ output.flag }}", "value": value},
            deadline_s=30,
            poll_interval_s=1,
        )
    ]


_RESTORE = CompensationRef(
    module="application.restore_flag",
    with_={
        "target": "${{ input.target }}",
        "flag": "${{ input.flag }}",
        "value": "${{ output.previous }}",
    },
)


class FlagModules(RedisSet):
    """Feature flags stored as Redis strings, one key per flag."""

    def key(self, ref: FlagRef) -> str:
        return self.target(ref.target).flag_prefix + ref.flag

    async def _change(self, module_name: str, ref: FlagRef, value: str | None) -> FlagChange:
        async with running(module_name), self.talking(ref.target) as client:
            script = client.register_script(_CHANGE)
            mode = "del" if value is None else "set"
            replayed, raw = await script(
                keys=[self.key(ref), journal_key()], args=[mode, value or "", JOURNAL_TTL_S]
            )
            record = json.loads(raw)
            previous = record["previous"] if record["present"] else None
            result = FlagChange(
                target=ref.target,
                flag=ref.flag,
                previous=previous,
                value=value,
                changed=previous != value and not replayed,
                replayed=bool(replayed),
            )
            log.info(
                "flag changed" if result.changed else "flag unchanged",
                target=ref.target,
                flag=ref.flag,
                previous=_show(previous),
                value=_show(value),
                replayed=result.replayed,
            )
            return result

    @module(
        "application.set_flag",
        domain="application",
        risk=Risk.medium,
        mutates=True,
        compensation=_RESTORE,
        preconditions=_flag_pre("set"),
        postconditions=_flag_post("${{ output.value }}"),
        timeout=timedelta(seconds=30),
    )
    async def set_flag(self, request: SetFlagInput) -> FlagChange:
        """Set a feature flag (shed load, switch a path off), recording the value it had."""
        return await self._change("application.set_flag", request, request.value)

    @module(
        "application.clear_flag",
        domain="application",
        risk=Risk.medium,
        mutates=True,
        compensation=_RESTORE,
        preconditions=_flag_pre("clear"),
        postconditions=_flag_post(None),
        timeout=timedelta(seconds=30),
    )
    async def clear_flag(self, request: ClearFlagInput) -> FlagChange:
        """Remove a feature flag, recording the value it had."""
        return await self._change("application.clear_flag", request, None)

    @module(
        "application.restore_flag",
        domain="application",
        risk=Risk.medium,
        mutates=True,
        compensation=_RESTORE,
        postconditions=_flag_post("${{ output.value }}"),
        timeout=timedelta(seconds=30),
    )
    async def restore_flag(self, request: RestoreFlagInput) -> FlagChange:
        """Put a flag back to a recorded value, or remove it when the record says absent."""
        return await self._change("application.restore_flag", request, request.value)

    @check("application.flag_is", domain="application", local=False)
    async def flag_is(self, probe: FlagIsInput) -> CheckResult:
        """Whether a flag has the expected value (or is absent, when null is expected)."""
        async with running("application.flag_is"), self.talking(probe.target) as client:
            raw = await client.get(self.key(probe))
        current = None if raw is None else text(raw)
        satisfied = current == probe.value
        where = f"flag {probe.flag} on redis target {probe.target}"
        return state_result(
            where,
            _show(current),
            _show(probe.value),
            satisfied=satisfied,
            observed={"value": current, "present": current is not None},
            expected={"value": probe.value, "present": probe.value is not None},
        )

    async def _preview(self, ref: FlagRef, after: str | None) -> Preview:
        async with self.talking(ref.target) as client:
            raw = await client.get(self.key(ref))
        before = None if raw is None else text(raw)
        return setting_preview(
            Change(
                target=f"redis:{ref.target}",
                attribute=f"flag {ref.flag}",
                before=before,
                after=after,
            ),
            f"flag {ref.flag}: {_show(before)} -> {_show(after)}",
            "flags",
            f"application.restore_flag puts back {_show(before)}",
        )

    @preview("application.set_flag")
    async def set_flag_preview(self, request: SetFlagInput) -> Preview:
        return await self._preview(request, request.value)

    @preview("application.clear_flag")
    async def clear_flag_preview(self, request: ClearFlagInput) -> Preview:
        return await self._preview(request, None)

    @preview("application.restore_flag")
    async def restore_flag_preview(self, request: RestoreFlagInput) -> Preview:
        return await self._preview(request, request.value)
