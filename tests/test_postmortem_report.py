"""Timeline, postmortem draft and report on crafted incidents (pure functions, no Temporal)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fireline.incident import (
    AckRecord,
    AlertCounts,
    GuardStatus,
    IncidentPhase,
    IncidentState,
    PageRecord,
    RunSummary,
    TimelineEvent,
)
from fireline.messages import (
    ApprovalRecord,
    AuditEvent,
    CheckObservation,
    CompensationRecord,
    RunPhase,
    RunState,
    StepState,
    StepStatus,
)
from fireline.operator.postmortem import (
    postmortem_markdown,
    timeline,
    timeline_json,
    timeline_markdown,
)
from fireline.operator.report import build_report, percentile

T0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def page(minute: float, person: str, tier: int, delivered: bool = True) -> PageRecord:
    return PageRecord(
        at=at(minute),
        person=person,
        tier=tier,
        level=tier - 1,
        cycle=0,
        channel="webhook:default",
        delivered=delivered,
        error=None if delivered else "503",
    )


def incident(
    n: int,
    *,
    service: str = "payments",
    ack: float | None = 4,
    contained: float | None = 10,
    resolved: float | None = 20,
    resolved_by: str | None = "alice",
    drill: bool = False,
    mutated: bool = False,
    verified: bool | None = None,
    human: str | None = None,
    key: str | None = None,
    opened: float = 0,
    tiers: dict[str, int] | None = None,
    alerts: dict[str, int] | None = None,
) -> IncidentState:
    return IncidentState(
        incident_id=f"incident-{n}",
        key=key or f"k{n}",
        service=service,
        severity="critical",
        title=f"HighErrorRate {n}",
        phase=IncidentPhase.resolved if resolved is not None else IncidentPhase.triaging,
        drill=drill,
        opened_at=at(opened),
        acknowledged_at=at(opened + ack) if ack is not None else None,
        acknowledged_by="alice" if ack is not None else None,
        contained_at=at(opened + contained) if contained is not None else None,
        resolved_at=at(opened + resolved) if resolved is not None else None,
        resolved_by=resolved_by if resolved is not None else None,
        alerts=AlertCounts(total=3, by_name=alerts or {"HighErrorRate": 3}, first_at=at(opened)),
        pages=[page(opened, "alice", 1), page(opened + 5, "carol", 2)],
        escalations_per_tier=tiers if tiers is not None else {"1": 1, "2": 1},
        run=RunSummary(
            workflow_id=f"incident-{n}.run",
            playbook="fix",
            phase="succeeded",
            mutated=mutated,
            verified=verified,
        ),
        guard_approved_by=human,
    )


class TestPercentile:
    @pytest.mark.parametrize(
        ("values", "p", "expected"),
        [
            ([], 50, None),
            ([5], 90, 5),
            ([1, 2, 3, 4], 50, 2),
            ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90, 9),
            ([10, 1, 5], 50, 5),
        ],
    )
    def test_nearest_rank(self, values: list[float], p: float, expected: float | None) -> None:
        assert percentile(values, p) == expected


class TestReport:
    def test_figures_on_crafted_incidents(self) -> None:
        """Four real incidents and a drill: the drill changes nothing, every figure checks out."""
        incidents = [
            incident(
                1, ack=2, contained=6, resolved=10, resolved_by="alert", mutated=True, verified=True
            ),
            incident(
                2,
                ack=4,
                contained=8,
                resolved=30,
                resolved_by="automation",
                mutated=True,
                verified=False,
            ),
            incident(
                3,
                ack=6,
                contained=None,
                resolved=60,
                resolved_by="bob",
                tiers={"1": 1, "2": 1, "3": 1},
            ),
            incident(
                4, ack=None, contained=None, resolved=None, service="search", alerts={"DiskFull": 1}
            ),
            incident(5, ack=1, resolved=2, drill=True, mutated=True, verified=False),
        ]
        report = build_report(incidents)
        assert report.incidents == 4
        assert report.drills_excluded == 1
        assert report.open == 1
        assert report.time_to_acknowledge.model_dump() == {
            "count": 3,
            "median_s": 240.0,
            "p90_s": 360.0,
        }
        assert report.time_to_containment.median_s == 360.0
        assert report.time_to_resolve.model_dump() == {
            "count": 3,
            "median_s": 1800.0,
            "p90_s": 3600.0,
        }
        assert report.resolved_automatically == pytest.approx(2 / 3)
        assert report.automatic_remediations == 2
        assert report.verification_passed == 0.5
        assert report.escalations_per_tier == {"1": 4, "2": 4, "3": 1}
        assert report.pages == 8
        assert report.pages_per_incident == 2.0
        assert report.per_service == {"payments": 3, "search": 1}
        assert report.per_alert == {"HighErrorRate": 3, "DiskFull": 1}

    def test_human_approved_runs_are_not_automatic_remediations(self) -> None:
        report = build_report([incident(1, mutated=True, verified=True, human="carol")])
        assert report.automatic_remediations == 0
        assert report.verification_passed is None

    def test_since_and_service_filters(self) -> None:
        incidents = [
            incident(1, opened=0),
            incident(2, opened=600),
            incident(3, opened=700, service="search"),
        ]
        assert build_report(incidents, since=at(300)).incidents == 2
        assert build_report(incidents, service="search").per_service == {"search": 1}
        empty = build_report(incidents, since=at(10_000))
        assert empty.incidents == 0
        assert empty.time_to_resolve.median_s is None

    def test_reopened_counts_a_key_that_came_back_after_resolving(self) -> None:
        """Same key: second opened after the first resolved -> one reopened incident."""
        first = incident(1, key="same", opened=0, resolved=10)
        again = incident(2, key="same", opened=30, resolved=40)
        overlapping = incident(3, key="other", opened=0, resolved=50)
        overlapping2 = incident(4, key="other", opened=20, resolved=60)
        assert build_report([first, again, overlapping, overlapping2]).reopened == 1

    def test_failed_pages_counted(self) -> None:
        s = incident(1)
        s.pages.append(page(7, "dana", 3, delivered=False))
        assert build_report([s]).failed_pages == 1


def run_state() -> RunState:
    return RunState(
        workflow_id="incident-1.run",
        playbook="fix",
        version="1",
        plan_hash="abc",
        phase=RunPhase.compensated,
        started_at=at(1),
        finished_at=at(9),
        steps=[
            StepState(
                id="restart",
                name="Restart api",
                module="core.http_request",
                status=StepStatus.compensated,
                inputs={"url": "http://api/restart"},
                outputs={"status": 200},
                started_at=at(3),
                finished_at=at(8),
                approvals=[
                    ApprovalRecord(
                        by="carol", decision="approved", comment="error rate 40%", at=at(2.5)
                    )
                ],
                checks=[
                    CheckObservation(
                        check="core.http_probe",
                        stage="post",
                        satisfied=False,
                        observed={"status": 500},
                        expected={"status": [200]},
                        detail="500",
                        at=at(7),
                    )
                ],
            )
        ],
        compensations=[
            CompensationRecord(
                step="restart",
                module="core.http_request",
                domain="core",
                status="succeeded",
                verified=True,
                input={"url": "http://api/undo"},
            )
        ],
        events=[
            AuditEvent(
                at=at(2),
                actor="fireline",
                kind="gate_opened",
                step="restart",
                message="needs 1 approval",
            ),
            AuditEvent(at=at(2.5), actor="carol", kind="approved", step="restart", message="dup"),
        ],
    )


def crafted() -> IncidentState:
    s = incident(1, mutated=True, verified=False)
    s.acks = [AckRecord(at=at(4), by="alice")]
    s.commander = "dana"
    s.guard = GuardStatus(allowed=True)
    s.timeline = [
        TimelineEvent(
            at=at(0), kind="alert", actor="alertmanager", message="firing: HighErrorRate"
        ),
        TimelineEvent(at=at(0.1), kind="page", message="paged alice (tier 1) via webhook:default"),
        TimelineEvent(at=at(4), kind="ack", actor="alice", message="looking"),
        TimelineEvent(at=at(5), kind="command", actor="dana", message="dana took command"),
        TimelineEvent(at=at(20), kind="resolved", actor="alice", message="fixed by hand"),
    ]
    return s


class TestTimeline:
    def test_merges_incident_and_run_in_time_order(self) -> None:
        """Alert, page, approval with why, action with inputs, check observed vs expected, undo."""
        events = timeline(crafted(), run_state())
        kinds = [e.kind for e in events]
        assert kinds == [
            "alert",
            "page",
            "run.gate_opened",
            "approval",
            "action",
            "ack",
            "command",
            "check",
            "action_result",
            "compensation",
            "resolved",
        ]
        assert events == sorted(events, key=lambda e: e.at)
        approval = events[3]
        assert (approval.actor, approval.data["why"]) == ("carol", "error rate 40%")
        check = events[7]
        assert check.data["observed"] == {"status": 500}
        assert check.data["expected"] == {"status": [200]}
        assert events[4].data["inputs"] == {"url": "http://api/restart"}

    def test_json_and_markdown(self) -> None:
        data = timeline_json(crafted(), run_state())
        assert data[0]["at"].startswith("2026-03-02T14:00:00")
        text = timeline_markdown(crafted(), run_state())
        assert "| 2026-03-02 14:07:00 | check |" in text
        assert '"observed": {"status": 500}' in text

    def test_hostile_text_cannot_break_the_table(self) -> None:
        """A pipe or newline from an alert summary stays inside its cell."""
        s = crafted()
        s.timeline.append(TimelineEvent(at=at(1), kind="alert", message="a|b\n| injected | row |"))
        rows = [r for r in timeline_markdown(s).splitlines() if r.startswith("| 2026")]
        assert all(r.count(" | ") == 3 for r in rows)


class TestPostmortem:
    def test_draft_has_every_section(self) -> None:
        text = postmortem_markdown(crafted(), run_state())
        for heading in (
            "## Summary",
            "## Impact window",
            "## Decisions",
            "## What the checks observed",
            "## Timeline",
            "## Review prompts",
        ):
            assert heading in text
        assert "- **Start:** 2026-03-02 14:00:00 UTC" in text
        assert "- **End:** 2026-03-02 14:20:00 UTC" in text
        assert (
            "**Duration:** 20m00s · time to acknowledge 4m00s · time to containment 10m00s" in text
        )
        decisions = text.split("## Decisions")[1].split("##")[0]
        assert "| 14:02:30 | carol | approved `restart`: error rate 40% |" in decisions
        assert "| 14:05:00 | dana | dana took command |" in decisions
        assert "| restart | core.http_probe | post | NO |" in text
        prompts = text.split("## Review prompts")[1]
        assert "`restart` waited for a human" in prompts
        assert "A check on `restart` was not satisfied" in prompts
        assert "tier 2" in prompts

    def test_open_incident_without_run(self) -> None:
        s = incident(9, ack=None, contained=None, resolved=None)
        text = postmortem_markdown(s)
        assert "- **End:** still open" in text
        assert "_No check ran._" in text
        assert "_No human decision was recorded._" in text
