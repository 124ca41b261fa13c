"""The operator API for incidents: list, show, act (ack, command, approve, reject, resolve,
cancel), and read the timeline, the postmortem draft and the report.

Every route needs a credential: the person acting is the one the credential proves (the app's
:class:`fireline.operator.auth.Authenticator`), never a name in the body. Filters reach the
Temporal visibility query only after they match a strict pattern, so a filter value cannot
extend the query.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

from fireline.incident import (
    GUARD_STEP,
    INCIDENT_WORKFLOW,
    QUERY_STATUS,
    SA_INCIDENT_KEY,
    SA_SERVICE,
    SA_SEVERITY,
    UPDATE_ACK,
    UPDATE_APPROVE,
    UPDATE_CANCEL,
    UPDATE_COMMAND,
    UPDATE_REJECT,
    UPDATE_RESOLVE,
    Ack,
    Command,
    IncidentState,
    Resolve,
)
from fireline.messages import QUERY_STATUS as RUN_QUERY
from fireline.messages import SA_PHASE, Approval, RunState
from fireline.operator import operations
from fireline.operator.auth import Principal
from fireline.operator.decision_signing import Signer, step_inputs
from fireline.operator.postmortem import postmortem_markdown, timeline_json, timeline_markdown
from fireline.operator.report import Report, build_report

_FILTER = r"^[A-Za-z0-9._:-]{1,128}$"
LINK_LOOKBACK = 20
"""Ended runs of an incident id looked at for the previous incident (the latest counts)."""
log = structlog.get_logger("fireline.operator.incidents")
MAX_REPORT = 1000
"""Incidents a report reads (each is one query): a wider window is refused, not half-read."""

IncidentId = Annotated[str, Path(min_length=1, max_length=220, pattern=r"^[A-Za-z0-9._:-]+$")]
Filter = Annotated[str | None, Query(pattern=_FILTER)]


async def _principal(request: Request) -> Principal:
    principal: Principal = await request.app.state.authenticate(request)
    return principal


async def _client(request: Request) -> Client:
    client: Client = await request.app.state.temporal.get()
    return client


Who = Annotated[Principal, Depends(_principal)]
Temporal = Annotated[Client, Depends(_client)]


class IncidentRow(BaseModel):
    incident_id: str
    run_id: str | None = None
    key: str = ""
    service: str = ""
    severity: str = ""
    phase: str = ""
    open: bool
    opened_at: datetime | None = None
    closed_at: datetime | None = None


class Comment(BaseModel):
    comment: str = Field(default="", max_length=2000)


class CommandBody(BaseModel):
    action: Literal["take", "handover", "release"] = "take"
    to: str | None = Field(default=None, min_length=1, max_length=128)
    comment: str = Field(default="", max_length=2000)


class GateBody(BaseModel):
    step: str = Field(min_length=1, max_length=200)
    comment: str = Field(default="", max_length=2000)


def _keyword(execution: WorkflowExecution, name: str) -> str:
    value = execution.typed_search_attributes.get(SearchAttributeKey.for_keyword(name))
    return value or ""


def _row(execution: WorkflowExecution) -> IncidentRow:
    return IncidentRow(
        incident_id=execution.id,
        run_id=execution.run_id,
        key=_keyword(execution, SA_INCIDENT_KEY),
        service=_keyword(execution, SA_SERVICE),
        severity=_keyword(execution, SA_SEVERITY),
        phase=_keyword(execution, SA_PHASE),
        open=execution.close_time is None,
        opened_at=execution.start_time,
        closed_at=execution.close_time,
    )


def visibility_query(
    service: str | None = None,
    phase: str | None = None,
    severity: str | None = None,
    since: datetime | None = None,
) -> str:
    """The list filter; values are pattern-checked by the route before they get here."""
    # A run that continued as new is the same incident: only its latest run is listed.
    parts = [f"WorkflowType = '{INCIDENT_WORKFLOW}'", "ExecutionStatus != 'ContinuedAsNew'"]
    for name, value in ((SA_SERVICE, service), (SA_PHASE, phase), (SA_SEVERITY, severity)):
        if value is not None:
            if not re.fullmatch(_FILTER, value):
                raise ValueError(f"{name} filter {value!r} is not a plain name")
            parts.append(f"{name} = '{value}'")
    if since is not None:
        aware = since if since.tzinfo else since.replace(tzinfo=UTC)
        parts.append(f"StartTime >= '{aware.astimezone(UTC).isoformat()}'")
    return " AND ".join(parts)


async def _state(c: Client, incident_id: str) -> IncidentState:
    try:
        state: IncidentState = await c.get_workflow_handle(incident_id).query(
            QUERY_STATUS, result_type=IncidentState
        )
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no incident {incident_id!r}") from None
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, exc.message) from None
    return state


async def _linked(c: Client, incident_id: str, state: IncidentState) -> IncidentState:
    """``state`` linked to its key's previous incident, looked up when it opened unlinked.

    Ingress links a new incident to the one before it from its memory of the runs it
    started; an API restarted since, or another replica, did not see that one, so the link
    is looked up here: the latest run of the same workflow id that ended before this one
    opened (an earlier run of this incident continued as new, so it is not counted).
    """
    if state.previous_incident or state.opened_at is None:
        return state
    opened = state.opened_at.astimezone(UTC).isoformat()
    query = (
        f"WorkflowId = '{incident_id}' AND ExecutionStatus != 'Running' "
        f"AND ExecutionStatus != 'ContinuedAsNew' AND CloseTime < '{opened}'"
    )
    latest: tuple[datetime, str] | None = None
    try:
        async for earlier in c.list_workflows(query, limit=LINK_LOOKBACK):
            closed = earlier.close_time or datetime.min.replace(tzinfo=UTC)
            if latest is None or closed > latest[0]:
                latest = (closed, earlier.run_id)
    except RPCError as exc:
        log.warning("previous incident not looked up", incident_id=incident_id, error=exc.message)
        return state  # a hint for the reader: the incident's own record stands without it
    if latest is None:
        return state
    return state.model_copy(update={"previous_incident": latest[1]})


async def _run(c: Client, state: IncidentState) -> RunState | None:
    if not state.run.workflow_id:
        return None
    try:
        run: RunState = await c.get_workflow_handle(state.run.workflow_id).query(
            RUN_QUERY, result_type=RunState
        )
    except RPCError:
        return None  # retention removed it, or it never started: the incident's record stands
    return run


async def _update(c: Client, incident_id: str, name: str, arg: BaseModel) -> IncidentState:
    try:
        answer: IncidentState = await c.get_workflow_handle(incident_id).execute_update(
            name, arg, result_type=IncidentState
        )
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        message = getattr(cause, "message", None) or str(cause or exc)
        raise HTTPException(status.HTTP_409_CONFLICT, message) from None
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no incident {incident_id!r}") from None
        if "already completed" in exc.message:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"incident {incident_id!r} is closed"
            ) from None
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, exc.message) from None
    return answer


def _mark(who: Principal) -> str:
    return "" if who.verified else " (unverified)"


router = APIRouter(prefix="/v1", dependencies=[Depends(_principal)], tags=["incidents"])


@router.get("/incidents", response_model=list[IncidentRow])
async def list_incidents(
    c: Temporal,
    service: Filter = None,
    phase: Filter = None,
    severity: Filter = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[IncidentRow]:
    """Newest first; filters use the search attributes the incidents keep current."""
    rows: list[IncidentRow] = []
    async for execution in c.list_workflows(visibility_query(service, phase, severity)):
        rows.append(_row(execution))
        if len(rows) >= limit:
            break
    return rows


@router.get("/incidents/{incident_id}", response_model=IncidentState)
async def show_incident(incident_id: IncidentId, c: Temporal) -> IncidentState:
    return await _linked(c, incident_id, await _state(c, incident_id))


def _signer(request: Request) -> Signer:
    """The run API's signer (one per app): the incident's own decisions are signed the same
    way as a run's, with the decision key the incident trusts."""
    signer = getattr(request.app.state, "incident_signer", None)
    if signer is None:
        signer = request.app.state.incident_signer = Signer(request.app.state.settings)
    return signer


@router.post("/incidents/{incident_id}/ack", response_model=IncidentState)
async def ack(
    request: Request, incident_id: IncidentId, who: Who, c: Temporal, body: Comment | None = None
) -> IncidentState:
    """Acknowledge as the credential's person (signed), judged by the incident's rights."""
    comment = body.comment if body else ""
    signed = _signer(request).sign(who, incident_id, "", "ack", None)
    return await _update(
        c, incident_id, UPDATE_ACK, Ack(by=who.person, comment=comment, signed=signed)
    )


@router.post("/incidents/{incident_id}/command", response_model=IncidentState)
async def command(
    request: Request,
    incident_id: IncidentId,
    who: Who,
    c: Temporal,
    body: CommandBody | None = None,
) -> IncidentState:
    """Take command (default), hand it over to ``to``, or hand it back (``release``)."""
    body = body or CommandBody()
    cmd = Command(action=body.action, by=who.person, to=body.to, comment=body.comment)
    signed = _signer(request).sign(who, incident_id, body.action, "command", cmd.claim_inputs())
    return await _update(c, incident_id, UPDATE_COMMAND, cmd.model_copy(update={"signed": signed}))


@router.post("/incidents/{incident_id}/resolve", response_model=IncidentState)
async def resolve(
    incident_id: IncidentId, who: Who, c: Temporal, body: Comment | None = None
) -> IncidentState:
    comment = (body.comment if body else "") or f"resolved by {who.person}{_mark(who)}"
    return await _update(c, incident_id, UPDATE_RESOLVE, Resolve(by=who.person, comment=comment))


@router.post("/incidents/{incident_id}/cancel", response_model=IncidentState)
async def cancel(
    request: Request, incident_id: IncidentId, who: Who, c: Temporal, body: Comment | None = None
) -> IncidentState:
    """Cancel the incident's run (it compensates) and close the incident; signed, judged."""
    comment = (body.comment if body else "") + _mark(who)
    signed = _signer(request).sign(who, incident_id, "", "cancel", None)
    return await _update(
        c, incident_id, UPDATE_CANCEL, Resolve(by=who.person, comment=comment, signed=signed)
    )


async def _decide(
    request: Request, incident_id: str, body: GateBody, who: Who, c: Client, verb: str
) -> Any:
    """The guard's gate is the incident's own; any other step is the run's, judged there."""
    if body.step == GUARD_STEP:
        name = UPDATE_APPROVE if verb == "approve" else UPDATE_REJECT
        action: Literal["approve", "reject"] = "approve" if verb == "approve" else "reject"
        signed = _signer(request).sign(who, incident_id, GUARD_STEP, action, None)
        approval = Approval(
            step=GUARD_STEP, approver=who.person, comment=body.comment, signed=signed
        )
        return await _update(c, incident_id, name, approval)
    state = await _state(c, incident_id)
    run_id = state.run.workflow_id
    if not run_id:
        raise HTTPException(status.HTTP_409_CONFLICT, "this incident has no run yet")
    # Signed over the step's inputs, as the run's own approval route signs it.
    signer = _signer(request)
    inputs = await step_inputs(c, run_id, body.step)
    signed = signer.sign(
        who, run_id, body.step, "approve" if verb == "approve" else "reject", inputs
    )
    act = operations.approve if verb == "approve" else operations.reject
    try:
        return await act(c, run_id, body.step, who.person, body.comment, signed)
    except operations.OperationRefused as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, exc.reason) from None


@router.post("/incidents/{incident_id}/approve")
async def approve(
    request: Request, incident_id: IncidentId, body: GateBody, who: Who, c: Temporal
) -> Any:
    """Approve the guard's gate (step ``guard``) or a gate of the incident's run."""
    return await _decide(request, incident_id, body, who, c, "approve")


@router.post("/incidents/{incident_id}/reject")
async def reject(
    request: Request, incident_id: IncidentId, body: GateBody, who: Who, c: Temporal
) -> Any:
    return await _decide(request, incident_id, body, who, c, "reject")


@router.get("/incidents/{incident_id}/timeline", response_model=None)
async def timeline(
    incident_id: IncidentId,
    c: Temporal,
    fmt: Annotated[Literal["json", "markdown"], Query(alias="format")] = "json",
) -> Any:
    """Every alert, page, ack, decision, action, check and compensation, in time order."""
    state = await _state(c, incident_id)
    run = await _run(c, state)
    if fmt == "markdown":
        return PlainTextResponse(timeline_markdown(state, run), media_type="text/markdown")
    return timeline_json(state, run)


@router.get("/incidents/{incident_id}/postmortem", response_class=PlainTextResponse)
async def postmortem(incident_id: IncidentId, c: Temporal) -> PlainTextResponse:
    state = await _linked(c, incident_id, await _state(c, incident_id))
    run = await _run(c, state)
    return PlainTextResponse(postmortem_markdown(state, run), media_type="text/markdown")


@router.get("/reports/incidents", response_model=Report)
async def report(
    c: Temporal,
    since: Annotated[datetime | None, Query()] = None,
    service: Filter = None,
) -> Report:
    """MTTA, containment, MTTR and the rest over the incidents opened since ``since``."""
    states: list[IncidentState] = []
    async for execution in c.list_workflows(visibility_query(service=service, since=since)):
        if len(states) >= MAX_REPORT:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST,
                f"more than {MAX_REPORT} incidents in the window; narrow it with --since",
            )
        handle = c.get_workflow_handle(
            execution.id, run_id=execution.run_id, result_type=IncidentState
        )
        try:
            if execution.status is WorkflowExecutionStatus.COMPLETED:
                # A closed incident returned its state: read it, no replay needed.
                states.append(await handle.result(follow_runs=False))
            else:
                states.append(await handle.query(QUERY_STATUS, result_type=IncidentState))
        except (RPCError, WorkflowFailureError):
            continue
    return build_report(states, since=since, service=service)
