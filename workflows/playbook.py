"""PlaybookWorkflow: runs a compiled Plan durably (the definition and its handlers).

Each step goes preconditions -> [preview, approval gate] -> action -> push compensation ->
postconditions (polled until satisfied or their deadline). On a failed step, a failed check, a
rejection, a gate timeout or a cancellation the pushed compensations run in reverse, each
retried and then verified by re-running the forward step's preconditions. ``on_failure: ask``
pauses instead and waits for a human to retry (maybe with corrected inputs), skip or compensate.

The parts live beside it: ``gate`` (the pure judge of every decision), ``compensation`` (the
stack), ``checks`` (polling), ``journal`` (timeline, banner, search attributes), ``calls``
(activity options). Everything here is deterministic: time comes from ``workflow.now()``,
waiting from timers and ``wait_condition``, and all I/O from activities.

Refusals: an update validator refuses what judges nobody (no such step, not waiting, a person
the catalog does not know) so nothing is recorded; a known person without the right passes the
validator, and the handler records the refusal in the timeline before answering with it. A
signal has nobody to answer, so every refused signal is recorded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from fireline import errors
    from fireline.identity.signing import inputs_digest
    from fireline.messages import (
        QUERY_STATUS,
        SIGNAL_APPROVE,
        SIGNAL_DECIDE,
        SIGNAL_REJECT,
        SIGNAL_RUN_STATUS,
        SIGNAL_SEPARATE,
        UPDATE_APPROVE,
        UPDATE_CANCEL,
        UPDATE_DECIDE,
        UPDATE_REJECT,
        WORKFLOW_NAME,
        Approval,
        ApprovalRecord,
        CancelRun,
        CheckObservation,
        CompensationRecord,
        Decision,
        DecisionAction,
        RunPhase,
        RunRequest,
        RunResult,
        RunState,
        Separate,
        StepState,
        StepStatus,
        start_attributes,
    )
    from fireline.plan import (
        MAX_WAIT_S,
        WAIT_MODULE,
        ActivityCall,
        CheckCall,
        GateSpec,
        IncludeNode,
        OnFailure,
        ParallelNode,
        Plan,
        Preview,
        RetrySpec,
        Risk,
        StepNode,
    )
    from fireline.playbook.expressions import ExpressionError, lookup, parse_path, resolve
    from fireline.run_view import RunReport, signature, summarise
    from workflows.calls import call_activity, cancelled, failure_text
    from workflows.checks import observe, poll_check
    from workflows.compensation import (
        CompensationStack,
        call_of,
        make_record,
        rollback_summary,
        undone,
    )
    from workflows.gate import (
        Attempt,
        Refusal,
        RunFacts,
        counted_approvals,
        judge,
        judge_cancel,
        needed_approvals,
        screen,
        screen_cancel,
    )
    from workflows.journal import EMBARGO_ROLE, SA_PHASE_KEY, Journal

AnyNode = StepNode | ParallelNode | IncludeNode

PREVIEW_RETRY = RetrySpec(max_attempts=2, initial_interval_s=1.0, max_interval_s=5.0)
"""A preview is advice for the approver: one retry, then the gate opens without it."""
MAX_AUDITED_REFUSALS = 100
"""Refused decisions recorded per run; past it they are counted, not recorded."""


@dataclass
class StepFailed(Exception):
    """A step could not complete; ``askable`` says whether ``on_failure: ask`` may pause on it."""

    step: str
    kind: str
    message: str
    askable: bool = True

    def __str__(self) -> str:
        return f"step '{self.step}' {self.kind}: {self.message}"


def _apply_defaults(plan: Plan, given: dict[str, Any]) -> dict[str, Any]:
    """Declared inputs the starter left out take their default, or null, so expressions resolve."""
    values = dict(given)
    for spec in plan.inputs:
        values.setdefault(spec.name, spec.default)
    return values


@workflow.defn(name=WORKFLOW_NAME)
class PlaybookWorkflow:
    @workflow.init
    def __init__(self, request: RunRequest) -> None:
        self._request = request
        self._plan = request.plan
        self._inputs = _apply_defaults(request.plan, request.inputs)
        self._nodes: dict[str, AnyNode] = {n.id: n for n in request.plan.walk()}
        self._state = RunState(
            workflow_id=workflow.info().workflow_id,
            playbook=request.plan.name,
            version=request.plan.version,
            plan_hash=request.plan.hash,
            inputs=self._inputs,
            requested_by=request.requested_by,
            steps=[
                StepState(
                    id=n.id,
                    name=n.name,
                    kind=n.kind,
                    module=n.action.module if isinstance(n, StepNode) else None,
                    risk=_risk_of(n),
                    gate=n.gate if isinstance(n, StepNode | IncludeNode) else None,
                    mutates=n.mutates if isinstance(n, StepNode) else False,
                    domain=n.action.domain if isinstance(n, StepNode) else None,
                )
                for n in self._nodes.values()
            ],
        )
        self._steps = {s.id: s for s in self._state.steps}
        self._outputs: dict[str, dict[str, Any]] = {}
        self._stack = CompensationStack()
        self._journal = Journal(self._state)
        self._rejections: dict[str, ApprovalRecord] = {}
        self._decisions: dict[str, Decision] = {}
        self._overrides: dict[str, dict[str, Any]] = {}
        self._refusals = 0
        self._cancel: CancelRun | None = None
        self._cancel_verified: bool | None = None
        # What the incident learns from its own start; only a change from it is reported.
        self._reported = signature(summarise(self._state))
        self._reports: list[asyncio.Task[None]] = []
        rights = request.plan.rights
        service = self._inputs.get(rights.service_input) if rights is not None else None
        self._facts = RunFacts(
            workflow_id=workflow.info().workflow_id,
            plan_name=request.plan.name,
            requested_by=request.requested_by,
            rights=rights,
            trusted_keys=dict(request.trusted_keys),
            service=service if isinstance(service, str) else None,
            separated=tuple(request.separated_from),
        )

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, request: RunRequest) -> RunResult:
        self._state.started_at = workflow.now()
        self._event(
            "run_started",
            f"{self._plan.name} v{self._plan.version}",
            actor=request.requested_by,
            verified=request.requested_by_verified if self._plan.rights is not None else None,
        )
        self._refresh()
        try:
            await self._run_sequence(self._plan.nodes)
            try:
                self._state.outputs = resolve(self._plan.outputs, self._context())
            except ExpressionError as err:
                raise StepFailed("outputs", "outputs", str(err), askable=False) from err
        except StepFailed as failure:
            policy = self._policy_for(failure.step)
            self._event("step_failed", str(failure), step=failure.step)
            if policy is OnFailure.halt:
                await self._finish(RunPhase.failed, str(failure))
                raise ApplicationError(
                    f"{failure} (halted, nothing rolled back)",
                    self._result().model_dump(mode="json"),
                    type=errors.PLAYBOOK_FAILED,
                    non_retryable=True,
                ) from None
            ok = await self._rollback(str(failure))
            phase = RunPhase.compensated if ok else RunPhase.compensation_failed
            await self._finish(phase, str(failure))
            raise ApplicationError(
                f"{failure}; {self._compensation_summary()}",
                self._result().model_dump(mode="json"),
                type=errors.PLAYBOOK_COMPENSATED if ok else errors.PLAYBOOK_COMPENSATION_FAILED,
                non_retryable=True,
            ) from None
        except asyncio.CancelledError:
            if self._cancel is not None:
                note = f": {self._cancel.comment}" if self._cancel.comment else ""
                self._event(
                    "run_cancelled",
                    f"cancelled by {self._cancel.by}{note}: rolling back",
                    actor=self._cancel.by,
                    verified=self._cancel_verified,
                )
            else:
                self._event(
                    "run_cancelled",
                    "cancellation requested through Temporal directly (nobody recorded who): "
                    "rolling back",
                )
            for step in self._state.steps:
                if step.status in _ACTIVE:
                    step.status = StepStatus.cancelled
                    step.finished_at = workflow.now()
            ok = await self._rollback("run cancelled")
            if not ok:
                await self._finish(RunPhase.compensation_failed, "run cancelled")
                raise ApplicationError(
                    f"run cancelled; {self._compensation_summary()}",
                    self._result().model_dump(mode="json"),
                    type=errors.PLAYBOOK_COMPENSATION_FAILED,
                    non_retryable=True,
                ) from None
            await self._finish(RunPhase.cancelled, "run cancelled")
            raise
        await self._finish(RunPhase.succeeded, None)
        return self._result()

    async def _finish(self, phase: RunPhase, reason: str | None) -> None:
        self._state.phase = phase
        self._state.reason = reason
        self._state.finished_at = workflow.now()
        self._event("run_finished", f"{phase.value}" + (f": {reason}" if reason else ""))
        self._refresh()
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._reports_sent()

    def _result(self) -> RunResult:
        return RunResult(
            phase=self._state.phase,
            reason=self._state.reason,
            outputs=self._state.outputs,
            compensations=self._stack.pending(),
        )

    def _policy_for(self, step_id: str) -> OnFailure:
        node = self._nodes.get(step_id)
        if isinstance(node, StepNode | IncludeNode):
            return node.on_failure
        return self._plan.on_failure

    # ---------------------------------------------------------------- nodes

    async def _run_sequence(self, nodes: list[AnyNode]) -> None:
        for node in nodes:
            await self._run_node(node)

    async def _run_node(self, node: AnyNode) -> None:
        if isinstance(node, StepNode):
            await self._with_policy(node, self._run_step)
        elif isinstance(node, IncludeNode):
            await self._with_policy(node, self._run_include)
        else:
            await self._run_parallel(node)

    async def _with_policy(self, node: StepNode | IncludeNode, body: Any) -> None:
        """Run a step or include; on an askable failure under ``ask``, wait for a human."""
        state = self._steps[node.id]
        state.started_at = state.started_at or workflow.now()
        while True:
            state.attempts += 1
            try:
                await body(node, state)
            except asyncio.CancelledError:
                state.status = StepStatus.cancelled
                state.finished_at = workflow.now()
                self._event("step_cancelled", state.name, step=node.id)
                raise
            except StepFailed as failure:
                state.error = failure.message
                if state.status not in (StepStatus.rejected, StepStatus.cancelled):
                    state.status = StepStatus.failed
                state.finished_at = workflow.now()
                if node.on_failure is not OnFailure.ask or not failure.askable:
                    raise
                decision = await self._ask(node, state, failure)
                if decision.action is DecisionAction.retry:
                    if decision.inputs:
                        self._overrides.setdefault(node.id, {}).update(decision.inputs)
                    state.error = None
                    state.finished_at = None
                    continue
                if decision.action is DecisionAction.skip:
                    state.status = StepStatus.skipped
                    self._outputs[node.id] = {}
                    self._refresh()
                    return
                raise StepFailed(
                    node.id,
                    failure.kind,
                    f"{failure.message}; {decision.by} chose to compensate",
                    askable=False,
                ) from None
            else:
                state.status = StepStatus.succeeded
                state.finished_at = workflow.now()
                self._event("step_succeeded", state.name, step=node.id)
                self._refresh()
                return

    async def _run_step(self, node: StepNode, state: StepState) -> None:
        context = self._context()
        try:
            with_ = self._resolve_with(node.action, context)
            with_.update(self._overrides.get(node.id, {}))
        except ExpressionError as err:
            raise StepFailed(node.id, "input", str(err)) from err
        state.inputs = with_

        state.status = StepStatus.checking
        self._refresh()
        for n, check in enumerate(node.preconditions):
            obs = await self._check(node.id, n, check, {**context, "input": with_}, stage="pre")
            if obs is not None and not obs.satisfied:
                raise StepFailed(
                    node.id, "precondition", f"{check.name} not satisfied: {obs.detail}"
                )

        gate = node.gate
        rights = self._plan.rights
        if rights is not None and node.mutates:
            embargo = rights.embargo(
                workflow.now(), node.action.domain, self._facts.service, _target_of(with_)
            )
            if embargo is not None and embargo.mode == "hard":
                why = f" ({embargo.reason})" if embargo.reason else ""
                self._event("embargo_refused", f"embargo '{embargo.name}'{why}", step=node.id)
                raise StepFailed(
                    node.id, "embargo", f"embargo '{embargo.name}'{why} forbids this change now"
                )
            if embargo is not None and gate is None:
                # A soft embargo: the ungated change needs a Tier 3 approval first.
                gate = GateSpec(
                    role=EMBARGO_ROLE, tier=3, timeout_s=node.decision_timeout_s, approvers=None
                )
                state.gate = gate
                self._event(
                    "embargo_gate",
                    f"embargo '{embargo.name}': needs a Tier 3 approval",
                    step=node.id,
                )
        if gate is not None:
            await self._preview(node, with_, state)
            await self._gate(node.id, gate, state)

        state.status = StepStatus.running
        self._event("step_started", f"{node.name} ({node.action.module})", step=node.id)
        self._refresh()
        try:
            output = await self._act(node, with_, state)
        except (ActivityError, asyncio.CancelledError) as err:
            if cancelled(err):
                self._push_compensation(node, with_, None, maybe_ran=True)
                raise asyncio.CancelledError from None
            raise StepFailed(node.id, "action", failure_text(err)) from err
        state.outputs = output
        self._push_compensation(node, with_, output)
        if node.is_check:
            obs = observe(node.action.module, "post", output, 1)
            state.checks.append(obs)
            if not obs.satisfied:
                raise StepFailed(
                    node.id, "check", f"{node.action.module} not satisfied: {obs.detail}"
                )

        if node.postconditions:
            state.status = StepStatus.verifying
            self._refresh()
            post_context = {**context, "input": with_, "output": output}
            for n, check in enumerate(node.postconditions):
                obs = await self._check(node.id, n, check, post_context, stage="post")
                if obs is not None and not obs.satisfied:
                    raise StepFailed(
                        node.id,
                        "postcondition",
                        f"{check.name} not satisfied after {obs.attempts} attempts: {obs.detail}",
                    )
        self._outputs[node.id] = output

    async def _act(self, node: StepNode, with_: dict[str, Any], state: StepState) -> dict[str, Any]:
        if node.action.module == WAIT_MODULE:
            try:
                seconds = float(with_.get("seconds", 0))
            except (TypeError, ValueError):
                seconds = -1.0
            if not 0 <= seconds <= MAX_WAIT_S:
                raise StepFailed(
                    node.id,
                    "input",
                    f"seconds must be 0..{MAX_WAIT_S:g}, got {with_.get('seconds')!r}",
                )
            await workflow.sleep(
                timedelta(seconds=seconds), summary=f"{node.name}: wait {seconds:g}s"
            )
            return {"waited_s": seconds}
        activity_id = node.id if state.attempts == 1 else f"{node.id}#{state.attempts}"
        return await self._call(
            node.action, with_, activity_id, f"{node.name} ({node.action.module})"
        )

    async def _run_include(self, node: IncludeNode, state: StepState) -> None:
        bound = self._plan.rights is not None
        if node.gate is not None and not bound:
            await self._gate(node.id, node.gate, state)
        try:
            child_inputs = resolve(node.with_, self._context())
        except ExpressionError as err:
            raise StepFailed(node.id, "input", str(err)) from err
        state.inputs = child_inputs
        if node.gate is not None and bound:
            # With decision rights the approval binds to the inputs the child will get.
            await self._gate(node.id, node.gate, state)
        state.status = StepStatus.running
        child_id = f"{workflow.info().workflow_id}.{node.id}"
        if state.attempts > 1:
            child_id += f"-{state.attempts}"
        state.child_workflow_id = child_id
        self._event("include_started", f"{node.plan.name} as {child_id}", step=node.id)
        self._refresh()
        try:
            result = await workflow.execute_child_workflow(
                PlaybookWorkflow.run,
                RunRequest(
                    plan=node.plan,
                    inputs=child_inputs,
                    requested_by=self._request.requested_by,
                    task_queue_prefix=self._request.task_queue_prefix,
                    trusted_keys=self._request.trusted_keys,
                    requested_by_verified=self._request.requested_by_verified,
                    separated_from=self._request.separated_from,
                ),
                id=child_id,
                static_summary=f"{node.plan.name} (included by {self._plan.name}/{node.id})",
                # Children are runs too: filterable by playbook and phase like their parent.
                search_attributes=(
                    start_attributes(node.plan, self._request.requested_by)
                    if SA_PHASE_KEY in workflow.info().typed_search_attributes
                    else None
                ),
            )
        except ChildWorkflowError as err:
            if cancelled(err):
                raise asyncio.CancelledError from None
            raise StepFailed(node.id, "include", failure_text(err)) from err
        state.outputs = result.outputs
        self._outputs[node.id] = result.outputs
        self._stack.adopt(node.id, result.compensations)

    async def _run_parallel(self, node: ParallelNode) -> None:
        state = self._steps[node.id]
        state.status = StepStatus.running
        state.started_at = workflow.now()
        self._refresh()
        tasks = [asyncio.create_task(self._run_node(branch)) for branch in node.branches]
        try:
            await workflow.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            # Branches are tasks of their own: a cancelled run must stop them before it
            # rolls back, or they would go on acting while compensations run.
            await self._cancel_all(tasks)
            raise
        failures = [
            err
            for t in tasks
            if t.done() and not t.cancelled() and (err := t.exception()) is not None
        ]
        if failures:
            await self._cancel_all(tasks)
        state.finished_at = workflow.now()
        if failures:
            state.status = StepStatus.failed
            failure = failures[0]
            state.error = str(failure)
            # A StepFailed goes to the run's policy; anything else is a bug that fails the
            # workflow task, so a fixed worker can replay the run from here.
            raise failure
        state.status = StepStatus.succeeded
        self._refresh()

    @staticmethod
    async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            if not task.done():
                task.cancel()
        await workflow.wait(tasks)

    # ----------------------------------------------------------- activities

    async def _call(
        self, call: ActivityCall, arg: dict[str, Any], activity_id: str, summary: str
    ) -> dict[str, Any]:
        result: dict[str, Any] = await call_activity(
            call, arg, activity_id, summary, queue_prefix=self._request.task_queue_prefix
        )
        return result

    async def _check(
        self, step_id: str, index: int, check: CheckCall, context: dict[str, Any], *, stage: str
    ) -> CheckObservation | None:
        """Run a check once (``pre``) or poll it until satisfied or its deadline (``post``,
        ``rollback``); the last observation is recorded on the step either way."""
        if check.when and self._absent(check.when, context):
            return None
        try:
            params = self._resolve_with(check, context)
        except ExpressionError as err:
            raise StepFailed(step_id, f"{stage}condition", f"{check.name}: {err}") from err
        obs = await poll_check(
            check, params, step_id, index, stage, queue_prefix=self._request.task_queue_prefix
        )
        if step_id in self._steps:
            self._steps[step_id].checks.append(obs)
        self._event(
            "check_passed" if obs.satisfied else "check_failed",
            f"{stage} {check.name}: {obs.detail}",
            step=step_id,
        )
        return obs

    async def _preview(self, node: StepNode, with_: dict[str, Any], state: StepState) -> None:
        """Read what the step would change, for the approvers; a failure never blocks the gate."""
        state.preview, state.preview_error = None, None
        if node.action.preview is None:
            return
        call = node.action.model_copy(update={"retry": PREVIEW_RETRY})
        try:
            raw = await call_activity(
                call,
                with_,
                f"preview:{node.id}:{state.attempts}",
                f"preview {node.name} ({node.action.module})",
                queue_prefix=self._request.task_queue_prefix,
                activity=node.action.preview,
            )
            state.preview = Preview.model_validate(raw)
        except ActivityError as err:
            if cancelled(err):
                raise asyncio.CancelledError from None
            state.preview_error = failure_text(err)
        except ValueError as err:
            state.preview_error = f"the preview returned something else: {err}"[:500]
        if state.preview_error is not None:
            self._event("preview_unavailable", state.preview_error, step=node.id)

    # ---------------------------------------------------------------- gates

    async def _gate(self, step_id: str, gate: GateSpec, state: StepState) -> None:
        rights = self._plan.rights
        needed = needed_approvals(gate, state.risk, rights)
        if state.approvals and counted_approvals(state, rights) >= needed:
            return  # approved on an earlier attempt for these very inputs: no need to ask again
        reopened = ""
        if rights is not None and state.approvals:
            # The inputs changed since these approvals (a retry with new values): they no
            # longer count, and the approvers see the new inputs.
            state.superseded.extend(state.approvals)
            state.approvals = []
            reopened = f"; inputs changed since the last approval, now {state.inputs}"
        state.status = StepStatus.awaiting_approval
        state.gate_deadline = workflow.now() + timedelta(seconds=gate.timeout_s)
        who = f"role {gate.role}" + (f" ({', '.join(gate.approvers)})" if gate.approvers else "")
        self._event(
            "gate_reopened" if reopened else "gate_opened",
            f"needs {needed} approval(s) from {who} within {gate.timeout_s:g}s{reopened}",
            step=step_id,
        )
        self._refresh()
        try:
            await workflow.wait_condition(
                lambda: step_id in self._rejections or counted_approvals(state, rights) >= needed,
                timeout=timedelta(seconds=gate.timeout_s),
                timeout_summary=f"approval deadline for {step_id}",
            )
        except TimeoutError:
            state.status = StepStatus.rejected
            self._event("gate_timed_out", f"no decision within {gate.timeout_s:g}s", step=step_id)
            raise StepFailed(
                step_id,
                "gate timed out",
                f"not approved by {who} within {gate.timeout_s:g}s",
                askable=False,
            ) from None
        rejection = self._rejections.get(step_id)
        if rejection is not None:
            state.status = StepStatus.rejected
            reason = f" ({rejection.comment})" if rejection.comment else ""
            raise StepFailed(
                step_id, "rejected", f"rejected by {rejection.by}{reason}", askable=False
            )
        state.gate_deadline = None

    # ------------------------------------------------------------ judging

    def _judge(self, attempt: Attempt) -> Refusal | None:
        state = self._steps.get(attempt.step)
        return judge(attempt, state, state.gate if state else None, self._facts, workflow.now())

    def _refuse(self, kind: str, attempt: Attempt, refusal: Refusal) -> None:
        """Audit a refusal in the timeline (the person claimed, and whether it was signed).

        Bounded: a flood of forged signals must not grow the run's state without end.
        """
        self._refusals += 1
        if self._refusals > MAX_AUDITED_REFUSALS:
            return
        if self._refusals == MAX_AUDITED_REFUSALS:
            self._event(
                "refusals_capped",
                f"{MAX_AUDITED_REFUSALS} refused decisions recorded; further ones are not",
                step=attempt.step,
            )
            return
        self._event(
            kind,
            refusal.reason,
            step=attempt.step or None,
            actor=attempt.person,
            verified=self._verified(attempt),
        )

    def _verified(self, attempt: Attempt) -> bool | None:
        if self._plan.rights is None and attempt.signed is None:
            return None
        return attempt.signed is not None

    @staticmethod
    def _approval_attempt(approval: Approval, decision: str) -> Attempt:
        return Attempt(
            action="approve" if decision == "approved" else "reject",
            person=approval.approver,
            step=approval.step,
            signed=approval.signed,
        )

    @staticmethod
    def _decision_attempt(decision: Decision) -> Attempt:
        return Attempt(
            action=decision.action.value,
            person=decision.by,
            step=decision.step,
            signed=decision.signed,
            inputs=decision.inputs,
        )

    def _validate(self, attempt: Attempt) -> None:
        """Update validators: refuse what judges nobody, before anything is recorded."""
        state = self._steps.get(attempt.step)
        refusal = screen(attempt, state, state.gate if state else None, self._facts)
        if refusal is not None:
            raise ApplicationError(refusal.reason, type=errors.REFUSED, non_retryable=True)

    # ---------------------------------------------------------------- approvals

    def _record_approval(self, approval: Approval, decision: str, *, signal: bool) -> str | None:
        attempt = self._approval_attempt(approval, decision)
        verb = "approval" if decision == "approved" else "rejection"
        refusal = self._judge(attempt)
        if refusal is not None:
            if signal or refusal.audited:
                self._refuse(f"{verb}_refused", attempt, refusal)
            return refusal.reason
        state = self._steps[approval.step]
        verified = self._verified(attempt)
        record = ApprovalRecord(
            by=approval.approver,
            decision=decision,
            comment=approval.comment,
            at=workflow.now(),
            verified=verified,
            inputs_digest=inputs_digest(state.inputs or {}) if self._plan.rights else "",
        )
        state.approvals.append(record)
        if decision == "rejected":
            self._rejections[approval.step] = record
        self._event(
            decision,
            approval.comment or f"{verb} recorded",
            step=approval.step,
            actor=approval.approver,
            verified=verified,
        )
        self._refresh()
        return None

    @workflow.signal(name=SIGNAL_APPROVE)
    def approve_signal(self, approval: Approval) -> None:
        self._record_approval(approval, "approved", signal=True)

    @workflow.signal(name=SIGNAL_REJECT)
    def reject_signal(self, approval: Approval) -> None:
        self._record_approval(approval, "rejected", signal=True)

    @workflow.update(name=UPDATE_APPROVE)
    def approve_update(self, approval: Approval) -> StepState:
        refusal = self._record_approval(approval, "approved", signal=False)
        return self._answer(approval.step, refusal)

    @approve_update.validator
    def _validate_approve(self, approval: Approval) -> None:
        self._validate(self._approval_attempt(approval, "approved"))

    @workflow.update(name=UPDATE_REJECT)
    def reject_update(self, approval: Approval) -> StepState:
        refusal = self._record_approval(approval, "rejected", signal=False)
        return self._answer(approval.step, refusal)

    @reject_update.validator
    def _validate_reject(self, approval: Approval) -> None:
        self._validate(self._approval_attempt(approval, "rejected"))

    def _answer(self, step_id: str, refusal: str | None) -> StepState:
        if refusal is not None:
            raise ApplicationError(refusal, type=errors.REFUSED, non_retryable=True)
        return self._steps[step_id]

    # ------------------------------------------------------------ decisions

    async def _ask(
        self, node: StepNode | IncludeNode, state: StepState, failure: StepFailed
    ) -> Decision:
        self._decisions.pop(node.id, None)
        state.status = StepStatus.awaiting_decision
        self._event(
            "decision_needed",
            f"{failure}; retry, skip or compensate within {node.decision_timeout_s:g}s",
            step=node.id,
        )
        self._refresh()
        try:
            await workflow.wait_condition(
                lambda: node.id in self._decisions,
                timeout=timedelta(seconds=node.decision_timeout_s),
                timeout_summary=f"decision deadline for {node.id}",
            )
        except TimeoutError:
            self._event("decision_timed_out", "no decision in time: compensating", step=node.id)
            state.status = StepStatus.failed
            return Decision(step=node.id, action=DecisionAction.compensate, by="fireline")
        decision = self._decisions.pop(node.id)
        state.status = StepStatus.failed
        return decision

    def _record_decision(self, decision: Decision, *, signal: bool) -> str | None:
        attempt = self._decision_attempt(decision)
        refusal = self._judge(attempt)
        if refusal is not None:
            if signal or refusal.audited:
                self._refuse("decision_refused", attempt, refusal)
            return refusal.reason
        self._decisions[decision.step] = decision
        changed = f" with {sorted(decision.inputs)}" if decision.inputs else ""
        note = f": {decision.comment}" if decision.comment else ""
        self._event(
            f"decided_{decision.action.value}",
            f"{decision.action.value}{changed}{note}",
            step=decision.step,
            actor=decision.by,
            verified=self._verified(attempt),
        )
        return None

    @workflow.signal(name=SIGNAL_DECIDE)
    def decide_signal(self, decision: Decision) -> None:
        self._record_decision(decision, signal=True)

    @workflow.signal(name=SIGNAL_SEPARATE)
    def separate_signal(self, separate: Separate) -> None:
        """Bar more people from approving high/critical steps (an incident's acknowledger, who
        joined after the run started). Only ever adds a restriction, so it is not judged."""
        added = sorted(set(separate.people) - set(self._facts.separated))
        if not added:
            return
        self._facts = replace(self._facts, separated=(*self._facts.separated, *added))
        self._event(
            "separated",
            f"{', '.join(added)} may not approve high/critical steps"
            + (f": {separate.reason}" if separate.reason else ""),
        )

    @workflow.update(name=UPDATE_DECIDE)
    def decide_update(self, decision: Decision) -> StepState:
        return self._answer(decision.step, self._record_decision(decision, signal=False))

    @decide_update.validator
    def _validate_decide(self, decision: Decision) -> None:
        self._validate(self._decision_attempt(decision))

    # -------------------------------------------------------------- cancel

    def _running(self) -> bool:
        return self._state.phase in (
            RunPhase.running,
            RunPhase.awaiting_approval,
            RunPhase.awaiting_decision,
        )

    @workflow.update(name=UPDATE_CANCEL)
    def cancel_update(self, request: CancelRun) -> RunState:
        """Judge and record who cancels and why. The caller then sends Temporal's cancel,
        which stops the run where it waits and rolls it back exactly as any cancel does; a
        second request after an accepted one is answered without recording anything, so a
        caller that died between the two can simply ask again."""
        if self._cancel is not None:
            return self._state
        attempt = Attempt(action="cancel", person=request.by, step="", signed=request.signed)
        refusal = judge_cancel(
            attempt, self._state.steps, self._facts, workflow.now(), self._running()
        )
        if refusal is not None:
            if refusal.audited:
                self._refuse("cancel_refused", attempt, refusal)
            raise ApplicationError(refusal.reason, type=errors.REFUSED, non_retryable=True)
        self._cancel = request
        self._cancel_verified = self._verified(attempt)
        self._state.cancel_requested_by = request.by
        self._event(
            "cancel_requested",
            request.comment or "cancel requested",
            actor=request.by,
            verified=self._cancel_verified,
        )
        self._refresh()
        return self._state

    @cancel_update.validator
    def _validate_cancel(self, request: CancelRun) -> None:
        if self._cancel is not None:
            return
        attempt = Attempt(action="cancel", person=request.by, step="")
        refusal = screen_cancel(attempt, self._state.steps, self._facts, self._running())
        if refusal is not None:
            raise ApplicationError(refusal.reason, type=errors.REFUSED, non_retryable=True)

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> RunState:
        return self._state

    # --------------------------------------------------------- compensation

    def _push_compensation(
        self,
        node: StepNode,
        with_: dict[str, Any],
        output: dict[str, Any] | None,
        *,
        maybe_ran: bool = False,
    ) -> None:
        """Record how to undo a step that ran (or may have run, when interrupted mid-action)."""
        self._stack.drop(node.id)
        call = node.compensation
        if call is None:
            return
        context = {**self._context(), "input": with_}
        if output is not None:
            context["output"] = output
        if call.when and self._absent(call.when, context):
            return
        try:
            comp_input = self._resolve_with(call, context)
            verify = [
                c.model_copy(
                    update={"with_": self._resolve_with(c, context), "when": None}
                ).model_dump(by_alias=True)
                for c in node.preconditions
                if not (c.when and self._absent(c.when, context))
            ]
        except ExpressionError as err:
            if maybe_ran:
                self._event(
                    "compensation_unresolved", f"may need a manual undo: {err}", step=node.id
                )
                return
            raise StepFailed(node.id, "compensation", f"cannot derive the undo: {err}") from err
        self._stack.push(make_record(node.id, call, comp_input, verify))

    async def _rollback(self, reason: str) -> bool:
        """Run the compensations in a task of their own, so a cancellation that arrives while
        rolling back cannot stop the rollback half-way; it is recorded and the rollback goes on."""
        task = asyncio.create_task(self._compensate(reason))
        while not task.done():
            try:
                await workflow.wait([task])
            except asyncio.CancelledError:
                self._event("cancel_during_rollback", "cancellation requested: rollback goes on")
        return task.result()

    async def _compensate(self, reason: str) -> bool:
        """Run pushed compensations newest first; keep going past a failure, report it."""
        pending = self._stack.rollback_order()
        if not pending:
            return True
        self._state.phase = RunPhase.compensating
        self._event("compensation_started", f"{len(pending)} to undo because {reason}")
        self._refresh()
        all_ok = True
        for record in pending:
            self._state.compensations.append(record)
            owner = self._steps.get(record.step.split("/", 1)[0])
            try:
                await self._call(
                    call_of(record),
                    record.input,
                    f"undo:{record.step}",
                    f"undo {record.step} ({record.module})",
                )
            except ActivityError as err:
                record.status, record.error = "failed", failure_text(err)
                self._event(
                    "compensation_failed", f"{record.module}: {record.error}", step=record.step
                )
            else:
                record.status = "succeeded"
                record.verified = await self._verify_rollback(record)
                if record.verified is False:
                    record.error = "rollback ran but the step's preconditions do not hold again"
                self._event(
                    "compensated" if record.verified is not False else "compensation_unverified",
                    f"{record.module}" + (f": {record.error}" if record.error else ""),
                    step=record.step,
                )
            ok = undone(record)
            all_ok = all_ok and ok
            if owner is not None:
                owner.status = StepStatus.compensated if ok else StepStatus.compensation_failed
            self._refresh()
        return all_ok

    async def _verify_rollback(self, record: CompensationRecord) -> bool | None:
        if not record.verify:
            return None
        step_id = record.step.split("/", 1)[0]
        for n, raw in enumerate(record.verify):
            check = CheckCall.model_validate(raw)
            obs = await self._check(step_id, n, check, self._context(), stage="rollback")
            if obs is not None and not obs.satisfied:
                return False
        return True

    def _compensation_summary(self) -> str:
        return rollback_summary(self._state.compensations)

    # -------------------------------------------------------------- helpers

    def _context(self) -> dict[str, Any]:
        return {
            "inputs": self._inputs,
            "steps": {sid: {"outputs": out} for sid, out in self._outputs.items()},
        }

    @staticmethod
    def _resolve_with(call: ActivityCall, context: dict[str, Any]) -> dict[str, Any]:
        with_ = call.with_
        if set(with_) == {"$from"}:
            whole = resolve(with_["$from"], context)
            if not isinstance(whole, dict):
                raise ExpressionError(f"{with_['$from']} is not an object")
            return dict(whole)
        return resolve(with_, context)

    @staticmethod
    def _absent(path: str, context: dict[str, Any]) -> bool:
        try:
            return lookup(context, parse_path(path)) is None
        except ExpressionError:
            return True

    def _event(
        self,
        kind: str,
        message: str,
        *,
        step: str | None = None,
        actor: str = "fireline",
        verified: bool | None = None,
    ) -> None:
        self._journal.event(kind, message, step=step, actor=actor, verified=verified)

    def _refresh(self) -> None:
        self._journal.refresh()
        self._report()

    def _report(self) -> None:
        """Tell the incident that started this run what changed (``RunRequest.report_to``)."""
        to = self._request.report_to
        if to is None:
            return
        view = summarise(self._state)
        mark = signature(view)
        if mark == self._reported:
            return
        self._reported = mark
        report = RunReport(run_id=workflow.info().workflow_id, view=view)
        handle = workflow.get_external_workflow_handle(to)
        self._reports = [t for t in self._reports if not t.done()]
        self._reports.append(asyncio.ensure_future(handle.signal(SIGNAL_RUN_STATUS, report)))

    async def _reports_sent(self) -> None:
        for task in self._reports:
            try:
                await task
            except ApplicationError as err:  # the incident is gone: nobody to tell
                workflow.logger.info("run status not delivered: %s", err)
        self._reports = []


def _risk_of(node: AnyNode) -> Risk:
    """A step's own risk; an included playbook's is the highest of its steps."""
    if isinstance(node, StepNode):
        return node.risk
    if isinstance(node, IncludeNode):
        return node.plan.max_risk()
    return Risk.low


def _target_of(with_: dict[str, Any]) -> str | None:
    value = with_.get("target")
    return value if isinstance(value, str) else None


_ACTIVE = frozenset(
    {
        StepStatus.checking,
        StepStatus.awaiting_approval,
        StepStatus.running,
        StepStatus.verifying,
        StepStatus.awaiting_decision,
    }
)
