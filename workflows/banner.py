"""The Markdown banner a run shows in the Temporal UI (its "current details").

Written for the person who opens the UI at 3 a.m.: where the run stands, what it waits for,
who must act and how, and what has been rolled back.
"""

from __future__ import annotations

from fireline.messages import RunState, StepStatus

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
        lines.append(
            f"\n**Waiting for approval of `{step.id}`** ({got}/{gate.min_approvals}, role "
            f"`{gate.role}`: {who}; deadline {step.gate_deadline:%H:%M:%S} UTC)\n"
            f"`fireline approve {state.workflow_id} {step.id} --as NAME`"
        )
    for step in (s for s in state.steps if s.status is StepStatus.awaiting_decision):
        lines.append(
            f"\n**`{step.id}` failed and waits for a decision:** {step.error}\n"
            f"`fireline decide {state.workflow_id} {step.id} retry|skip|compensate --as NAME`"
        )
    lines.append("\n| | step | status | detail |\n|---|---|---|---|")
    for step in state.steps:
        detail = step.error or ""
        if not detail and step.checks:
            detail = step.checks[-1].detail
        if step.approvals:
            who = ", ".join(f"{a.decision} by {a.by}" for a in step.approvals)
            detail = f"{who}. {detail}".strip()
        lines.append(
            f"| {_ICON[step.status]} | {step.name} | {step.status.value} | {_cell(detail)} |"
        )
    if state.compensations:
        lines.append("\n**Rollback**")
        for comp in state.compensations:
            mark = "✅" if comp.status == "succeeded" and comp.verified is not False else "🔥"
            lines.append(
                f"- {mark} {comp.step}: {comp.module} {comp.status}"
                + (f" — {comp.error}" if comp.error else "")
            )
    return "\n".join(lines)


def _cell(text: str) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."
