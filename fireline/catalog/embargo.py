"""Embargo windows: change freezes that protect data integrity (quarter close, a migration).

During one, a mutating step on a covered domain, service or target needs an approval from a
Tier 3 person (``soft``) or is refused outright (``hard``). A window is either one-off
(``start``/``end``, wall-clock time in ``timezone``) or weekly (days and hours).
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from fireline.playbook.spec import Strict


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
