"""The remediation guard: how much automation may do to a service before a human must look.

The rules are plain functions (:func:`admit`, :func:`record`) over :class:`GuardLedger`.
They are kept durable across incidents by one long-lived **GuardWorkflow per service**
(id :func:`guard_workflow_id`), an entity workflow: incidents ask it through an update
(update-with-start from a local activity, so the first incident of a service creates it), and
report the outcome of their run with a signal. Why an entity workflow: its handlers run one at
a time, so two incidents opening together on the same service cannot both take the last slot
of the window; the ledger lives in Temporal like everything else (no extra store to back up),
survives worker restarts, and shows in the UI.

A storm opens hundreds of incidents on one service within a second, and Temporal refuses more
than ten in-flight updates per workflow (stock setting). So a worker coalesces the concurrent
asks for one guard into one ``admit_batch`` update (``core.guard_admit``, like ingress's group
commit); the guard decides the batch in order, in one task, on a task queue of its own.

It continues-as-new when its history grows, carrying the ledger, which stays small because
entries older than the window are pruned.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from fireline.catalog.services import GuardPolicy
    from fireline.incident import GUARD_UPDATE_ADMIT_BATCH, GUARD_WORKFLOW, GuardStatus

UPDATE_ADMIT = "admit"
"""Update: one :class:`AdmitRequest` -> :class:`GuardStatus` (as incidents asked before
batches; still served)."""
UPDATE_ADMIT_BATCH = GUARD_UPDATE_ADMIT_BATCH
MAX_BATCH = 200
SIGNAL_OUTCOME = "outcome"
QUERY_LEDGER = "ledger"
MAX_ENTRIES = 1000
"""Runs kept per service; more than this inside one window means the window is misconfigured."""
HISTORY_LIMIT = 2000


def guard_workflow_id(service: str, task_queue_prefix: str) -> str:
    """One guard per service *and deployment*: the task-queue prefix names the deployment, so
    two Fireline installations on one Temporal namespace (or tests on one server) never share
    a ledger, nor wait on a guard whose workers belong to someone else."""
    from fireline.incident import incident_workflow_id

    return "guard-" + incident_workflow_id(f"{task_queue_prefix}/{service}").removeprefix(
        "incident-"
    )


class GuardEntry(BaseModel):
    incident_id: str
    at: datetime
    targets: list[str] = Field(default_factory=list)
    blast: int = 0
    automatic: bool = True
    verified: bool | None = None


class GuardLedger(BaseModel):
    service: str = ""
    entries: list[GuardEntry] = Field(default_factory=list)
    breaker_open: bool = False
    breaker_reason: str | None = None


class AdmitRequest(BaseModel):
    service: str
    incident_id: str
    policy: GuardPolicy = Field(default_factory=GuardPolicy)
    targets: list[str] = Field(default_factory=list)
    """What the run would change (a ``target`` input, else the service itself)."""
    blast: int = 1
    """How many targets the run may change (its mutating steps)."""


class Outcome(BaseModel):
    incident_id: str
    verified: bool | None
    """False: a verification failed, which opens the breaker. None: nothing was verified."""
    human_approved: bool = False
    """A person let the run through the guard's gate: a passing run closes the breaker."""
    detail: str = ""
    ran: bool = True
    """False: the run never started (refused at the guard's gate): its reservation is dropped."""


def prune(ledger: GuardLedger, policy: GuardPolicy, now: datetime) -> GuardLedger:
    horizon = now - timedelta(seconds=policy.window)
    kept = [e for e in ledger.entries if e.at >= horizon][-MAX_ENTRIES:]
    return ledger.model_copy(update={"entries": kept})


def admit(
    ledger: GuardLedger, request: AdmitRequest, now: datetime
) -> tuple[GuardStatus, GuardLedger]:
    """Whether this run may go ahead automatically, and the ledger with it reserved.

    A run refused automatic passage is still recorded (``automatic=False``): when a human
    lets it through, it counts against the window like any other.
    """
    policy = request.policy
    ledger = prune(ledger, policy, now)
    if any(e.incident_id == request.incident_id for e in ledger.entries):
        # Asked again (a retried activity, a continued incident): same answer, no double count.
        ledger = ledger.model_copy(
            update={"entries": [e for e in ledger.entries if e.incident_id != request.incident_id]}
        )
    automatic = [e for e in ledger.entries if e.automatic]
    runs = len(automatic)
    used = sum(e.blast for e in automatic)
    reasons: list[str] = []
    if runs >= policy.max_runs:
        reasons.append(
            f"rate limit: {runs} automatic run(s) in the last {policy.window:g}s "
            f"(at most {policy.max_runs})"
        )
    if used + request.blast > policy.blast_budget:
        reasons.append(
            f"blast-radius budget: {used} target(s) changed in the window, this run would "
            f"change {request.blast} more (budget {policy.blast_budget})"
        )
    targets = set(request.targets)
    busy = sorted({t for e in automatic for t in e.targets if t in targets and e.verified is None})
    if busy:
        reasons.append(f"target(s) {', '.join(busy)} already being changed by another run")
    if policy.breaker and ledger.breaker_open:
        reasons.append(f"breaker open: {ledger.breaker_reason or 'a verification failed'}")
    allowed = not reasons
    entry = GuardEntry(
        incident_id=request.incident_id,
        at=now,
        targets=sorted(targets),
        blast=request.blast,
        automatic=allowed,
    )
    ledger = ledger.model_copy(update={"entries": [*ledger.entries, entry][-MAX_ENTRIES:]})
    status = GuardStatus(
        allowed=allowed,
        needs_human=not allowed,
        reasons=reasons,
        runs_in_window=runs + (1 if allowed else 0),
        max_runs=policy.max_runs,
        blast_used=used + (request.blast if allowed else 0),
        blast_budget=policy.blast_budget,
        breaker_open=ledger.breaker_open,
    )
    return status, ledger


def record(ledger: GuardLedger, outcome: Outcome) -> GuardLedger:
    """A run's verification: a failure opens the breaker; a human-approved pass closes it."""
    if not outcome.ran:
        kept = [e for e in ledger.entries if e.incident_id != outcome.incident_id]
        return ledger.model_copy(update={"entries": kept})
    entries = [
        e.model_copy(update={"verified": outcome.verified, "automatic": True})
        if e.incident_id == outcome.incident_id
        else e
        for e in ledger.entries
    ]
    # A run a human let through counts from now on, like an automatic one.
    update: dict[str, object] = {"entries": entries}
    if outcome.verified is False:
        update["breaker_open"] = True
        update["breaker_reason"] = f"verification failed in {outcome.incident_id}" + (
            f": {outcome.detail}" if outcome.detail else ""
        )
    elif outcome.verified and outcome.human_approved:
        update["breaker_open"] = False
        update["breaker_reason"] = None
    return ledger.model_copy(update=update)


@workflow.defn(name=GUARD_WORKFLOW)
class GuardWorkflow:
    """One per service: serialises admissions and keeps the ledger across incidents."""

    @workflow.init
    def __init__(self, ledger: GuardLedger) -> None:
        self._ledger = ledger

    @workflow.run
    async def run(self, ledger: GuardLedger) -> None:
        await workflow.wait_condition(
            lambda: (
                workflow.info().get_current_history_length() > HISTORY_LIMIT
                or workflow.info().is_continue_as_new_suggested()
            )
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(self._ledger)

    @workflow.update(name=UPDATE_ADMIT_BATCH)
    def admit_batch(self, requests: list[AdmitRequest]) -> list[GuardStatus]:
        """Decide each in order, as if they had come one by one."""
        return [self._admit(r) for r in requests]

    @admit_batch.validator
    def _validate_batch(self, requests: list[AdmitRequest]) -> None:
        if not 0 < len(requests) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} requests, not {len(requests)}")

    @workflow.update(name=UPDATE_ADMIT)
    def admit(self, request: AdmitRequest) -> GuardStatus:
        return self._admit(request)

    def _admit(self, request: AdmitRequest) -> GuardStatus:
        if not self._ledger.service:
            self._ledger = self._ledger.model_copy(update={"service": request.service})
        status, self._ledger = admit(self._ledger, request, workflow.now())
        return status

    @workflow.signal(name=SIGNAL_OUTCOME)
    def outcome(self, outcome: Outcome) -> None:
        self._ledger = record(self._ledger, outcome)

    @workflow.query(name=QUERY_LEDGER)
    def ledger(self) -> GuardLedger:
        return self._ledger
