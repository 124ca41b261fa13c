"""The incident report: MTTA, containment, MTTR, automation share, escalations, recurrence.

Pure functions over incident states (the caller lists them from Temporal); drills are left
out, as are incidents opened before ``since`` or for another service than asked.
Percentiles use the nearest-rank method, so every figure is a duration that really happened.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from fireline.incident import IncidentPhase, IncidentState

AUTOMATIC = frozenset({"alert", "automation"})


class Durations(BaseModel):
    count: int = 0
    median_s: float | None = None
    p90_s: float | None = None


class Report(BaseModel):
    since: datetime | None = None
    service: str | None = None
    incidents: int = 0
    open: int = 0
    drills_excluded: int = 0
    time_to_acknowledge: Durations = Field(default_factory=Durations)
    time_to_containment: Durations = Field(default_factory=Durations)
    time_to_resolve: Durations = Field(default_factory=Durations)
    resolved_automatically: float | None = None
    """Share of resolved incidents closed by their alerts or their run, not a person."""
    automatic_remediations: int = 0
    verification_passed: float | None = None
    """Share of automatic remediations (runs nobody let through the guard) whose checks held."""
    escalations_per_tier: dict[str, int] = Field(default_factory=dict)
    pages: int = 0
    pages_per_incident: float | None = None
    failed_pages: int = 0
    per_service: dict[str, int] = Field(default_factory=dict)
    per_alert: dict[str, int] = Field(default_factory=dict)
    reopened: int = 0


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``p`` percent at or below."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _durations(values: list[float]) -> Durations:
    return Durations(
        count=len(values), median_s=percentile(values, 50), p90_s=percentile(values, 90)
    )


def _since_open(s: IncidentState, end: datetime | None) -> float | None:
    if s.opened_at is None or end is None:
        return None
    return (end - s.opened_at).total_seconds()


def build_report(
    incidents: list[IncidentState], since: datetime | None = None, service: str | None = None
) -> Report:
    chosen = [
        s
        for s in incidents
        if (since is None or (s.opened_at is not None and s.opened_at >= since))
        and (service is None or s.service == service)
    ]
    drills = [s for s in chosen if s.drill]
    real = [s for s in chosen if not s.drill]
    report = Report(since=since, service=service, incidents=len(real), drills_excluded=len(drills))
    if not real:
        return report
    closed = [s for s in real if s.resolved_at is not None]
    report.open = len(real) - len(closed)

    def measured(end_of: str) -> list[float]:
        values = [_since_open(s, getattr(s, end_of)) for s in real]
        return [v for v in values if v is not None]

    report.time_to_acknowledge = _durations(measured("acknowledged_at"))
    report.time_to_containment = _durations(measured("contained_at"))
    report.time_to_resolve = _durations(measured("resolved_at"))
    resolved = [s for s in closed if s.phase is IncidentPhase.resolved]
    if resolved:
        automatic = [s for s in resolved if s.resolved_by in AUTOMATIC]
        report.resolved_automatically = len(automatic) / len(resolved)
    remediations = [
        s
        for s in real
        if s.run.mutated and s.guard_approved_by is None and s.run.verified is not None
    ]
    report.automatic_remediations = len(remediations)
    if remediations:
        report.verification_passed = sum(s.run.verified is True for s in remediations) / len(
            remediations
        )
    tiers: Counter[str] = Counter()
    for s in real:
        tiers.update(s.escalations_per_tier)
    report.escalations_per_tier = dict(sorted(tiers.items()))
    report.pages = sum(len(s.pages) for s in real)
    report.failed_pages = sum(1 for s in real for p in s.pages if not p.delivered)
    report.pages_per_incident = report.pages / len(real)
    report.per_service = dict(Counter(s.service for s in real).most_common())
    alerts: Counter[str] = Counter()
    for s in real:
        alerts.update({name: 1 for name in s.alerts.by_name})
    report.per_alert = dict(alerts.most_common())
    report.reopened = _reopened(real)
    return report


def _reopened(incidents: list[IncidentState]) -> int:
    """Incidents linked to an earlier one, or whose key had one already resolved."""
    earliest = datetime.min.replace(tzinfo=UTC)
    count = 0
    by_key: dict[str, list[IncidentState]] = {}
    for s in incidents:
        by_key.setdefault(s.key, []).append(s)
    for runs in by_key.values():
        runs.sort(key=lambda s: s.opened_at or earliest)
        for n, later in enumerate(runs):
            opened = later.opened_at or earliest
            before = [e.resolved_at for e in runs[:n] if e.resolved_at is not None]
            if later.previous_incident or any(closed <= opened for closed in before):
                count += 1
    return count
