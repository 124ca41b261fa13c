"""What an incident asks of the outside world: pages, its run's status, the guard's verdict.

``core.page`` sends one page through a channel named in settings (``targets.webhook.NAME``
with a ``url``, or ``targets.pagerduty.NAME`` with a ``routing_key``), so URLs and routing
keys never enter workflow history. The webhook body carries ``text`` (what Slack-compatible
incoming webhooks show) plus structured fields and a ``thread_key`` that is the same for every
page of one incident; PagerDuty gets an Events API v2 event whose ``dedup_key`` is the
incident, so its pages fold into one PagerDuty incident.

``core.run_status`` and ``core.guard_admit`` are local checks (they run on the workflow
worker, next to the Temporal client): the incident reads its child run's ``status`` query
through the first (a safety net: runs report their status to their incident), and asks its
service's GuardWorkflow for admission (update-with-start, batched per guard) through the
second. Reading the run this way keeps the incident's coupling to the playbook workflow to its
query and :class:`fireline.messages.RunState`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from pydantic import BaseModel, Field, SecretStr, ValidationError
from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.core.runtime import (
    HttpClientSet,
    configured_target,
    invalid_input,
    require_url,
    running,
)
from fireline.incident import GUARD_UPDATE_ADMIT_BATCH, GUARD_WORKFLOW, GuardStatus
from fireline.messages import QUERY_STATUS, RunState
from fireline.modules import check, module
from fireline.plan import RetrySpec, Risk
from fireline.run_view import RunStatusView, summarise

log = structlog.get_logger(__name__)


PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
MAX_TEXT = 3000
"""Slack truncates long messages anyway; PagerDuty refuses summaries over 1024 characters."""
PD_SUMMARY = 1024


class WebhookTarget(BaseModel):
    url: str


class PagerDutyTarget(BaseModel):
    routing_key: SecretStr = Field(min_length=1)
    url: str = PAGERDUTY_EVENTS_URL


class PageInput(BaseModel):
    channel: Literal["webhook", "pagerduty"] = "webhook"
    target: str = Field(default="default", max_length=128)
    incident_id: str = Field(max_length=512)
    """Thread key (webhook) and dedup key (PagerDuty): one per incident."""
    person: str = Field(max_length=128)
    tier: int = 1
    title: str = Field(default="", max_length=1024)
    message: str = Field(default="", max_length=20_000)
    severity: str = "critical"
    commander: str | None = None
    action: Literal["trigger", "acknowledge", "resolve"] = "trigger"
    service: str = ""
    fields: dict[str, Any] = Field(default_factory=dict)


class PageOutput(BaseModel):
    delivered: bool
    status: int
    channel: str
    dedup_key: str | None = None


_PD_SEVERITY = {"critical": "critical", "error": "error", "warning": "warning", "info": "info"}


def webhook_body(request: PageInput) -> dict[str, Any]:
    """The JSON a Slack-compatible receiver accepts (``text``), with structured extras."""
    head = f"[{request.severity.upper()}] {request.title}".strip()
    lines = [head, f"Paging {request.person} (tier {request.tier})"]
    if request.commander:
        lines.append(f"Commander: {request.commander}")
    if request.message:
        lines.append(request.message)
    text = "\n".join(lines)
    return {
        "text": text[:MAX_TEXT],
        "thread_key": request.incident_id,
        "incident_id": request.incident_id,
        "service": request.service,
        "person": request.person,
        "tier": request.tier,
        "severity": request.severity,
        "commander": request.commander,
        "action": request.action,
        "fields": request.fields,
        "sent_at": datetime.now(UTC).isoformat(),
    }


def pagerduty_event(request: PageInput, routing_key: str) -> dict[str, Any]:
    """An Events API v2 event; ``dedup_key`` folds every page of the incident together."""
    summary = f"{request.title} (paging {request.person}, tier {request.tier})"
    if request.commander:
        summary += f"; commander {request.commander}"
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": request.action,
        "dedup_key": request.incident_id[:255],
    }
    if request.action == "trigger":
        event["payload"] = {
            "summary": summary[:PD_SUMMARY],
            "source": request.service or "fireline",
            "severity": _PD_SEVERITY.get(request.severity.lower(), "critical"),
            "component": request.service or None,
            "custom_details": {
                "person": request.person,
                "tier": request.tier,
                "commander": request.commander,
                "message": request.message[:MAX_TEXT],
                **request.fields,
            },
        }
    return event


class PagingModules(HttpClientSet):
    """Pages over one pooled HTTP client per worker."""

    def _target(self, kind: str, name: str) -> dict[str, Any]:
        """``targets.KIND.NAME``; the default webhook falls back to ``notify_webhook_url``."""
        if (
            kind == "webhook"
            and name == "default"
            and name not in self.settings.targets.get(kind, {})
            and self.settings.notify_webhook_url
        ):
            return {"url": self.settings.notify_webhook_url}
        return configured_target(self.settings, kind, name)

    @module(
        "core.page",
        domain="core",
        risk=Risk.low,
        mutates=False,
        retry=RetrySpec(max_attempts=4, initial_interval_s=1.0, max_interval_s=10.0),
    )
    async def page(self, request: PageInput) -> PageOutput:
        """Page one person about an incident, by webhook or PagerDuty Events API v2.

        A refused or failed delivery raises (retried by policy), so the incident records it
        instead of believing someone was told.
        """
        async with running("core.page"):
            raw = self._target(request.channel, request.target)
            try:
                if request.channel == "pagerduty":
                    pd = PagerDutyTarget.model_validate(raw)
                    url = pd.url
                    body = pagerduty_event(request, pd.routing_key.get_secret_value())
                else:
                    url = WebhookTarget.model_validate(raw).url
                    body = webhook_body(request)
            except ValidationError as err:
                raise invalid_input(
                    f"settings for {request.channel} target {request.target!r}: {err}"
                ) from None
            require_url(url, f"targets.{request.channel}.{request.target}.url")
            # A refusal's body may echo what we sent; never the routing key (it is not in the URL).
            headers = {"X-Fireline-Thread": request.incident_id[:255]}
            response = await self.deliver(url, body, headers)
            log.info(
                "page delivered",
                channel=request.channel,
                target=request.target,
                person=request.person,
                tier=request.tier,
                status=response.status_code,
            )
            return PageOutput(
                delivered=True,
                status=response.status_code,
                channel=f"{request.channel}:{request.target}",
                dedup_key=body.get("dedup_key") if request.channel == "pagerduty" else None,
            )


class RunStatusInput(BaseModel):
    workflow_id: str = Field(max_length=1024)


@check("core.run_status", domain="core", local=True, retry=RetrySpec(max_attempts=3))
async def run_status(request: RunStatusInput) -> RunStatusView:
    """Read a playbook run's status query: phase, step statuses, open gates, verification."""
    handle = activity.client().get_workflow_handle(request.workflow_id)
    try:
        state = await handle.query(QUERY_STATUS, result_type=RunState)
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            return RunStatusView(found=False)
        # A run that closed before answering any query (cancelled at birth, terminated)
        # still has a status: report it, so the incident does not wait for it forever.
        description = await handle.describe()
        status = description.status
        if status is None or status is WorkflowExecutionStatus.RUNNING:
            raise
        return RunStatusView(
            found=True, phase=_CLOSED.get(status, "failed"), reason=f"run {status.name.lower()}"
        )
    return summarise(state)


_CLOSED = {
    WorkflowExecutionStatus.COMPLETED: "succeeded",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "cancelled",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.TIMED_OUT: "failed",
}


class GuardAdmitInput(BaseModel):
    workflow_id: str
    task_queue: str
    request: dict[str, Any]
    """A :class:`workflows.guard.AdmitRequest` dump (kept as data: activities do not import
    workflow code)."""


BATCH_LIMIT = 200
"""Requests per ``admit_batch`` update (the guard refuses more)."""


class AdmitBatcher:
    """Coalesces the concurrent asks of this worker for one guard into one update.

    Temporal allows a workflow only a few in-flight updates, so a storm of incidents asking
    one guard one update each was refused and retried. Here the first ask for a guard sends
    an update; asks arriving while it is in flight wait and go together in the next one, and
    each caller gets its own answer. (Ingress's group commit, on the worker side.)
    """

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], list[tuple[dict[str, Any], asyncio.Future[Any]]]] = {}
        self._sending: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def admit(self, client: Client, request: GuardAdmitInput) -> GuardStatus:
        key = (request.workflow_id, request.task_queue)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append((request.request, answer))
        if key not in self._sending:
            self._sending.add(key)
            task = asyncio.create_task(self._send(client, key, request.request.get("service", "")))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        result: GuardStatus = await answer
        return result

    async def _send(self, client: Client, key: tuple[str, str], service: str) -> None:
        try:
            while self._waiting.get(key):
                pending = self._waiting.pop(key)
                batch, rest = pending[:BATCH_LIMIT], pending[BATCH_LIMIT:]
                if rest:
                    self._waiting[key] = rest + self._waiting.get(key, [])
                live = [(r, f) for r, f in batch if not f.done()]  # a cancelled ask is dropped
                if not live:
                    continue
                start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
                    GUARD_WORKFLOW,
                    {"service": service},
                    id=key[0],
                    task_queue=key[1],
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                )
                try:
                    statuses = await client.execute_update_with_start_workflow(
                        GUARD_UPDATE_ADMIT_BATCH,
                        [r for r, _ in live],
                        start_workflow_operation=start,
                        result_type=list[GuardStatus],
                    )
                except Exception as err:  # every waiting ask fails and retries on its own
                    for _, f in live:
                        if not f.done():
                            f.set_exception(err)
                    continue
                for (_, f), status in zip(live, statuses, strict=True):
                    if not f.done():
                        f.set_result(status)
        finally:
            self._sending.discard(key)


BATCHER = AdmitBatcher()


@check("core.guard_admit", domain="core", local=True, retry=RetrySpec(max_attempts=5))
async def guard_admit(request: GuardAdmitInput) -> GuardStatus:
    """Ask the service's GuardWorkflow whether a run may go ahead (starting it if needed)."""
    return await BATCHER.admit(activity.client(), request)
