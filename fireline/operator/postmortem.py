"""An incident's timeline and its postmortem draft, from the incident's state and its run's.

Pure functions: the caller fetches :class:`fireline.incident.IncidentState` (the incident's
``status`` query) and, when the incident ran a playbook, the run's
:class:`fireline.messages.RunState`; nothing here talks to Temporal, so the CLI, the API and
the tests all render the same record from the same data.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from fireline.incident import IncidentState, TimelineEvent
from fireline.messages import RunState
from fireline.plan import Plan

_RUN_KINDS_SHOWN_ELSEWHERE = frozenset(
    {"approved", "rejected", "check_passed", "check_failed", "step_started", "step_succeeded"}
)
"""Run audit events already shown from the structured step record (inputs, outputs, checks)."""

DECISION_KINDS = frozenset(
    {"ack", "command", "approval", "rejection", "resolved", "closed", "decision_forwarded"}
)


def timeline(incident: IncidentState, run: RunState | None = None) -> list[TimelineEvent]:
    """Every alert, page, ack, approval, action, check and compensation, in time order."""
    events = list(incident.timeline)
    if run is not None:
        events += _run_events(run)
    return sorted(events, key=lambda e: e.at)


def _run_events(run: RunState) -> list[TimelineEvent]:
    out: list[TimelineEvent] = []
    for step in run.steps:
        if step.started_at is not None and step.inputs is not None:
            out.append(
                TimelineEvent(
                    at=step.started_at,
                    kind="action",
                    step=step.id,
                    message=f"{step.name} ({step.module or step.kind}) started",
                    data={"inputs": step.inputs},
                )
            )
        for approval in step.approvals:
            out.append(
                TimelineEvent(
                    at=approval.at,
                    kind="approval" if approval.decision == "approved" else "rejection",
                    actor=approval.by,
                    step=step.id,
                    message=f"{approval.decision} `{step.id}`"
                    + (f": {approval.comment}" if approval.comment else ""),
                    data={"why": approval.comment},
                )
            )
        for obs in step.checks:
            out.append(
                TimelineEvent(
                    at=obs.at,
                    kind="check",
                    step=step.id,
                    message=f"{obs.stage} {obs.check}: "
                    + ("satisfied" if obs.satisfied else "NOT satisfied")
                    + (f" — {obs.detail}" if obs.detail else ""),
                    data={
                        "observed": obs.observed,
                        "expected": obs.expected,
                        "satisfied": obs.satisfied,
                        "attempts": obs.attempts,
                    },
                )
            )
        if step.finished_at is not None and step.status.value not in ("pending",):
            out.append(
                TimelineEvent(
                    at=step.finished_at,
                    kind="action_result",
                    step=step.id,
                    message=f"{step.name}: {step.status.value}"
                    + (f" — {step.error}" if step.error else ""),
                    data={"outputs": step.outputs or {}},
                )
            )
    at = run.finished_at or run.started_at
    if at is not None:
        for comp in run.compensations:
            out.append(
                TimelineEvent(
                    at=at,
                    kind="compensation",
                    step=comp.step,
                    message=f"undo {comp.module}: {comp.status}"
                    + (f" (verified: {comp.verified})" if comp.verified is not None else "")
                    + (f" — {comp.error}" if comp.error else ""),
                    data={"input": comp.input},
                )
            )
    for event in run.events:
        if event.kind in _RUN_KINDS_SHOWN_ELSEWHERE:
            continue
        out.append(
            TimelineEvent(
                at=event.at,
                kind=f"run.{event.kind}",
                actor=event.actor,
                step=event.step,
                message=event.message,
            )
        )
    return out


def timeline_json(incident: IncidentState, run: RunState | None = None) -> list[dict[str, Any]]:
    return [e.model_dump(mode="json") for e in timeline(incident, run)]


def timeline_markdown(incident: IncidentState, run: RunState | None = None) -> str:
    lines = [
        f"# Timeline: {incident.title or incident.key}",
        "",
        "| time (UTC) | what | who | detail |",
        "|---|---|---|---|",
    ]
    for e in timeline(incident, run):
        detail = e.message
        extra = _extra(e)
        if extra:
            detail = f"{detail} `{extra}`"
        lines.append(
            f"| {e.at:%Y-%m-%d %H:%M:%S} | {e.kind} | {_cell(e.actor)} | {_cell(detail)} |"
        )
    if incident.timeline_dropped:
        lines.append(f"\n_{incident.timeline_dropped} older incident events were dropped._")
    return "\n".join(lines)


def _extra(event: TimelineEvent) -> str:
    keys = ("inputs", "outputs", "observed", "expected", "input")
    shown = {k: event.data[k] for k in keys if event.data.get(k) not in (None, {}, [])}
    if not shown:
        return ""
    text = json.dumps(shown, default=str, sort_keys=True)
    return text if len(text) <= 300 else text[:297] + "..."


def _cell(text: str) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 400 else text[:397] + "..."


def _span(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "—"
    return _human(end - start)


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def review_prompts(incident: IncidentState, run: RunState | None, plan: Plan | None) -> list[str]:
    """Questions for the review: the playbook's own, then ones drawn from what happened."""
    prompts: list[str] = list(getattr(plan, "review", None) or [])
    if incident.acknowledged_at and incident.opened_at:
        prompts.append(
            f"It took {_span(incident.opened_at, incident.acknowledged_at)} to acknowledge: "
            "was the right person paged first?"
        )
    tiers = sorted(int(t) for t in incident.escalations_per_tier if int(t) > 1)
    if tiers:
        prompts.append(f"The ladder reached tier {tiers[-1]}: why did the earlier tiers not act?")
    if incident.guard.needs_human:
        prompts.append(
            "The remediation guard held the run (" + "; ".join(incident.guard.reasons) + "): "
            "was the limit right?"
        )
    if run is not None:
        for step in run.steps:
            if step.approvals:
                prompts.append(f"`{step.id}` waited for a human: could it run unattended safely?")
            if any(not c.satisfied for c in step.checks):
                prompts.append(
                    f"A check on `{step.id}` was not satisfied: is the check or the fix wrong?"
                )
        if any(c.status == "failed" for c in run.compensations):
            prompts.append("An undo failed: what was left changed, and how was it repaired?")
    if failed := [p for p in incident.pages if not p.delivered]:
        prompts.append(f"{len(failed)} page(s) failed to deliver: is the paging channel healthy?")
    if incident.previous_incident:
        prompts.append("This key had an incident before: why did the fix not hold?")
    prompts.append("What would have prevented the alert from firing at all?")
    return prompts


def postmortem_markdown(
    incident: IncidentState, run: RunState | None = None, plan: Plan | None = None
) -> str:
    """A draft for the review: summary, impact, timeline, decisions, checks, review prompts."""
    s = incident
    start = s.alerts.first_at or s.opened_at
    lines = [
        f"# Postmortem draft: {s.title or s.key}",
        "",
        "## Summary",
        "",
        f"- **Service:** {s.service} · **severity:** {s.severity} · **key:** `{s.key}`"
        + (" · **drill**" if s.drill else ""),
        f"- **Outcome:** {s.phase.value}"
        + (f" — {s.resolution}" if s.resolution else "")
        + (f" (by {s.resolved_by})" if s.resolved_by else "")
        + (" · auto-resolved" if s.auto_resolved else ""),
        f"- **Commander:** {s.commander or 'none'} · **acknowledged by:** "
        f"{s.acknowledged_by or 'nobody'}",
        f"- **Alerts:** {s.alerts.total} ({s.alerts.duplicates} duplicate deliveries ignored); "
        + ", ".join(f"{name} x{n}" for name, n in sorted(s.alerts.by_name.items())),
    ]
    if s.run.workflow_id:
        lines.append(
            f"- **Playbook:** {s.run.playbook} (`{s.run.workflow_id}`): {s.run.phase}"
            + (
                f", verification {'passed' if s.run.verified else 'failed'}"
                if s.run.verified is not None
                else ""
            )
        )
    lines += [
        "",
        "## Impact window",
        "",
        f"- **Start:** {start:%Y-%m-%d %H:%M:%S} UTC" if start else "- **Start:** unknown",
        f"- **End:** {s.resolved_at:%Y-%m-%d %H:%M:%S} UTC"
        if s.resolved_at
        else "- **End:** still open",
        f"- **Duration:** {_span(start, s.resolved_at)} · time to acknowledge "
        f"{_span(s.opened_at, s.acknowledged_at)} · time to containment "
        f"{_span(s.opened_at, s.contained_at)}",
        f"- **Pages:** {len(s.pages)} ("
        + ", ".join(f"tier {t}: {n}" for t, n in sorted(s.escalations_per_tier.items()))
        + ")",
        "",
        "## Decisions",
        "",
    ]
    decisions = [e for e in timeline(s, run) if e.kind in DECISION_KINDS]
    if decisions:
        lines += ["| time (UTC) | who | decision |", "|---|---|---|"]
        lines += [f"| {e.at:%H:%M:%S} | {_cell(e.actor)} | {_cell(e.message)} |" for e in decisions]
    else:
        lines.append("_No human decision was recorded._")
    lines += ["", "## What the checks observed", ""]
    checks = [(st, c) for st in (run.steps if run else []) for c in st.checks]
    if checks:
        lines += [
            "| step | check | stage | ok | observed | expected |",
            "|---|---|---|---|---|---|",
        ]
        for st, c in checks:
            lines.append(
                f"| {st.id} | {c.check} | {c.stage} | {'yes' if c.satisfied else 'NO'} | "
                f"{_cell(json.dumps(c.observed, default=str))} | "
                f"{_cell(json.dumps(c.expected, default=str))} |"
            )
    else:
        lines.append("_No check ran._")
    lines += ["", "## Timeline", "", timeline_markdown(s, run).split("\n", 2)[2], ""]
    lines += ["## Review prompts", ""]
    lines += [f"- {p}" for p in review_prompts(s, run, plan)]
    return "\n".join(lines) + "\n"
