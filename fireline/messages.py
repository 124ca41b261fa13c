"""Everything that crosses the PlaybookWorkflow boundary: input, signals, updates, query, result.

The worker, the CLI, the tests and the bench share these models, so a field added here is
added everywhere at once and old histories keep decoding (new fields always have defaults).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from fireline.identity.signing import SignedDecision
from fireline.plan import ActivityCall, GateSpec, Plan, Preview, Risk

WORKFLOW_NAME = "PlaybookWorkflow"

# Signals: fire-and-forget, audited whether accepted or ignored.
SIGNAL_APPROVE = "approve"
SIGNAL_REJECT = "reject"
SIGNAL_DECIDE = "decide"
SIGNAL_SEPARATE = "separate"
# Updates: the same decisions with an answer, refused (and audited) when not allowed.
UPDATE_APPROVE = "approve_step"
UPDATE_REJECT = "reject_step"
UPDATE_DECIDE = "decide_step"
UPDATE_CANCEL = "cancel_run"
"""Records who cancels and why (judged, signed like any decision); the API then sends
Temporal's own cancel, which stops the run and rolls it back."""
QUERY_STATUS = "status"

# Search attributes Fireline registers and keeps current, for the Temporal UI's filters.
SA_PLAYBOOK = "FirelinePlaybook"
SA_PHASE = "FirelinePhase"
SA_RISK = "FirelineMaxRisk"
SA_REQUESTED_BY = "FirelineRequestedBy"
SEARCH_ATTRIBUTES: dict[str, str] = {
    SA_PLAYBOOK: "Keyword",
    SA_PHASE: "Keyword",
    SA_RISK: "Keyword",
    SA_REQUESTED_BY: "Keyword",
    "FirelineService": "Keyword",  # fireline.incident.SA_SERVICE
    "FirelineSeverity": "Keyword",  # fireline.incident.SA_SEVERITY
    "FirelineIncidentKey": "Keyword",  # fireline.incident.SA_INCIDENT_KEY
}


def start_attributes(plan: Plan, requested_by: str) -> TypedSearchAttributes:
    """The search attributes a run starts with; the workflow keeps the phase current."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(SearchAttributeKey.for_keyword(SA_PLAYBOOK), plan.name),
            SearchAttributePair(SearchAttributeKey.for_keyword(SA_PHASE), RunPhase.running.value),
            SearchAttributePair(SearchAttributeKey.for_keyword(SA_RISK), plan.max_risk().value),
            SearchAttributePair(SearchAttributeKey.for_keyword(SA_REQUESTED_BY), requested_by),
        ]
    )


class RunRequest(BaseModel):
    """Workflow input: the sealed plan, its inputs, and who asked."""

    plan: Plan
    inputs: dict[str, Any] = Field(default_factory=dict)
    requested_by: str = "unknown"
    task_queue_prefix: str = "fireline"
    trusted_keys: dict[str, str] = Field(default_factory=dict)
    """key_id -> Ed25519 public key (urlsafe base64, raw 32 bytes) whose signed decisions this
    run accepts; given at start by the API, so a key rotation never changes a running run."""
    requested_by_verified: bool = False
    """True when ``requested_by`` was proven by a credential, not just typed."""
    separated_from: list[str] = Field(default_factory=list)
    """People besides the requester who may not approve this run's high/critical steps (an
    incident's acknowledger, when an incident starts the run)."""
    report_to: str | None = None
    """Workflow id of the incident that started this run: the run signals it its status view
    (:class:`fireline.run_view.RunReport`) whenever something the incident acts on changes
    (:func:`fireline.run_view.signature`), so the incident need not poll."""


SIGNAL_RUN_STATUS = "run_status"
"""Signal a run sends to ``report_to``: a :class:`fireline.run_view.RunReport`."""

MAX_NAME = 200
"""Longest step id or person name a decision may carry (a signal is hostile input too)."""
MAX_COMMENT = 4000


class Separate(BaseModel):
    """People who may no longer approve this run's high/critical steps (separation of duties),
    e.g. whoever acknowledged the incident the run remediates. It can only add restrictions,
    so it needs no signature."""

    people: list[Annotated[str, Field(min_length=1, max_length=MAX_NAME)]] = Field(
        min_length=1, max_length=50
    )
    reason: str = Field(default="", max_length=500)


class Approval(BaseModel):
    step: str = Field(max_length=MAX_NAME)
    approver: str = Field(min_length=1, max_length=MAX_NAME)
    comment: str = Field(default="", max_length=MAX_COMMENT)
    signed: SignedDecision | None = None
    """The API's signature over this approval (action approve/reject); None when unsigned."""


class DecisionAction(StrEnum):
    retry = "retry"
    skip = "skip"
    compensate = "compensate"


class Decision(BaseModel):
    """A human's answer to a step paused by ``on_failure: ask``."""

    step: str = Field(max_length=MAX_NAME)
    action: DecisionAction
    by: str = Field(min_length=1, max_length=MAX_NAME)
    comment: str = Field(default="", max_length=MAX_COMMENT)
    inputs: dict[str, Any] | None = None
    """For ``retry``: replaces the named ``with:`` values of the step before it runs again."""
    signed: SignedDecision | None = None
    """The API's signature over this decision (action retry/skip/compensate); None when unsigned."""


class CancelRun(BaseModel):
    """A person's request to stop the run, which rolls back everything it changed."""

    by: str = Field(min_length=1, max_length=MAX_NAME)
    comment: str = Field(default="", max_length=MAX_COMMENT)
    signed: SignedDecision | None = None
    """The API's signature (action cancel, step ""); None when unsigned."""


class StepStatus(StrEnum):
    pending = "pending"
    checking = "checking"
    awaiting_approval = "awaiting_approval"
    running = "running"
    verifying = "verifying"
    awaiting_decision = "awaiting_decision"
    succeeded = "succeeded"
    skipped = "skipped"
    failed = "failed"
    rejected = "rejected"
    cancelled = "cancelled"
    compensated = "compensated"
    compensation_failed = "compensation_failed"


class RunPhase(StrEnum):
    running = "running"
    awaiting_approval = "awaiting_approval"
    awaiting_decision = "awaiting_decision"
    compensating = "compensating"
    succeeded = "succeeded"
    failed = "failed"
    """Stopped by ``on_failure: halt``: nothing was rolled back."""
    compensated = "compensated"
    compensation_failed = "compensation_failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset(
    {
        RunPhase.succeeded,
        RunPhase.failed,
        RunPhase.compensated,
        RunPhase.compensation_failed,
        RunPhase.cancelled,
    }
)


class CheckObservation(BaseModel):
    check: str
    stage: Literal["pre", "post", "rollback"]
    satisfied: bool
    observed: Any = None
    expected: Any = None
    detail: str = ""
    attempts: int = 1
    at: datetime


class ApprovalRecord(BaseModel):
    by: str
    decision: Literal["approved", "rejected"]
    comment: str = ""
    at: datetime
    verified: bool | None = None
    """True: signed by a trusted key; False: accepted unsigned where the rights allow it;
    None: recorded before decisions were signed."""
    inputs_digest: str = ""
    """Digest of the step's resolved inputs this decision was about; a retry that changes
    them makes the approval stale and reopens the gate."""


class StepState(BaseModel):
    id: str
    name: str
    kind: Literal["step", "parallel", "include"] = "step"
    module: str | None = None
    risk: Risk = Risk.low
    status: StepStatus = StepStatus.pending
    attempts: int = 0
    inputs: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None
    error: str | None = None
    gate: GateSpec | None = None
    gate_deadline: datetime | None = None
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    superseded: list[ApprovalRecord] = Field(default_factory=list)
    """Approvals given for inputs a later retry changed: kept for the audit, no longer counted."""
    mutates: bool = False
    domain: str | None = None
    preview: Preview | None = None
    """What the step would change, read by its module's preview before the gate opened."""
    preview_error: str | None = None
    """Why the preview could not be read (it never blocks the gate)."""
    checks: list[CheckObservation] = Field(default_factory=list)
    child_workflow_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class CompensationRecord(BaseModel):
    """One pushed compensation: resolved when pushed, so it can run even from a parent."""

    step: str
    module: str
    domain: str
    local: bool = False
    input: dict[str, Any] = Field(default_factory=dict)
    start_to_close_s: float = 60.0
    retry_max_attempts: int = 5
    verify: list[dict[str, Any]] = Field(default_factory=list)
    """Resolved precondition checks (CheckCall dumps) re-run after the rollback."""
    status: Literal["pending", "succeeded", "failed"] = "pending"
    error: str | None = None
    verified: bool | None = None
    call: ActivityCall | None = None
    """The whole activity call the undo runs with (timeouts, heartbeat, retry policy); None in
    records pushed before it was kept, which run with the fields above."""


class AuditEvent(BaseModel):
    at: datetime
    actor: str
    kind: str
    step: str | None = None
    message: str = ""
    verified: bool | None = None
    """For a person's decision: whether a trusted signature proved who acted."""


class RunState(BaseModel):
    """The whole state of one run, returned by the ``status`` query."""

    workflow_id: str = ""
    playbook: str
    version: str
    plan_hash: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    requested_by: str = "unknown"
    phase: RunPhase = RunPhase.running
    reason: str | None = None
    steps: list[StepState] = Field(default_factory=list)
    compensations: list[CompensationRecord] = Field(default_factory=list)
    events: list[AuditEvent] = Field(default_factory=list)
    outputs: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_requested_by: str | None = None
    """Who asked (through the API) to cancel the run; None when nobody did, also when the
    run was cancelled through Temporal directly (the timeline then says so)."""

    def step(self, step_id: str) -> StepState:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


class RunResult(BaseModel):
    """What a finished run returns (and what a parent takes from an included playbook)."""

    phase: RunPhase
    reason: str | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    compensations: list[CompensationRecord] = Field(default_factory=list)
    """Pending compensations of a successful run, for a parent to run if it later fails."""
