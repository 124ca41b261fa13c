"""IncidentWorkflow: one per incident key; alerts in, pages out, the routed playbook as a child.

The workflow is a loop over one state (:class:`fireline.incident.IncidentState`): signals and
updates change it and wake the loop; the loop pages the next rung when it is due, reads the
child run's status (``core.run_status``, a local activity querying the run, so the coupling to
PlaybookWorkflow is its ``status`` query only), decides when the incident closes, and
continues-as-new with the state when history grows. The child run is started with
``ParentClosePolicy.ABANDON`` so that continue-as-new does not end it; it is addressed by id.

Deterministic throughout: time from ``workflow.now()``, waiting from ``wait_condition`` with a
timeout, all I/O (pages, run status, the guard) through activities.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Coroutine, Iterable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from fireline import errors, messages
    from fireline.incident import (
        GUARD_QUEUE_SUFFIX,
        GUARD_STEP,
        INCIDENT_WORKFLOW,
        QUERY_STATUS,
        SA_INCIDENT_KEY,
        SA_SERVICE,
        SA_SEVERITY,
        SIGNAL_ALERTS,
        SIGNAL_APPROVE,
        SIGNAL_REJECT,
        UPDATE_ACK,
        UPDATE_APPROVE,
        UPDATE_CANCEL,
        UPDATE_COMMAND,
        UPDATE_REJECT,
        UPDATE_RESOLVE,
        Ack,
        AckRecord,
        AlertBatch,
        Command,
        GuardStatus,
        IncidentPhase,
        IncidentStart,
        IncidentState,
        PageRecord,
        Resolve,
        TimelineEvent,
        fit_search_attribute,
    )
    from fireline.ingress.alert import Alert, AlertStatus
    from fireline.messages import (
        SIGNAL_SEPARATE,
        Approval,
        RunRequest,
        Separate,
        start_attributes,
    )
    from fireline.plan import IncludeNode, Plan, StepNode
    from fireline.run_view import CHANGED, RunReport, RunStatusView
    from workflows import escalation
    from workflows.gate import IncidentAttempt, IncidentFacts, Refusal, judge_incident
    from workflows.gate import screen_incident as screen_incident_attempt
    from workflows.guard import (
        SIGNAL_OUTCOME,
        AdmitRequest,
        Outcome,
        guard_workflow_id,
    )

MAX_SEEN = 2000
"""Notification ids remembered for dedupe; redeliveries come within minutes, not thousands."""
MAX_RECENT = 20
MAX_TIMELINE = 1000
MAX_FIRING = 1000
_TERMINAL_RUN = frozenset(
    {"succeeded", "failed", "compensated", "compensation_failed", "cancelled"}
)
PAGE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=4,
)
GUARD_RELEASE = "guard-release"
"""Patch id: an incident held by the guard that closes without a run frees its entry."""
HISTORY_BYTES = "history-bytes-limit"
"""Patch id: continue-as-new by history size too (``IncidentStart.history_bytes_limit``)."""
RUN_REPORTS = "run-reports-status"
"""Patch id: the run reports its status to the incident (``RunRequest.report_to``); runs of
incidents opened before it are read by polling their status query."""
RUN_PRIORITY = "run-priority"
"""Patch id: runs start with :data:`REMEDIATION_PRIORITY`."""
STEADY_TIMER = "steady-wake-timer"
"""Patch id: the wait for the next wake-up keeps one timer while its instant stays the same,
instead of a new timer (and a cancelled one) on every signal: in an alert storm that was two
of the six history events each batch of alerts cost."""
FOLDED_2026_12 = frozenset(
    {
        GUARD_RELEASE,
        HISTORY_BYTES,
        RUN_REPORTS,
        RUN_PRIORITY,
        STEADY_TIMER,
        "separate-late-acknowledger",
    }
)
"""The patches the first baseline, ``baseline-2026-12``, stands for."""
CHECKED_REPORTS = "checked-gate-reports"
"""Patch id: a run's report that opens or closes a gate, or says a verification failed, is
checked against the run's own status before the incident acts on it, as a final report is.
Anyone with access to the namespace can signal in the run's name: unchecked, such a report
could page people for a gate that does not exist, silence the ladder of one that does, or
open the guard's breaker with a failure that never happened."""
CHECKED_CHANGES = "checked-change-reports"
"""Patch id: a run's report that a mutating step has started is checked against the run's own
status too. Believed, a forged one would make the incident think something had changed, and a
resolved alert would then leave the run going instead of closing the incident automatically.
Asked only when such a report comes, so an incident records its marker mid-run, never in its
first task."""
BASELINE = "baseline-2026-12b"
"""Patch id standing for every patch above: an incident that records it takes all their new
paths and records none of their markers. Each patch marker costs a history event and a
search-attribute write (the SDK upserts ``TemporalChangeVersion`` for every patch id), and
visibility writes are the dev server's dearest work in a storm of new incidents. Incidents
that recorded an older baseline or the patches' own markers replay by them. A patch added
later is recorded on its own, until the next baseline folds it in."""
BASELINES: tuple[tuple[str, frozenset[str]], ...] = (
    (BASELINE, FOLDED_2026_12 | {CHECKED_REPORTS, CHECKED_CHANGES}),
    ("baseline-2026-12", FOLDED_2026_12),
)
"""Every baseline with the patches it stands for, newest first."""
REMEDIATION_PRIORITY = Priority(priority_key=1)
"""A run's tasks (and its activities, which inherit it) go ahead of incident bookkeeping when
the queues are backlogged, as in a storm: the remediation is what the outage waits for.
Temporal's default key is 3."""
GUARD_ATTEMPTS = 3
"""Tries at the guard before the run is held for a person instead."""
SA_PHASE_KEY = SearchAttributeKey.for_keyword(messages.SA_PHASE)
SA_PLAYBOOK_KEY = SearchAttributeKey.for_keyword(messages.SA_PLAYBOOK)
SA_SERVICE_KEY = SearchAttributeKey.for_keyword(SA_SERVICE)
SA_SEVERITY_KEY = SearchAttributeKey.for_keyword(SA_SEVERITY)
SA_KEY_KEY = SearchAttributeKey.for_keyword(SA_INCIDENT_KEY)


def _refused(message: str) -> ApplicationError:
    """A validator's refusal: the update is turned down and nothing is recorded."""
    return ApplicationError(message, type=errors.REFUSED, non_retryable=True)


def mutating_steps(plan: Plan) -> set[str]:
    """Ids of steps that change something (an include counts if anything inside it does)."""
    out: set[str] = set()
    for node in plan.walk():
        changes = (isinstance(node, StepNode) and node.mutates) or (
            isinstance(node, IncludeNode) and bool(mutating_steps(node.plan))
        )
        if changes:
            out.add(node.id)
    return out


def alert_identity(alert: Alert) -> str:
    """Which alert this is across notifications: the fingerprint, else name and labels."""
    if alert.fingerprint:
        return alert.fingerprint
    raw = json.dumps([alert.name, sorted(alert.labels.items())], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


@workflow.defn(name=INCIDENT_WORKFLOW)
class IncidentWorkflow:
    @workflow.init
    def __init__(self, start: IncidentStart) -> None:
        self._start = start
        self._policy = start.policy
        self._mutating = mutating_steps(start.plan) if start.plan else set()
        info = workflow.info()
        if start.carried is not None:
            self._s = start.carried.model_copy(update={"runs": start.carried.runs + 1})
        else:
            self._s = IncidentState(
                incident_id=info.workflow_id,
                key=start.key,
                service=start.service,
                severity=start.severity,
                title=start.title or start.key,
                drill=start.drill,
                previous_incident=start.previous_incident,
                opened_at=workflow.now(),
            )
            self._s.run.playbook = start.plan.name if start.plan else None
        self._base_size = info.get_current_history_size()
        self._seen = set(self._s.seen_ids)
        self._firing = set(self._s.firing)
        self._changed = False
        self._poll_now = False
        self._next_poll: datetime | None = None
        self._wake_timer: asyncio.Task[None] | None = None
        self._wake_at: datetime | None = None
        self._resolve_pending: tuple[str, str] | None = None
        self._cancel_pending: tuple[str, str] | None = None
        self._guard_decision: Approval | None = None
        self._guard_rejected = False
        self._guard_slot = False
        """Held by the guard and no run started yet: the ledger holds an entry for this
        incident that only this incident can release (if it closes without a run)."""
        self._reports = False
        """The run reports its status (``RunRequest.report_to``): polled only as a safety net."""
        self._reported: RunStatusView | None = None
        """The latest report not yet acted on."""
        self._gate_steps: set[str] = set()
        self._gate_previews: dict[str, str] = {}
        """One-line previews of the run's waiting gates, from its status (for the pages)."""
        self._baselines: dict[str, bool] = {}
        self._sa_phase: str | None = None
        if start.carried is None:
            # A starter that set the labels (ingress does) set the phase the first task enters.
            self._sa_phase = info.typed_search_attributes.get(SA_PHASE_KEY)
        self._tasks: list[asyncio.Task[Any]] = []
        self._poll_every = start.run_poll_s
        self._last_view = ""
        carry = self._s.carry
        if carry:
            if carry.get("resolve"):
                self._resolve_pending = (carry["resolve"][0], carry["resolve"][1])
            if carry.get("cancel"):
                self._cancel_pending = (carry["cancel"][0], carry["cancel"][1])
            if carry.get("guard_decision"):
                self._guard_decision = Approval.model_validate(carry["guard_decision"])
            self._guard_rejected = bool(carry.get("guard_rejected"))
            self._gate_steps = set(carry.get("gates", []))
            self._reports = bool(carry.get("reports"))
            self._guard_slot = bool(carry.get("guard_slot"))
            if carry.get("reported"):
                self._reported = RunStatusView.model_validate(carry["reported"])

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, start: IncidentStart) -> IncidentState:
        if start.carried is None:
            self._event("opened", f"incident for {start.service}: {self._s.title}")
            self._s.phase = IncidentPhase.triaging
        self._label()
        self._refresh()
        while not self._closed():
            await self._step()
            if self._closed():
                break
            if self._should_continue_as_new():
                await self._drain()
                await workflow.wait_condition(workflow.all_handlers_finished)
                self._s.firing = sorted(self._firing)
                self._s.carry = {
                    "resolve": list(self._resolve_pending) if self._resolve_pending else None,
                    "cancel": list(self._cancel_pending) if self._cancel_pending else None,
                    "guard_decision": (
                        self._guard_decision.model_dump(mode="json")
                        if self._guard_decision
                        else None
                    ),
                    "guard_rejected": self._guard_rejected,
                    "gates": sorted(self._gate_steps),
                    "reports": self._reports,
                    "guard_slot": self._guard_slot,
                    "reported": (
                        self._reported.model_dump(mode="json") if self._reported else None
                    ),
                }
                self._event("continued", "history grew: continued as a new run")
                workflow.continue_as_new(start.model_copy(update={"carried": self._s}))
            await self._sleep()
        self._s.escalation.state = "stopped"
        self._s.escalation.next_at = None
        self._refresh()
        await self._drain()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._s

    def _patched(self, patch_id: str) -> bool:
        """``workflow.patched``, unless this incident recorded a baseline that stands for the
        patch (:data:`BASELINES`). Every folded patch goes through here, so each baseline is
        asked, newest first, wherever one is first asked, on replay as on the first run: a new
        incident records the newest, and one recorded before it replays by what it recorded."""
        for baseline, folded in BASELINES:
            if patch_id not in folded:
                continue
            if baseline not in self._baselines:
                self._baselines[baseline] = workflow.patched(baseline)
            if self._baselines[baseline]:
                return True
        return workflow.patched(patch_id)

    def _closed(self) -> bool:
        return self._s.phase is IncidentPhase.resolved or (
            self._s.phase is IncidentPhase.failed and self._s.resolution is not None
        )

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        if info.is_continue_as_new_suggested():
            return True
        if info.get_current_history_length() > self._start.history_limit:
            return True
        # Growth, not size: the carried state alone (timeline, recent alerts) can be large, and
        # a new run that starts over the limit must not continue again at once.
        grown = info.get_current_history_size() - self._base_size
        return grown > self._start.history_bytes_limit and self._patched(HISTORY_BYTES)

    async def _sleep(self) -> None:
        # A finished run is not polled again (see _step): its last poll time, now in the past,
        # would make the wait below time out at once, every pass, without ever yielding.
        polling = self._s.run.workflow_id is not None and self._s.run.phase not in _TERMINAL_RUN
        next_poll = self._next_poll if polling else None
        wake = [t for t in (self._s.escalation.next_at, next_poll) if t is not None]
        if self._s.escalation.state == "acknowledged" and self._s.acknowledged_at:
            lapse = self._policy.ack_timeout
            if lapse is not None and not self._s.commander:
                wake.append(self._s.acknowledged_at + timedelta(seconds=lapse))
        if self._changed or self._poll_now:
            self._changed = False
            return
        if self._patched(STEADY_TIMER):
            await self._wait_until(min(wake) if wake else None)
            self._changed = False
            return
        timeout = None
        if wake:
            timeout = max((min(wake) - workflow.now()).total_seconds(), 0.0)
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._changed or self._poll_now, timeout=timeout)
        self._changed = False

    async def _wait_until(self, at: datetime | None) -> None:
        """Until something changes or ``at`` comes, on a timer kept across wake-ups."""
        timer = self._wake_timer
        if timer is not None and (self._wake_at != at or timer.done()):
            timer.cancel()
            timer = None
        if at is not None and timer is None:
            seconds = (at - workflow.now()).total_seconds()
            if seconds <= 0:
                self._wake_timer = None
                return
            timer = asyncio.create_task(asyncio.sleep(seconds))
        self._wake_timer, self._wake_at = timer, at
        await workflow.wait_condition(
            lambda: self._changed or self._poll_now or (timer is not None and timer.done())
        )

    async def _step(self) -> None:
        """One pass: run lifecycle, resolution, ladder; each part idempotent."""
        now = workflow.now()
        plan = self._start.plan
        run = self._s.run
        if plan is not None and run.workflow_id is None and not self._guard_rejected:
            await self._admit(plan)
        if self._reported is not None:
            view, self._reported = self._reported, None
            if run.phase not in _TERMINAL_RUN:
                self._apply_view(view.model_dump(mode="json"))
        due = self._poll_now or self._next_poll is None or now >= self._next_poll
        if run.workflow_id is None or run.phase in _TERMINAL_RUN:
            # A report that asks for a read after the run is known to have ended (the read
            # that found it ended overtook the report) has nothing left to read: kept, it
            # would end every wait at once and the task would never yield.
            self._poll_now = False
        elif due:
            await self._poll()
        self._settle()
        if not self._closed():
            await self._ladder()
        self._refresh()

    # ---------------------------------------------------------------- guard

    async def _admit(self, plan: Plan) -> None:
        if self._s.phase is IncidentPhase.awaiting_approval and self._guard_decision is None:
            return  # waiting at the guard's gate
        if self._guard_decision is not None:
            await self._start_run(plan, approved_by=self._guard_decision.approver)
            return
        try:
            status: GuardStatus = await workflow.execute_local_activity(
                "core.guard_admit",
                {
                    "workflow_id": self._guard_id(),
                    "task_queue": self._start.task_queue_prefix + GUARD_QUEUE_SUFFIX,
                    "request": self._admit_request().model_dump(mode="json"),
                },
                start_to_close_timeout=timedelta(seconds=self._start.guard_timeout_s),
                retry_policy=RetryPolicy(
                    maximum_attempts=GUARD_ATTEMPTS, maximum_interval=timedelta(seconds=10)
                ),
                result_type=GuardStatus,
                summary="ask the remediation guard",
            )
        except ActivityError as err:
            # Fail closed, never stuck: a person decides instead of the guard.
            cause = err.cause or err
            reason = f"the guard did not answer ({cause}): a person decides instead"
            status = GuardStatus(allowed=False, needs_human=True, reasons=[reason])
        await self._guarded(plan, status)

    def _admit_request(self) -> AdmitRequest:
        target = self._start.inputs.get("target")
        return AdmitRequest(
            service=self._start.service,
            incident_id=self._incident_ref(),
            policy=self._start.guard,
            targets=[str(target)] if target else [self._start.service],
            blast=len(self._mutating),
        )

    async def _guarded(self, plan: Plan, status: GuardStatus) -> None:
        """Act on the guard's answer: start the run, or hold it at the guard's human gate."""
        self._s.guard = status
        if status.allowed:
            self._event(
                "guard",
                f"automatic run allowed ({status.runs_in_window}/{status.max_runs} runs, "
                f"{status.blast_used}/{status.blast_budget} targets in the window)",
                data=status.model_dump(mode="json"),
            )
            await self._start_run(plan, approved_by=None)
            return
        self._s.phase = IncidentPhase.awaiting_approval
        self._guard_slot = True
        self._event(
            "guard",
            "automatic run held for a human: " + "; ".join(status.reasons),
            data=status.model_dump(mode="json"),
        )
        self._open_gate(GUARD_STEP, tier=1)

    def _guard_id(self) -> str:
        return guard_workflow_id(self._start.service, self._start.task_queue_prefix)

    def _incident_ref(self) -> str:
        opened = self._s.opened_at.isoformat() if self._s.opened_at else ""
        return f"{self._s.incident_id}@{opened}"

    async def _start_run(self, plan: Plan, approved_by: str | None) -> None:
        if approved_by is not None:
            self._s.guard_approved_by = approved_by
        self._close_gate(GUARD_STEP)
        self._guard_slot = False  # the run's outcome settles the entry
        self._reports = self._patched(RUN_REPORTS)
        child_id = f"{self._s.incident_id}.run-{workflow.uuid4().hex[:8]}"
        self._s.run.workflow_id = child_id
        self._s.run.phase = "running"
        self._s.phase = IncidentPhase.triaging
        # Fire and forget: the run is addressed by id from here on, by this run of the
        # incident and by the ones continue-as-new starts.
        await workflow.start_child_workflow(
            messages.WORKFLOW_NAME,
            RunRequest(
                plan=plan,
                inputs=self._start.inputs,
                requested_by=approved_by or f"incident {self._s.incident_id}",
                task_queue_prefix=self._start.task_queue_prefix,
                trusted_keys=self._start.trusted_keys,
                # Whoever acknowledged may not also approve the run's high-risk steps.
                separated_from=sorted({a.by for a in self._s.acks}),
                report_to=workflow.info().workflow_id if self._reports else None,
            ),
            id=child_id,
            priority=REMEDIATION_PRIORITY if self._patched(RUN_PRIORITY) else Priority(),
            task_queue=self._start.task_queue_prefix,
            parent_close_policy=ParentClosePolicy.ABANDON,
            static_summary=f"{plan.name} for incident {self._s.key}",
            search_attributes=(
                start_attributes(plan, approved_by or "incident")
                if SA_PHASE_KEY in workflow.info().typed_search_attributes
                else None
            ),
        )
        self._event("run_started", f"{plan.name} v{plan.version} as {child_id}")
        # A run that reports is read only as a safety net (a run terminated from outside
        # sends nothing); one that does not is read soon and then less and less often.
        first = self._start.run_poll_max_s if self._reports else 1.0
        self._next_poll = workflow.now() + timedelta(seconds=first)

    # ------------------------------------------------------------------ run

    async def _poll(self) -> None:
        self._poll_now = False
        run = self._s.run
        assert run.workflow_id is not None
        try:
            view: dict[str, Any] = await workflow.execute_local_activity(
                "core.run_status",
                {"workflow_id": run.workflow_id},
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=3),
                result_type=dict,
                summary="read the run's status",
            )
        except ActivityError as err:
            self._event("run_unreadable", f"status of {run.workflow_id}: {err}")
            self._next_poll = workflow.now() + timedelta(seconds=self._start.run_poll_s)
            return
        self._apply_view(view)

    def _apply_view(self, view: dict[str, Any]) -> None:
        """Act on the run's status view, read (``core.run_status``) or reported by the run."""
        run = self._s.run
        steps = view.get("steps", [])
        phase = str(view.get("phase"))
        # Read often while the run moves, less and less while it waits (a gate, a long
        # step): a thousand incidents at their gates must not keep the server busy.
        signature = json.dumps([phase, [(s["id"], s["status"]) for s in steps]])
        if self._reports:
            self._poll_every = self._start.run_poll_max_s
        elif signature == self._last_view:
            self._poll_every = min(self._poll_every * 2, self._start.run_poll_max_s)
        else:
            self._poll_every = self._start.run_poll_s
        self._last_view = signature
        self._next_poll = workflow.now() + timedelta(seconds=self._poll_every)
        if not view.get("found"):
            return  # not started yet
        if self._changed_by((s["id"], s["status"]) for s in steps) and not run.mutated:
            run.mutated = True
            self._event("remediating", "a mutating step has started")
        run.blast = sum(1 for s in steps if s["id"] in self._mutating and s["status"] in CHANGED)
        verification = [s for s in steps if s["id"] in self._mutating]
        if any(s.get("post_failed") for s in verification):
            run.verified = False
        elif phase == "succeeded" and any(s.get("post_passed") for s in verification):
            run.verified = True
        gates = {s["id"]: s for s in steps if s["status"] == "awaiting_approval"}
        self._gate_previews = {k: str(g["preview"]) for k, g in gates.items() if g.get("preview")}
        for step_id, s in gates.items():
            if step_id not in self._gate_steps:
                self._event(
                    "gate_opened",
                    f"`{step_id}` waits for role {s.get('gate_role')} (tier {s.get('gate_tier')})",
                    step=step_id,
                )
                self._open_gate(step_id, tier=int(s.get("gate_tier") or 1))
        for step_id in sorted(self._gate_steps - set(gates) - {GUARD_STEP}):
            self._event("gate_closed", f"`{step_id}` decided", step=step_id)
            self._close_gate(step_id)
        if phase != run.phase:
            run.phase = phase
            run.reason = view.get("reason")
            self._event("run_phase", phase + (f": {run.reason}" if run.reason else ""))
        statuses = {s["status"] for s in steps}
        if phase in _TERMINAL_RUN:
            self._run_finished(phase)
        elif phase == "compensating":
            self._s.phase = IncidentPhase.compensating
        elif gates:
            self._s.phase = IncidentPhase.awaiting_approval
        elif "verifying" in statuses:
            self._s.phase = IncidentPhase.verifying
        elif run.mutated:
            self._s.phase = IncidentPhase.remediating
        else:
            self._s.phase = IncidentPhase.triaging

    def _run_finished(self, phase: str) -> None:
        run = self._s.run
        now = workflow.now()
        if phase == "succeeded":
            self._s.contained_at = self._s.contained_at or now
            self._s.phase = IncidentPhase.verifying
            if run.verified is None and run.mutated:
                run.verified = True
        elif self._resolve_pending is None and self._cancel_pending is None:
            self._s.phase = IncidentPhase.failed
            if run.mutated and run.verified is None and phase != "cancelled":
                run.verified = False
        for step_id in sorted(self._gate_steps - {GUARD_STEP}):
            self._close_gate(step_id)
        handle = workflow.get_external_workflow_handle(self._guard_id())
        outcome = Outcome(
            incident_id=self._incident_ref(),
            verified=run.verified,
            human_approved=self._s.guard_approved_by is not None,
            detail=run.reason or "",
        )
        self._spawn(handle.signal(SIGNAL_OUTCOME, outcome))

    def _settle(self) -> None:
        """Close the incident when its alerts, a person or its run say so."""
        run = self._s.run
        running = run.workflow_id is not None and run.phase not in _TERMINAL_RUN
        all_resolved = self._s.alerts.resolved > 0 and not self._firing
        if self._cancel_pending is not None:
            by, why = self._cancel_pending
            if running:
                return
            self._close(
                IncidentPhase.failed, f"cancelled by {by}" + (f": {why}" if why else ""), by
            )
            return
        if self._resolve_pending is None and all_resolved:
            self._resolve_pending = ("alert", "every alert resolved")
            if running and not run.mutated:
                self._s.auto_resolved = True
                self._cancel_run("alerts resolved before any change was made")
            elif running:
                self._event(
                    "resolution_recorded",
                    "alerts resolved; the run carries on to its verification",
                )
        if self._resolve_pending is not None:
            by, why = self._resolve_pending
            if running:
                return
            if self._s.auto_resolved or (by == "alert" and not run.mutated):
                self._s.auto_resolved = True
            self._close(IncidentPhase.resolved, why, by)
            return
        if run.phase == "succeeded" and not self._firing:
            self._close(IncidentPhase.resolved, "the run succeeded; no alert firing", "automation")

    def _close(self, phase: IncidentPhase, why: str, by: str) -> None:
        self._s.phase = phase
        self._s.resolution = why
        self._s.resolved_by = by
        self._s.resolved_at = workflow.now()
        if phase is IncidentPhase.resolved:
            self._s.contained_at = self._s.contained_at or self._s.resolved_at
        self._event("resolved" if phase is IncidentPhase.resolved else "closed", why, actor=by)
        if self._guard_slot and self._patched(GUARD_RELEASE):
            self._release_guard_slot()

    def _release_guard_slot(self) -> None:
        """Tell the guard no run came of this incident's admission, so it counts for nothing."""
        self._guard_slot = False
        outcome = Outcome(incident_id=self._incident_ref(), verified=None, ran=False)
        self._spawn(
            workflow.get_external_workflow_handle(self._guard_id()).signal(SIGNAL_OUTCOME, outcome)
        )

    def _cancel_run(self, why: str) -> None:
        run_id = self._s.run.workflow_id
        if run_id is None or self._s.run.phase in _TERMINAL_RUN:
            return
        self._event("run_cancelling", why)
        self._spawn(workflow.get_external_workflow_handle(run_id).cancel())
        self._poll_now = True

    # --------------------------------------------------------------- ladder

    def _open_gate(self, step_id: str, tier: int) -> None:
        self._gate_steps.add(step_id)
        e = self._s.escalation
        e.reason = "guard" if step_id == GUARD_STEP else "gate"
        e.gate_step = step_id
        e.index = escalation.first_index_for_tier(self._policy, tier)
        e.since = None
        e.next_at = None

    def _close_gate(self, step_id: str) -> None:
        if step_id not in self._gate_steps:
            return
        self._gate_steps.discard(step_id)
        e = self._s.escalation
        if e.gate_step == step_id:
            e.gate_step = None
            e.reason = "escalation"
            if e.state != "triggered":
                e.next_at = None

    def _climbing(self) -> bool:
        e = self._s.escalation
        if self._s.commander is not None or self._closed():
            return False
        return e.state == "triggered" or e.gate_step is not None

    async def _ladder(self) -> None:
        e = self._s.escalation
        now = workflow.now()
        if (
            e.state == "acknowledged"
            and self._s.acknowledged_at is not None
            and self._s.commander is None
            and escalation.ack_lapsed(self._s.acknowledged_at, self._policy.ack_timeout, now)
        ):
            self._event(
                "ack_timeout",
                f"acknowledgement by {self._s.acknowledged_by} lapsed: back to triggered",
            )
            e.state = "triggered"
            e.index = 0
            e.since = None
            e.reason = "retrigger" if e.gate_step is None else e.reason
        if not self._climbing():
            if e.gate_step is None:
                e.next_at = None
            return
        if e.since is not None and e.next_at is not None and now >= e.next_at:
            e.index += 1
            e.since = None
        if e.since is not None:
            return
        turn = e.turns.get(str(e.index % len(self._policy.levels)), 0)
        rung = escalation.rung(self._policy, e.index, now, turn)
        if rung is None:
            if e.state != "exhausted" and e.gate_step is None:
                self._event("escalation_exhausted", "every level paged; nobody acknowledged")
                e.state = "exhausted"
            e.next_at = None
            return
        e.turns[str(rung.level)] = turn + 1
        e.level, e.cycle, e.tier = rung.level, rung.cycle, rung.tier
        e.since = now
        e.next_at = escalation.due_at(now, rung)
        e.paged = list(rung.people)
        tier_key = str(rung.tier)
        self._s.escalations_per_tier[tier_key] = self._s.escalations_per_tier.get(tier_key, 0) + 1
        reason = e.reason
        if not rung.people:
            self._event(
                "escalation",
                f"tier {rung.tier} (level {rung.level + 1}): automation, nobody to page",
            )
            return
        self._event(
            "escalation",
            f"tier {rung.tier} (level {rung.level + 1}, cycle {rung.cycle + 1}): "
            f"paging {', '.join(rung.people)}"
            + (f" for gate `{e.gate_step}`" if e.gate_step else ""),
        )
        await self._page_all(rung, reason)

    async def _page_all(self, rung: escalation.Rung, reason: str) -> None:
        channels = self._start.paging or []
        jobs: list[tuple[str, str, str]] = [
            (person, c.kind, c.target) for person in rung.people for c in channels
        ]
        if not jobs:
            for person in rung.people:
                self._record_page(person, rung, reason, "none", None, "no paging channel")
            return
        message = self._page_message()
        calls = [
            workflow.execute_activity(
                "core.page",
                {
                    "channel": kind,
                    "target": target,
                    "incident_id": self._s.incident_id,
                    "person": person,
                    "tier": rung.tier,
                    "title": f"{self._start.service}: {self._s.title}",
                    "message": message,
                    "severity": self._s.severity,
                    "commander": self._s.commander,
                    "service": self._start.service,
                    "fields": {"reason": reason, "phase": self._s.phase.value},
                },
                task_queue=f"{self._start.task_queue_prefix}-core",
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=PAGE_RETRY,
                result_type=dict,
                summary=f"page {person} (tier {rung.tier}) via {kind}:{target}",
            )
            for person, kind, target in jobs
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for (person, kind, target), result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                error = str(result.cause) if isinstance(result, ActivityError) else str(result)
                self._record_page(person, rung, reason, f"{kind}:{target}", None, error)
            else:
                self._record_page(person, rung, reason, f"{kind}:{target}", result, None)

    def _record_page(
        self,
        person: str,
        rung: escalation.Rung,
        reason: str,
        channel: str,
        result: dict[str, Any] | None,
        error: str | None,
    ) -> None:
        record = PageRecord(
            at=workflow.now(),
            person=person,
            tier=rung.tier,
            level=rung.level,
            cycle=rung.cycle,
            channel=channel,
            reason=reason,
            delivered=error is None,
            attempts=1 if error is None else PAGE_RETRY.maximum_attempts,
            error=error,
        )
        self._s.pages.append(record)
        self._s.pages = self._s.pages[-MAX_TIMELINE:]
        if error is None:
            self._event(
                "page",
                f"paged {person} (tier {rung.tier}) via {channel}",
                data={"person": person, "tier": rung.tier, "channel": channel, "result": result},
            )
        else:
            self._event(
                "page_failed",
                f"page to {person} (tier {rung.tier}) via {channel} failed: {error}",
                data={"person": person, "tier": rung.tier, "channel": channel, "error": error},
            )

    def _page_message(self) -> str:
        s = self._s
        parts = [f"Incident {s.incident_id} ({s.phase.value})"]
        if s.commander:
            parts.append(f"commander {s.commander}")
        if s.escalation.gate_step:
            parts.append(f"waiting for a decision on `{s.escalation.gate_step}`")
            preview = self._gate_previews.get(s.escalation.gate_step)
            if preview:
                parts.append(f"it would: {preview}")
        parts.append(f"ack: fireline ack {s.incident_id}")
        return "; ".join(parts)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Signals and cancels to other workflows, sent from handlers; awaited before closing."""
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.ensure_future(work))

    async def _drain(self) -> None:
        for task in self._tasks:
            try:
                await task
            except Exception as err:  # recorded, never fatal
                self._event("delivery_failed", f"to another workflow: {err}")
        self._tasks = []

    # ------------------------------------------------------------- messages

    @workflow.signal(name=messages.SIGNAL_RUN_STATUS)
    def run_status(self, report: RunReport) -> None:
        """The run's status, sent by the run on every change; only this incident's run counts."""
        if report.run_id != self._s.run.workflow_id:
            workflow.logger.info("run status ignored: not this incident's run")
            return
        if (
            report.view.phase in _TERMINAL_RUN
            or (self._touches_trust(report.view) and self._patched(CHECKED_REPORTS))
            or (self._claims_change(report.view) and self._patched(CHECKED_CHANGES))
        ):
            # Closing the incident, paging for a gate and the guard's verdict rest on the
            # run's own status query, not on a signal anyone with access to the namespace
            # could send in the run's name.
            self._poll_now = True
            self._changed = True
            return
        self._reported = report.view
        self._changed = True

    def _touches_trust(self, view: RunStatusView) -> bool:
        """Whether acting on ``view`` would open or close a gate or record a failed check."""
        gates = {s.id for s in view.steps if s.status == "awaiting_approval"}
        if gates != self._gate_steps - {GUARD_STEP}:
            return True
        failed = any(s.post_failed for s in view.steps if s.id in self._mutating)
        return failed and self._s.run.verified is not False

    def _claims_change(self, view: RunStatusView) -> bool:
        """Whether ``view`` says a mutating step has changed something, not yet known here."""
        return not self._s.run.mutated and self._changed_by((s.id, s.status) for s in view.steps)

    def _changed_by(self, steps: Iterable[tuple[str, str]]) -> bool:
        """Whether any of these (step id, status) is a mutating step that changed something."""
        return any(step in self._mutating and status in CHANGED for step, status in steps)

    @workflow.signal(name=SIGNAL_ALERTS)
    def alerts(self, batch: AlertBatch) -> None:
        s = self._s
        if batch.batch_id in s.seen_batches:
            s.alerts.duplicates += len(batch.alerts)
            return
        s.seen_batches = [*s.seen_batches, batch.batch_id][-200:]
        for alert in batch.alerts:
            self._take_alert(alert)
        self._changed = True

    def _take_alert(self, alert: Alert) -> None:
        s = self._s
        if alert.notification_id in self._seen:
            s.alerts.duplicates += 1
            return
        self._seen.add(alert.notification_id)
        s.seen_ids.append(alert.notification_id)
        if len(s.seen_ids) > MAX_SEEN:
            for old in s.seen_ids[: len(s.seen_ids) - MAX_SEEN]:
                self._seen.discard(old)
            s.seen_ids = s.seen_ids[-MAX_SEEN:]
        now = workflow.now()
        counts = s.alerts
        counts.total += 1
        counts.by_name[alert.name[:128]] = counts.by_name.get(alert.name[:128], 0) + 1
        if len(counts.by_name) > 200:
            counts.by_name = dict(sorted(counts.by_name.items(), key=lambda kv: -kv[1])[:200])
        counts.first_at = counts.first_at or now
        counts.last_at = now
        s.recent_alerts = [*s.recent_alerts, alert][-MAX_RECENT:]
        identity = alert_identity(alert)
        if alert.status is AlertStatus.firing:
            counts.firing += 1
            if identity not in self._firing:
                if len(self._firing) < MAX_FIRING:
                    self._firing.add(identity)
                self._event(
                    "alert",
                    f"firing: {alert.name}" + (f" — {alert.summary}" if alert.summary else ""),
                    actor=alert.source.value,
                    data={"id": alert.notification_id, "labels": dict(alert.labels)},
                )
                if self._resolve_pending is not None and self._resolve_pending[0] == "alert":
                    self._resolve_pending = None  # fired again before the incident closed
        elif alert.status is AlertStatus.resolved:
            counts.resolved += 1
            self._firing.discard(identity)
            self._event("alert", f"resolved: {alert.name}", actor=alert.source.value)
        elif alert.status is AlertStatus.acknowledged:
            self._acknowledge(Ack(by=f"{alert.source.value}", comment=alert.summary[:200]), "pd")
        else:
            self._event("alert", f"{alert.event_type or 'event'}: {alert.name}", actor="source")
        s.firing = sorted(self._firing)

    def _acknowledge(self, ack: Ack, source: str, verified: bool = False) -> None:
        s = self._s
        now = workflow.now()
        s.acks.append(
            AckRecord(at=now, by=ack.by, comment=ack.comment, source=source, verified=verified)
        )
        s.acks = s.acks[-100:]
        s.acknowledged_at = now
        s.acknowledged_by = ack.by
        run_id = s.run.workflow_id
        if (
            source == "fireline"
            and run_id is not None
            and s.run.phase not in _TERMINAL_RUN
            and self._patched("separate-late-acknowledger")
        ):
            # The run was started before this ack: tell it, so the acknowledger may not also
            # approve its high/critical steps (separation of duties).
            self._spawn(
                workflow.get_external_workflow_handle(run_id).signal(
                    SIGNAL_SEPARATE,
                    Separate(people=[ack.by], reason=f"acknowledged {self._incident_ref()}"),
                )
            )
        if s.escalation.state in ("triggered", "exhausted"):
            s.escalation.state = "acknowledged"
        if s.escalation.gate_step is None:
            s.escalation.next_at = None
        self._event(
            "ack",
            (ack.comment or "acknowledged")
            + ("" if verified or source != "fireline" else " (unverified)"),
            actor=ack.by,
        )
        self._changed = True
        self._refresh()

    def _refuse_closed(self) -> None:
        if self._closed():
            raise _refused(f"incident {self._s.incident_id} is closed ({self._s.phase.value})")

    # -------------------------------------------------------------- rights

    def _facts(self) -> IncidentFacts:
        s = self._s
        return IncidentFacts(
            workflow_id=s.incident_id,
            rights=self._start.rights,
            trusted_keys=self._start.trusted_keys,
            paged=tuple(sorted({p.person for p in s.pages} | set(s.escalation.paged))),
            acknowledgers=tuple(dict.fromkeys(a.by for a in s.acks if a.source == "fireline")),
            commander=s.commander,
        )

    def _screen(self, attempt: IncidentAttempt) -> None:
        """Validator: refusals that judge nobody are answered without entering history."""
        refusal = screen_incident_attempt(attempt, self._facts())
        if refusal is not None:
            raise _refused(refusal.reason)

    def _judge(self, attempt: IncidentAttempt) -> bool:
        """Handler: judge in full; a known person's refusal is audited, then answered.

        Returns whether the decision was proven by a signature.
        """
        refusal: Refusal | None = judge_incident(attempt, self._facts(), workflow.now())
        if refusal is not None:
            if refusal.audited:
                self._event(
                    f"{attempt.action}_refused",
                    refusal.reason,
                    actor=attempt.person,
                    data={"action": attempt.action, "step": attempt.step},
                )
                self._changed = True
                self._refresh()
            raise _refused(refusal.reason)
        return attempt.signed is not None

    @staticmethod
    def _ack_attempt(ack: Ack) -> IncidentAttempt:
        return IncidentAttempt(action="ack", person=ack.by, signed=ack.signed)

    @staticmethod
    def _command_attempt(cmd: Command) -> IncidentAttempt:
        return IncidentAttempt(
            action="command",
            person=cmd.by,
            step=cmd.action,
            signed=cmd.signed,
            inputs=cmd.claim_inputs(),
            to=cmd.to,
        )

    @staticmethod
    def _cancel_attempt(req: Resolve) -> IncidentAttempt:
        return IncidentAttempt(action="cancel", person=req.by, signed=req.signed)

    @workflow.update(name=UPDATE_ACK)
    def ack(self, ack: Ack) -> IncidentState:
        verified = self._judge(self._ack_attempt(ack))
        self._acknowledge(ack, "fireline", verified)
        return self._s

    @ack.validator
    def _validate_ack(self, ack: Ack) -> None:
        self._refuse_closed()
        self._screen(self._ack_attempt(ack))

    @workflow.update(name=UPDATE_COMMAND)
    def command(self, cmd: Command) -> IncidentState:
        verified = self._judge(self._command_attempt(cmd))
        mark = "" if verified else " (unverified)"
        s = self._s
        before = s.commander
        if cmd.action == "take":
            s.commander = cmd.by
            verb = f"{cmd.by} took command" + (f" from {before}" if before else "")
            if s.acknowledged_at is None:
                self._acknowledge(Ack(by=cmd.by, comment="took command"), "fireline", verified)
        elif cmd.action == "handover":
            assert cmd.to is not None
            s.commander = cmd.to
            verb = f"{cmd.by} handed command to {cmd.to}"
        else:
            s.commander = None
            verb = f"{cmd.by} handed command back; nobody holds it: the ladder restarts"
            s.escalation.state = "triggered"
            s.escalation.index = 0
            s.escalation.since = None
            s.escalation.reason = "escalation"
        if s.commander is not None:
            s.escalation.state = "commanded"
            s.escalation.next_at = None
        self._event(
            "command", verb + (f" — {cmd.comment}" if cmd.comment else "") + mark, actor=cmd.by
        )
        self._changed = True
        self._refresh()
        return s

    @command.validator
    def _validate_command(self, cmd: Command) -> None:
        self._refuse_closed()
        if cmd.action == "handover":
            if not cmd.to:
                raise _refused("a handover names who takes command (`to`)")
            if self._s.commander != cmd.by:
                raise _refused(
                    f"only the commander ({self._s.commander or 'nobody'}) can hand over command"
                )
        if cmd.action == "release" and self._s.commander != cmd.by:
            raise _refused(
                f"only the commander ({self._s.commander or 'nobody'}) can hand command back"
            )
        self._screen(self._command_attempt(cmd))

    @workflow.update(name=UPDATE_RESOLVE)
    def resolve(self, req: Resolve) -> IncidentState:
        self._resolve_pending = (req.by, req.comment or f"resolved by {req.by}")
        run = self._s.run
        running = run.workflow_id is not None and run.phase not in _TERMINAL_RUN
        if running and not run.mutated:
            self._cancel_run(f"{req.by} resolved the incident before any change was made")
        elif running:
            self._event(
                "resolution_recorded",
                f"{req.by} resolved it; the run carries on to its verification",
                actor=req.by,
            )
        self._changed = True
        return self._s

    @resolve.validator
    def _validate_resolve(self, req: Resolve) -> None:
        self._refuse_closed()

    @workflow.update(name=UPDATE_CANCEL)
    def cancel(self, req: Resolve) -> IncidentState:
        verified = self._judge(self._cancel_attempt(req))
        self._cancel_pending = (req.by, req.comment)
        self._cancel_run(f"cancelled by {req.by}" + ("" if verified else " (unverified)"))
        if self._s.phase is IncidentPhase.awaiting_approval and self._s.run.workflow_id is None:
            self._guard_rejected = True
        self._changed = True
        return self._s

    @cancel.validator
    def _validate_cancel(self, req: Resolve) -> None:
        self._refuse_closed()
        self._screen(self._cancel_attempt(req))

    def _decide(self, approval: Approval, decision: str) -> None:
        if approval.step == GUARD_STEP:
            self._event(
                "approval" if decision == "approved" else "rejection",
                f"guard gate {decision}" + (f": {approval.comment}" if approval.comment else ""),
                step=GUARD_STEP,
                actor=approval.approver,
            )
            if decision == "approved":
                self._guard_decision = approval
            else:
                self._guard_rejected = True
                self._close_gate(GUARD_STEP)
                self._s.phase = IncidentPhase.triaging
                self._release_guard_slot()
            self._changed = True
            return
        run_id = self._s.run.workflow_id
        assert run_id is not None
        name = messages.SIGNAL_APPROVE if decision == "approved" else messages.SIGNAL_REJECT
        self._spawn(workflow.get_external_workflow_handle(run_id).signal(name, approval))
        self._event(
            "decision_forwarded",
            f"{decision} `{approval.step}` passed to the run",
            step=approval.step,
            actor=approval.approver,
        )
        self._poll_now = True

    def _validate_decision(self, approval: Approval) -> None:
        self._refuse_closed()
        if approval.step == GUARD_STEP:
            if GUARD_STEP not in self._gate_steps:
                raise _refused("the guard is not holding this incident's run")
            return
        if self._s.run.workflow_id is None:
            raise _refused("this incident has no run yet")

    def _guard_attempt(self, approval: Approval, decision: str) -> IncidentAttempt | None:
        if approval.step != GUARD_STEP:
            return None  # a run's step: the run judges it
        return IncidentAttempt(
            action="approve" if decision == "approved" else "reject",
            person=approval.approver,
            step=GUARD_STEP,
            signed=approval.signed,
        )

    def _screen_decision(self, approval: Approval, decision: str) -> None:
        self._validate_decision(approval)
        attempt = self._guard_attempt(approval, decision)
        if attempt is not None:
            self._screen(attempt)

    def _judged_decide(self, approval: Approval, decision: str) -> None:
        attempt = self._guard_attempt(approval, decision)
        if attempt is not None:
            self._judge(attempt)
        self._decide(approval, decision)

    @workflow.update(name=UPDATE_APPROVE)
    def approve(self, approval: Approval) -> IncidentState:
        self._judged_decide(approval, "approved")
        return self._s

    @approve.validator
    def _validate_approve(self, approval: Approval) -> None:
        self._screen_decision(approval, "approved")

    @workflow.update(name=UPDATE_REJECT)
    def reject(self, approval: Approval) -> IncidentState:
        self._judged_decide(approval, "rejected")
        return self._s

    @reject.validator
    def _validate_reject(self, approval: Approval) -> None:
        self._screen_decision(approval, "rejected")

    def _decision_signal(self, approval: Approval, decision: str) -> None:
        try:
            self._screen_decision(approval, decision)
        except ApplicationError as err:
            self._event("decision_refused", str(err), step=approval.step, actor=approval.approver)
            return
        with contextlib.suppress(ApplicationError):  # the judge audited its refusal
            self._judged_decide(approval, decision)

    @workflow.signal(name=SIGNAL_APPROVE)
    def approve_signal(self, approval: Approval) -> None:
        self._decision_signal(approval, "approved")

    @workflow.signal(name=SIGNAL_REJECT)
    def reject_signal(self, approval: Approval) -> None:
        self._decision_signal(approval, "rejected")

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> IncidentState:
        return self._s

    # -------------------------------------------------------------- journal

    def _event(
        self,
        kind: str,
        message: str,
        *,
        actor: str = "fireline",
        step: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        self._s.timeline.append(
            TimelineEvent(
                at=workflow.now(),
                kind=kind,
                actor=actor,
                message=message,
                step=step,
                data=data or {},
            )
        )
        if len(self._s.timeline) > MAX_TIMELINE:
            drop = len(self._s.timeline) - MAX_TIMELINE
            self._s.timeline = self._s.timeline[drop:]
            self._s.timeline_dropped += drop

    def _label(self) -> None:
        """The UI's filters: service, severity, key, playbook, phase, unless already set."""
        if not self._start.upsert_search_attributes:
            return
        present = workflow.info().typed_search_attributes
        plan = self._start.plan
        wanted = [
            (SA_SERVICE_KEY, self._start.service),
            (SA_SEVERITY_KEY, self._s.severity),
            (SA_KEY_KEY, fit_search_attribute(self._s.key)),
            (SA_PHASE_KEY, self._s.phase.value),
            (SA_PLAYBOOK_KEY, plan.name if plan else ""),
        ]
        updates = [key.value_set(value) for key, value in wanted if value and key not in present]
        if updates:
            workflow.upsert_search_attributes(updates)
            self._sa_phase = self._s.phase.value

    def _refresh(self) -> None:
        workflow.set_current_details(render_banner(self._s))
        info = workflow.info()
        phase = self._s.phase.value
        if phase != self._sa_phase and SA_PHASE_KEY in info.typed_search_attributes:
            workflow.upsert_search_attributes([SA_PHASE_KEY.value_set(phase)])
        self._sa_phase = phase


def render_banner(s: IncidentState) -> str:
    """The incident's "current details" in the Temporal UI: where it stands, who must act."""
    e = s.escalation
    lines = [
        f"## Incident {s.key[:80]} — {s.phase.value.upper()}",
        f"Service **{s.service}** · severity **{s.severity}** · alerts {s.alerts.total} "
        f"({len(s.firing)} firing) · commander **{s.commander or 'none'}**",
    ]
    if e.paged and e.state != "stopped":
        due = f"; next tier at {e.next_at:%H:%M:%S} UTC" if e.next_at else ""
        lines.append(f"\n**Paged:** {', '.join(e.paged)} (tier {e.tier}){due}")
    if s.acknowledged_by:
        lines.append(f"Acknowledged by **{s.acknowledged_by}**")
    act: list[str] = []
    if e.gate_step == GUARD_STEP:
        act.append(
            f"the guard holds the run ({'; '.join(s.guard.reasons)}): "
            f"`fireline incident-approve {s.incident_id} guard`"
        )
    elif e.gate_step:
        act.append(
            f"`{e.gate_step}` waits for approval: "
            f"`fireline approve {s.run.workflow_id} {e.gate_step}` (your credential says who)"
        )
    if e.state in ("triggered", "exhausted") and s.resolved_at is None:
        act.append(f"acknowledge: `fireline ack {s.incident_id}`")
    if act:
        lines.append("\n**Who must act:** " + " · ".join(act))
    if s.run.workflow_id:
        lines.append(
            f"\n**Run:** {s.run.playbook} `{s.run.workflow_id}` — {s.run.phase}"
            + (f" (verified: {s.run.verified})" if s.run.verified is not None else "")
        )
    if s.resolution:
        lines.append(f"\n**Resolution:** {s.resolution} ({s.resolved_by})")
    elif s.phase is IncidentPhase.awaiting_approval:
        lines.append("\n**Next:** a decision at the gate, then the run continues")
    elif s.run.workflow_id and s.run.phase not in _TERMINAL_RUN:
        lines.append("\n**Next:** the run continues; it is verified before the incident closes")
    else:
        lines.append("\n**Next:** waiting for the alerts to resolve or a person to resolve it")
    return "\n".join(lines)
