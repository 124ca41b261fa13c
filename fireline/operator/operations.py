"""What an operator can do to runs: start, inspect, follow, approve, reject, decide, cancel, list.

The CLI and the HTTP API are thin shells over these coroutines, so both speak the same rules,
the same error types and the same models. Every function takes an already connected client:
the CLI makes one per command, the API shares one for its lifetime.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from fireline import errors
from fireline.identity.signing import SignedDecision
from fireline.messages import (
    QUERY_STATUS,
    SA_PHASE,
    SA_PLAYBOOK,
    SA_REQUESTED_BY,
    SA_RISK,
    UPDATE_APPROVE,
    UPDATE_CANCEL,
    UPDATE_DECIDE,
    UPDATE_REJECT,
    WORKFLOW_NAME,
    Approval,
    CancelRun,
    Decision,
    DecisionAction,
    RunRequest,
    RunState,
    StepState,
    start_attributes,
)
from fireline.plan import IncludeNode, ParallelNode, Plan, StepNode
from fireline.runtime.settings import Settings

if TYPE_CHECKING:
    from fireline.compile.compiler import PlaybookLibrary
    from fireline.operator.plan_preview import PlanPreview

_QUERY_TIMEOUT = timedelta(seconds=15)


class OperationError(Exception):
    """Base of every failure an operator should see as a plain sentence, not a traceback."""


class RunNotFound(OperationError):
    """No workflow with that id exists in the namespace."""


class OperationRefused(OperationError):
    """The workflow said no (wrong step state, approver not in the role, run already over)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class InvalidInputs(OperationError, ValueError):
    """The given playbook inputs are missing, unknown or of the wrong type."""


class UnknownPlaybook(OperationError):
    """No playbook of that name in the library; runs start by library name only, never a path.

    So a caller can neither make the server read a file of its choosing nor see its content.
    """

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        shown = name if len(name) <= 80 else name[:77] + "..."
        super().__init__(
            f"no playbook named {shown!r} in the library; known: {', '.join(known) or 'none'}"
        )


class StartedRun(BaseModel):
    workflow_id: str
    run_id: str
    ui_url: str
    plan_hash: str
    playbook: str


class RunSummary(BaseModel):
    """One line of ``fireline runs``: visibility data, no query needed."""

    workflow_id: str
    run_id: str
    status: str
    playbook: str | None = None
    phase: str | None = None
    requested_by: str | None = None
    max_risk: str | None = None
    parent_id: str | None = None
    start_time: datetime | None = None
    close_time: datetime | None = None


# --- compiling ------------------------------------------------------------------------------


def load_library(settings: Settings, *paths: Path) -> PlaybookLibrary:
    """The playbook library of ``settings.playbooks_dir`` (or the given paths), modules loaded.

    Imported lazily: the compiler pulls in every domain package, which the API's health check
    and ``fireline runs`` do not need.
    """
    from fireline.compile.compiler import PlaybookLibrary

    return PlaybookLibrary.load(*(paths or (settings.playbooks_dir,)))


def compile_playbook(settings: Settings, playbook: str) -> Plan:
    """Compile one playbook of the library by name; raises ``CompileError`` with every problem.

    Raises :class:`UnknownPlaybook` for any other string (a path included) before anything
    beyond the library folder is looked at.
    """
    library = load_library(settings)
    known = sorted(library.names())
    if playbook not in known:
        raise UnknownPlaybook(playbook, known)
    return library.compile(playbook)


def resolve_inputs(plan: Plan, given: dict[str, Any]) -> dict[str, Any]:
    """Checked inputs, strings coerced to the declared types, defaults filled in.

    Raises :class:`InvalidInputs` naming every problem, so a run never starts half-specified.
    """
    from fireline.compile.compiler import apply_input_defaults

    try:
        return apply_input_defaults(plan, given)
    except ValueError as exc:
        raise InvalidInputs(str(exc)) from None


# --- starting -------------------------------------------------------------------------------


def new_workflow_id(playbook: str, now: datetime | None = None) -> str:
    """Readable and sortable in the UI, unique without a round trip to the server."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
    return f"fireline-{playbook}-{stamp}-{secrets.token_hex(3)}"


def ui_url(settings: Settings, workflow_id: str) -> str:
    base = settings.temporal_ui_url.rstrip("/")
    return f"{base}/namespaces/{settings.temporal_namespace}/workflows/{workflow_id}"


def plan_details(plan: Plan) -> str:
    """Markdown outline of the steps, shown as the workflow's details in the Temporal UI."""
    lines = [f"**{plan.name}** v{plan.version}"]
    if plan.description:
        lines.append(plan.description.strip())
    lines += [f"Plan `{plan.hash[:12]}`, max risk {plan.max_risk().value}", "", "Steps:"]

    def outline(nodes: list[Any], depth: int) -> None:
        pad = "  " * depth
        for node in nodes:
            if isinstance(node, StepNode):
                extra = f", gate: {node.gate.role}" if node.gate else ""
                lines.append(
                    f"{pad}- `{node.id}` {node.name}: {node.action.module} "
                    f"({node.risk.value}{extra})"
                )
            elif isinstance(node, ParallelNode):
                lines.append(f"{pad}- `{node.id}` {node.name} (parallel)")
                outline(node.branches, depth + 1)
            elif isinstance(node, IncludeNode):
                lines.append(f"{pad}- `{node.id}` {node.name}: playbook {node.plan.name}")

    outline(plan.nodes, 0)
    return "\n".join(lines)


async def start_run(
    client: Client,
    settings: Settings,
    playbook: str,
    inputs: dict[str, Any],
    requested_by: str,
    *,
    requested_by_verified: bool = False,
    trusted_keys: dict[str, str] | None = None,
) -> StartedRun:
    """Compile, check inputs, and start a PlaybookWorkflow; nothing starts if either fails.

    ``trusted_keys`` are the public keys whose signed decisions the run will accept.
    """
    # Compiling reads files and imports modules: keep it off the event loop.
    plan = await asyncio.to_thread(compile_playbook, settings, playbook)
    if not plan.hash:
        plan = plan.sealed()
    resolved = resolve_inputs(plan, inputs)
    workflow_id = new_workflow_id(plan.name)
    attributes = start_attributes(plan, requested_by)
    request = RunRequest(
        plan=plan,
        inputs=resolved,
        requested_by=requested_by,
        task_queue_prefix=settings.task_queue_prefix,
        trusted_keys=dict(trusted_keys or {}),
        requested_by_verified=requested_by_verified,
    )
    handle = await client.start_workflow(
        WORKFLOW_NAME,
        request,
        id=workflow_id,
        task_queue=settings.workflow_task_queue,
        search_attributes=attributes,
        static_summary=f"{plan.name} v{plan.version} by {requested_by}",
        static_details=plan_details(plan),
    )
    return StartedRun(
        workflow_id=workflow_id,
        run_id=handle.result_run_id or "",
        ui_url=ui_url(settings, workflow_id),
        plan_hash=plan.hash,
        playbook=plan.name,
    )


# --- inspecting -----------------------------------------------------------------------------


def _not_found(exc: RPCError) -> bool:
    return exc.status == RPCStatusCode.NOT_FOUND


async def status(client: Client, workflow_id: str) -> RunState:
    """The run's state from the workflow's own query: the source of truth, open or closed."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        state: RunState = await handle.query(
            QUERY_STATUS, result_type=RunState, rpc_timeout=_QUERY_TIMEOUT
        )
    except RPCError as exc:
        if _not_found(exc):
            raise RunNotFound(f"no run {workflow_id!r}") from None
        raise OperationError(f"cannot query {workflow_id!r}: {exc.message}") from exc
    except WorkflowQueryFailedError as exc:
        raise OperationError(f"query of {workflow_id!r} failed: {exc.message}") from exc
    if not state.workflow_id:
        state.workflow_id = workflow_id
    return state


async def describe(client: Client, workflow_id: str) -> RunSummary:
    """The run as visibility sees it (open or closed, and how it closed)."""
    try:
        described = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if _not_found(exc):
            raise RunNotFound(f"no run {workflow_id!r}") from None
        raise OperationError(f"cannot describe {workflow_id!r}: {exc.message}") from exc
    return _summary(described)


async def is_open(client: Client, workflow_id: str) -> bool:
    try:
        described = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if _not_found(exc):
            raise RunNotFound(f"no run {workflow_id!r}") from None
        raise
    return described.status == WorkflowExecutionStatus.RUNNING


async def follow(
    client: Client, workflow_id: str, *, interval_s: float = 0.5
) -> AsyncIterator[RunState]:
    """Yield the run's state each time it changes, ending with its final state.

    Polling the query keeps this independent of history encoding; it stops at a terminal phase,
    or when the workflow closed without reaching one (terminated or timed out).
    """
    last: str | None = None
    while True:
        state = await status(client, workflow_id)
        fingerprint = state.model_dump_json()
        if fingerprint != last:
            last = fingerprint
            yield state
        if state.phase.terminal:
            return
        if not await is_open(client, workflow_id):
            final = await status(client, workflow_id)
            if final.model_dump_json() != last:
                yield final
            return
        await asyncio.sleep(interval_s)


def _summary(execution: WorkflowExecution) -> RunSummary:
    attrs = execution.typed_search_attributes

    def keyword(name: str) -> str | None:
        return attrs.get(SearchAttributeKey.for_keyword(name))

    return RunSummary(
        workflow_id=execution.id,
        run_id=execution.run_id,
        status=execution.status.name.lower() if execution.status else "unknown",
        playbook=keyword(SA_PLAYBOOK),
        phase=keyword(SA_PHASE),
        requested_by=keyword(SA_REQUESTED_BY),
        max_risk=keyword(SA_RISK),
        parent_id=execution.parent_id,
        start_time=execution.start_time,
        close_time=execution.close_time,
    )


async def list_runs(client: Client, limit: int = 20) -> list[RunSummary]:
    """Most recent playbook runs from visibility (search attributes, no worker involved)."""
    runs: list[RunSummary] = []
    query = f"WorkflowType = '{WORKFLOW_NAME}'"
    async for execution in client.list_workflows(query, limit=limit):
        runs.append(_summary(execution))
    runs.sort(key=lambda r: r.start_time or datetime.min.replace(tzinfo=UTC), reverse=True)
    return runs


# --- deciding -------------------------------------------------------------------------------


def _decision_error(exc: RPCError, workflow_id: str) -> OperationError:
    """What an operator should hear when the server turns a decision or a cancel down."""
    if "already completed" in exc.message:
        return OperationRefused(f"run {workflow_id!r} has already finished")
    if _not_found(exc):
        return RunNotFound(f"no run {workflow_id!r}")
    return OperationError(exc.message)


async def _update(handle: WorkflowHandle[Any, Any], name: str, arg: BaseModel) -> StepState:
    """Run an update and translate the workflow's refusals into :class:`OperationRefused`."""
    try:
        answer: StepState = await handle.execute_update(name, arg, result_type=StepState)
        return answer
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.type == errors.REFUSED:
            raise OperationRefused(cause.message) from None
        raise OperationError(str(cause or exc)) from exc
    except RPCError as exc:
        raise _decision_error(exc, handle.id) from exc


async def approve(
    client: Client,
    workflow_id: str,
    step: str,
    by: str,
    comment: str = "",
    signed: SignedDecision | None = None,
) -> StepState:
    """Approve a gated step; returns the step as the workflow now sees it."""
    handle = client.get_workflow_handle(workflow_id)
    approval = Approval(step=step, approver=by, comment=comment, signed=signed)
    return await _update(handle, UPDATE_APPROVE, approval)


async def reject(
    client: Client,
    workflow_id: str,
    step: str,
    by: str,
    comment: str = "",
    signed: SignedDecision | None = None,
) -> StepState:
    """Reject a gated step: the workflow compensates what already ran."""
    handle = client.get_workflow_handle(workflow_id)
    approval = Approval(step=step, approver=by, comment=comment, signed=signed)
    return await _update(handle, UPDATE_REJECT, approval)


async def decide(
    client: Client,
    workflow_id: str,
    step: str,
    action: DecisionAction | str,
    by: str,
    comment: str = "",
    inputs: dict[str, Any] | None = None,
    signed: SignedDecision | None = None,
) -> StepState:
    """Answer a step paused by ``on_failure: ask``: retry (new inputs allowed), skip, compensate."""
    decision = Decision(
        step=step,
        action=DecisionAction(action),
        by=by,
        comment=comment,
        inputs=inputs or None,
        signed=signed,
    )
    return await _update(client.get_workflow_handle(workflow_id), UPDATE_DECIDE, decision)


PREDATES_CANCEL_UPDATE = "expected but not found"
"""How the SDK refuses an update the workflow has no handler for (a run started before
cancels were judged): such runs get Temporal's plain cancel."""


async def cancel(
    client: Client,
    workflow_id: str,
    reason: str = "",
    *,
    by: str | None = None,
    signed: SignedDecision | None = None,
) -> RunState | None:
    """Ask the run to stop; the workflow compensates what already ran before it ends.

    With ``by`` the cancel is a decision: the run judges it (who may cancel, signed or not)
    and records who and why in its timeline, then Temporal's cancel stops it. Without ``by``
    (or for a run that predates the cancel update) only Temporal's cancel is sent, and the
    timeline says nobody was recorded. Returns the run's state as the cancel left it.
    """
    # The server accepts a cancel of a closed run silently; an operator should hear it.
    if not await is_open(client, workflow_id):
        raise OperationRefused(f"run {workflow_id!r} has already finished")
    handle = client.get_workflow_handle(workflow_id)
    state: RunState | None = None
    if by is not None:
        request = CancelRun(by=by, comment=reason, signed=signed)
        try:
            state = await handle.execute_update(UPDATE_CANCEL, request, result_type=RunState)
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type == errors.REFUSED:
                raise OperationRefused(cause.message) from None
            if PREDATES_CANCEL_UPDATE not in str(cause or exc):
                raise OperationError(str(cause or exc)) from exc
        except RPCError as exc:
            raise _decision_error(exc, workflow_id) from exc
    note = f"cancelled by {by}: {reason}" if by is not None else reason
    try:
        await handle.cancel(reason=note)
    except RPCError as exc:
        raise _decision_error(exc, workflow_id) from exc
    return state


# --- planning -------------------------------------------------------------------------------

PLAN_PREVIEW_TIMEOUT_S = 30.0
"""How long one step's preview may take (a domain worker down answers within it)."""


async def preview_plan(
    client: Client,
    settings: Settings,
    playbook: str,
    inputs: dict[str, Any],
    *,
    timeout_s: float = PLAN_PREVIEW_TIMEOUT_S,
) -> PlanPreview:
    """What running ``playbook`` with ``inputs`` would do, step by step, changing nothing.

    Compiles and checks inputs as :func:`start_run` does (same errors), classifies every step,
    and has the domain workers read each determinable mutating step's preview from the real
    systems through a :data:`PLAN_PREVIEW_WORKFLOW` run. A preview that cannot be read says
    why on its own step; the plan is returned whatever the previews did.
    """
    from fireline.operator import plan_preview
    from workflows.plan_preview import (
        PLAN_PREVIEW_WORKFLOW,
        PlanPreviewRequest,
        PreviewCall,
        PreviewOutcome,
    )

    plan = await asyncio.to_thread(compile_playbook, settings, playbook)
    if not plan.hash:
        plan = plan.sealed()
    resolved = resolve_inputs(plan, inputs)
    steps = plan_preview.walk(plan, resolved)
    calls: list[PreviewCall] = []
    for step in steps:
        activity = plan_preview.preview_activity_of(plan, step.id)
        if plan_preview.wants_preview(step) and activity is not None:
            calls.append(
                PreviewCall(
                    step=step.id,
                    activity=activity,
                    domain=step.domain,
                    local=False,
                    inputs=step.inputs or {},
                )
            )
    outcomes: dict[str, PreviewOutcome] = {}
    if calls:
        request = PlanPreviewRequest(
            task_queue_prefix=settings.task_queue_prefix, calls=calls, timeout_s=timeout_s
        )
        try:
            answer: list[PreviewOutcome] = await client.execute_workflow(
                PLAN_PREVIEW_WORKFLOW,
                request,
                id=f"fireline-plan-{plan.name}-{secrets.token_hex(6)}",
                task_queue=settings.workflow_task_queue,
                # Previews run at once, each within timeout_s; no workflow worker: still answer
                # inside the CLI's 60 s request timeout.
                execution_timeout=timedelta(seconds=timeout_s + 10),
                result_type=list[PreviewOutcome],
                static_summary=f"plan preview of {plan.name} v{plan.version}",
            )
            outcomes = {o.step: o for o in answer}
        except Exception as exc:  # never abort the plan: every preview says why it is missing
            reason = f"the previews could not be run: {getattr(exc, 'message', '') or exc}"
            outcomes = {c.step: PreviewOutcome(step=c.step, error=reason[:500]) for c in calls}
    for step in steps:
        outcome = outcomes.get(step.id)
        if outcome is not None:
            step.preview, step.preview_error = outcome.preview, outcome.error
    return plan_preview.PlanPreview(
        playbook=plan.name,
        version=plan.version,
        plan_hash=plan.hash,
        max_risk=plan.max_risk(),
        inputs=resolved,
        steps=steps,
    )
