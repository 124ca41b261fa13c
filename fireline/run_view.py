"""What an incident knows of its run: the part of the run's status it acts on.

The run computes this view itself and reports it to the incident that started it (a
``run_status`` signal when :func:`signature` changes, see ``RunRequest.report_to``); the
incident can also read it from the run's ``status`` query (``core.run_status``): its safety
net, the check before it treats the run as finished, and how incidents opened before the
reports learn of their run. Both ends share this module, so the two ways
give the same answer.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from fireline.messages import RunState, StepState, StepStatus


class RunStepView(BaseModel):
    id: str
    status: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    gate_tier: int | None = None
    gate_role: str | None = None
    approvers: list[str] | None = None
    post_failed: bool = False
    post_passed: bool = False
    preview: str | None = None
    """What the step would change, in one line, while it waits at its gate (for the pages)."""
    mutates: bool = False


PREVIEW_CHARS = 300
"""A page carries the preview's gist; the whole preview is in the run's status."""


def preview_line(step: StepState) -> str | None:
    """One line an approver can read in a page: the change and how far it reaches."""
    if step.preview is not None:
        reach = ", ".join(f"{n} {what}" for what, n in sorted(step.preview.blast_radius.items()))
        line = step.preview.summary + (f" ({reach})" if reach else "")
    elif step.preview_error:
        line = f"preview unavailable: {step.preview_error}"
    else:
        return None
    return line[:PREVIEW_CHARS]


class RunStatusView(BaseModel):
    """The part of a run's status the incident acts on (not the whole RunState)."""

    found: bool
    phase: str | None = None
    reason: str | None = None
    steps: list[RunStepView] = Field(default_factory=list)


def summarise(state: RunState) -> RunStatusView:
    steps = []
    for s in state.steps:
        posts = [c for c in s.checks if c.stage == "post"]
        steps.append(
            RunStepView(
                id=s.id,
                status=s.status.value,
                started_at=s.started_at,
                finished_at=s.finished_at,
                gate_tier=s.gate.tier if s.gate else None,
                gate_role=s.gate.role if s.gate else None,
                approvers=s.gate.approvers if s.gate else None,
                post_failed=any(not c.satisfied for c in posts)
                or (s.status is StepStatus.failed and bool(posts)),
                post_passed=bool(posts) and all(c.satisfied for c in posts),
                preview=preview_line(s) if s.status is StepStatus.awaiting_approval else None,
                mutates=s.mutates,
            )
        )
    return RunStatusView(found=True, phase=state.phase.value, reason=state.reason, steps=steps)


class RunReport(BaseModel):
    """Signal from a run to the incident that started it: its status view, as of now."""

    run_id: str = Field(min_length=1, max_length=4096)
    view: RunStatusView


CHANGED = frozenset(
    {"running", "verifying", "awaiting_decision", "succeeded", "compensated", "compensation_failed"}
)
"""Statuses of a mutating step that mean it has (or may have) changed something."""


def signature(view: RunStatusView) -> str:
    """What the incident acts on, and only that: the run's phase, its open gates, whether each
    mutating step has changed something and what its verification said, and whether a step is
    verifying. A run reports when this changes, not at every step's every status (a storm of
    incidents must not cost a storm of reports)."""
    parts = [view.phase or "", view.reason or ""]
    parts += [f"gate:{s.id}" for s in view.steps if s.status == "awaiting_approval"]
    parts += [
        f"{s.id}:{s.status in CHANGED:d}{s.post_failed:d}{s.post_passed:d}"
        for s in view.steps
        if s.mutates
    ]
    parts.append(f"verifying:{any(s.status == 'verifying' for s in view.steps):d}")
    return "|".join(parts)
