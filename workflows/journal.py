"""The run's journal: timeline events, the Temporal UI banner, and the phase search attribute.

Written for the person who opens the UI at 3 a.m.: where the run stands, what it waits for,
who must act and how, what a gated step would change, and what has been rolled back.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.common import SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from fireline.messages import SA_PHASE, AuditEvent, RunPhase, RunState, StepState, StepStatus
    from workflows.compensation import undone

SA_PHASE_KEY = SearchAttributeKey.for_keyword(SA_PHASE)
EMBARGO_ROLE = "embargo"
"""The role of the gate a soft embargo puts in front of an ungated mutating step."""


class Journal:
    """Appends audit events to the run state; keeps phase, banner and search attribute current."""

    def __init__(self, state: RunState) -> None:
        self._state = state
        self._sa_phase: str | None = None

    def event(
        self,
        kind: str,
        message: str,
        *,
        step: str | None = None,
        actor: str = "fireline",
        verified: bool | None = None,
    ) -> None:
        self._state.events.append(
            AuditEvent(
                at=workflow.now(),
                actor=actor,
                kind=kind,
                step=step,
                message=message,
                verified=verified,
            )
        )
        if not workflow.unsafe.is_replaying():
            workflow.logger.info(
                "%s %s: %s", kind, step or "-", message, extra={"step": step, "actor": actor}
            )

    def refresh(self) -> None:
        """Keep the phase, the UI banner and the phase search attribute current."""
        state = self._state
        if not state.phase.terminal and state.phase is not RunPhase.compensating:
            statuses = {s.status for s in state.steps}
            if StepStatus.awaiting_decision in statuses:
                state.phase = RunPhase.awaiting_decision
            elif StepStatus.awaiting_approval in statuses:
                state.phase = RunPhase.awaiting_approval
            else:
                state.phase = RunPhase.running
        workflow.set_current_details(render_banner(state))
        phase = state.phase.value
        if phase != self._sa_phase and SA_PHASE_KEY in workflow.info().typed_search_attributes:
            workflow.upsert_search_attributes([SA_PHASE_KEY.value_set(phase)])
        self._sa_phase = phase


_ICON = {
    StepStatus.pending: "⏳",
    StepStatus.checking: "🔎",
    StepStatus.awaiting_approval: "✋",
    StepStatus.running: "▶️",
    StepStatus.verifying: "🔎",
    StepStatus.awaiting_decision: "❓",
    StepStatus.succeeded: "✅",
    StepStatus.skipped: "⏭️",
    StepStatus.failed: "❌",
    StepStatus.rejected: "🛑",
    StepStatus.cancelled: "⏹️",
    StepStatus.compensated: "↩️",
    StepStatus.compensation_failed: "🔥",
}


def render_banner(state: RunState) -> str:
    lines = [
        f"## {state.playbook} v{state.version} — {state.phase.value.upper()}",
        f"Requested by **{state.requested_by}** · plan `{state.plan_hash[:12]}`",
    ]
    if state.reason:
        lines.append(f"\n**Reason:** {state.reason}")
    waiting = [s for s in state.steps if s.status is StepStatus.awaiting_approval]
    for step in waiting:
        gate = step.gate
        if gate is None:
            continue
        got = sum(a.decision == "approved" for a in step.approvals)
        who = ", ".join(gate.approvers) if gate.approvers else "anyone named"
        if gate.role == EMBARGO_ROLE:
            who = f"a Tier {gate.tier} person, an embargo is in force"
        lines.append(
            f"\n**Waiting for approval of `{step.id}`** ({got}/{gate.min_approvals}, role "
            f"`{gate.role}`: {who}; deadline {step.gate_deadline:%H:%M:%S} UTC)\n"
            f"`fireline approve {state.workflow_id} {step.id}` (your credential says who)"
        )
        lines.extend(_preview_lines(step))
    for step in (s for s in state.steps if s.status is StepStatus.awaiting_decision):
        lines.append(
            f"\n**`{step.id}` failed and waits for a decision:** {step.error}\n"
            f"`fireline decide {state.workflow_id} {step.id} retry|skip|compensate`"
        )
    lines.append("\n| | step | status | detail |\n|---|---|---|---|")
    for step in state.steps:
        detail = step.error or ""
        if not detail and step.checks:
            detail = step.checks[-1].detail
        if step.approvals:
            who = ", ".join(
                f"{a.decision} by {a.by}" + (" (unverified)" if a.verified is False else "")
                for a in step.approvals
            )
            detail = f"{who}. {detail}".strip()
        lines.append(
            f"| {_ICON[step.status]} | {step.name} | {step.status.value} | {_cell(detail)} |"
        )
    if state.compensations:
        lines.append("\n**Rollback**")
        for comp in state.compensations:
            mark = "✅" if undone(comp) else "🔥"
            lines.append(
                f"- {mark} {comp.step}: {comp.module} {comp.status}"
                + (f" — {comp.error}" if comp.error else "")
            )
    return "\n".join(lines)


def _preview_lines(step: StepState) -> list[str]:
    """What the waiting step would change, as its module's preview read it."""
    if step.preview_error is not None:
        return [f"preview unavailable: {_cell(step.preview_error)}"]
    preview = step.preview
    if preview is None:
        return []
    out = [f"**Would change:** {_cell(preview.summary)}"]
    for change in preview.changes[:20]:
        out.append(
            f"- `{_cell(change.target)}` {_cell(change.attribute)}: "
            f"{_cell(repr(change.before))} → {_cell(repr(change.after))}"
        )
    if preview.rollback:
        out.append(f"Undo: {_cell(preview.rollback)}")
    out.extend(f"⚠️ {_cell(w)}" for w in preview.warnings[:10])
    return out


def _cell(text: str) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."
