"""Embargo windows: change freezes that protect data integrity (quarter close, a migration).

During one, a mutating step on a covered domain, service or target needs an approval from a
Tier 3 person (``soft``) or is refused outright (``hard``). A window is either one-off
(``start``/``end``, wall-clock time in ``timezone``) or weekly (days and hours).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from fireline.plan import ZoneOffset
from fireline.playbook.spec import Strict

HORIZON_YEARS = 10
"""How far ahead of compile time a zone's offsets are frozen into a plan. Past the last
transition the last offset holds; no run waits at a gate for a decade."""


class WeeklySpec(Strict):
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(min_length=1)
    start: time = Field(alias="from")
    end: time = Field(alias="to")


class EmbargoSpec(Strict):
    mode: Literal["soft", "hard"] = "soft"
    domains: list[str] = Field(default_factory=list)
    services: list[str] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list)
    timezone: str = "UTC"
    start: datetime | None = None
    end: datetime | None = None
    weekly: list[WeeklySpec] = Field(default_factory=list)
    reason: str = ""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from exc
        return value

    @field_validator("start", "end")
    @classmethod
    def _naive(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            raise ValueError("write the wall-clock time without an offset; `timezone` says where")
        return value

    @model_validator(mode="after")
    def _shape(self) -> EmbargoSpec:
        if not (self.domains or self.services or self.targets):
            raise ValueError("an embargo covers nothing: list domains, services or targets")
        if (self.start is None) != (self.end is None):
            raise ValueError("a one-off window needs both start and end")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must come after start")
        if self.start is None and not self.weekly:
            raise ValueError("an embargo needs a window: start/end, or weekly")
        return self


def zone_offsets(zone: str, now: datetime | None = None) -> list[ZoneOffset]:
    """The zone's UTC offsets from the start of last year to ``HORIZON_YEARS`` ahead.

    Resolved here, at compile time and outside any workflow sandbox, so the plan carries plain
    UTC instants and the workflow never opens the time zone database. Empty for UTC.
    """
    if zone in ("UTC", "Etc/UTC"):
        return []
    tz = ZoneInfo(zone)
    year = (now or datetime.now(UTC)).year
    at = datetime(year - 1, 1, 1, tzinfo=UTC)
    end = datetime(year + HORIZON_YEARS + 1, 1, 1, tzinfo=UTC)

    def offset(instant: datetime) -> int:
        delta = instant.astimezone(tz).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    current = offset(at)
    out = [ZoneOffset(since=at, seconds=current)]
    day = timedelta(days=1)
    while at < end:
        step = at + day
        seen = offset(step)
        if seen != current:
            # The change lies in (at, step]: narrow it to the second.
            low, high = at, step
            while high - low > timedelta(seconds=1):
                mid = low + (high - low) / 2
                if offset(mid) == current:
                    low = mid
                else:
                    high = mid
            out.append(ZoneOffset(since=high.replace(microsecond=0), seconds=seen))
            current = seen
        at = step
    return out
