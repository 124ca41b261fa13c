"""From normalised alerts to durable state: incidents in Temporal, the rest in the unrouted log.

:class:`Ingress` routes each alert, hands it to the group commit of its incident key and
returns only when every alert of the notification is durable: the incident's signal-with-start
has been accepted by Temporal, or the unrouted log has been fsynced. The Temporal call is a
:data:`Starter`, so the engine can be driven without a server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import structlog
from pydantic import BaseModel, Field

from fireline.catalog.routes import RouteMatch
from fireline.ingress.alert import Alert
from fireline.ingress.config import IngressSettings
from fireline.ingress.group_commit import CommitTimeout, GroupCommitter, Overloaded
from fireline.ingress.routing import RoutingTable
from fireline.ingress.unrouted import UnroutedStore

if TYPE_CHECKING:
    from temporalio.client import Client

    from fireline.incident import AlertBatch, IncidentStart
    from fireline.runtime.settings import Settings

log = structlog.get_logger("fireline.ingress")

UNROUTED_KEY = "\0unrouted"
MAX_REMEMBERED_RUNS = 100_000

Starter = Callable[[str, "IncidentStart", "AlertBatch"], Awaitable[str]]
"""Signal-with-start one batch for an incident key; returns the run id that took it."""

__all__ = ["CommitTimeout", "Ingress", "Overloaded", "TemporalStarter"]


@dataclass(eq=False)
class Routed:
    alert: Alert
    match: RouteMatch


class IncidentRef(BaseModel):
    key: str
    workflow_id: str
    service: str
    playbook: str | None = None
    alerts: int


class Accepted(BaseModel):
    """The answer to a sender: what became durable where."""

    alerts: int
    incidents: list[IncidentRef] = Field(default_factory=list)
    unrouted: int = 0
    notification_ids: list[str] = Field(default_factory=list)


class IngressStats(BaseModel):
    notifications: dict[str, int] = Field(default_factory=dict)
    alerts: dict[str, int] = Field(default_factory=dict)
    routed: int = 0
    unrouted: int = 0
    refused: dict[str, int] = Field(default_factory=dict, description="HTTP status -> count")
    signals: int = 0
    signalled_alerts: int = 0
    largest_batch: int = 0
    shed: int = Field(default=0, description="answered 503 at once: a write would land too late")
    waiting: int = 0
    route_problems: list[str] = Field(default_factory=list)


class TemporalStarter:
    """Signal-with-start ``IncidentWorkflow(id = incident_workflow_id(key))``.

    ``USE_EXISTING``: an open incident for the key takes the batch; ``ALLOW_DUPLICATE``: a key
    whose incident has closed opens a new one (its start input names the previous run).

    A new incident starts with its search attributes set (service, severity, key, playbook,
    phase), so its first task writes none. A namespace that lacks them (nobody ran
    ``fireline up`` or ``fireline worker`` against it) refuses such a start: the starter then
    opens incidents without them, and tells each incident not to set them either, so that a
    missing registration costs the UI's filters, never an alert. Values Temporal refuses (a
    size limit) cost that one incident its labels, never the labels of the ones after it.
    """

    def __init__(self, client: Callable[[], Awaitable[Client]], task_queue: str) -> None:
        self._client = client
        self.task_queue = task_queue
        self.labels = True
        """False once the namespace refused Fireline's search attributes."""

    async def __call__(self, key: str, start: IncidentStart, batch: AlertBatch) -> str:
        from temporalio.service import RPCError

        client = await self._client()
        if self.labels and start.upsert_search_attributes:
            try:
                return await self._start(client, key, start, batch, labelled=True)
            except RPCError as exc:
                refusal = attribute_refusal(exc)
                if refusal is None:
                    raise
                if refusal == "unregistered":
                    self.labels = False
                    log.warning(
                        "search attributes not registered: incidents open without them",
                        namespace=client.namespace,
                        error=exc.message,
                        fix="run `fireline worker` once against it, then restart the API",
                    )
                else:  # this incident's values only (a size limit): the next ones keep theirs
                    log.warning(
                        "search attributes refused: this incident opens without them",
                        key=key[:200],
                        error=exc.message,
                    )
        if start.upsert_search_attributes:
            # Unlabelled, and told not to label itself: the same refusal would fail its tasks.
            start = start.model_copy(update={"upsert_search_attributes": False})
        return await self._start(client, key, start, batch, labelled=False)

    async def _start(
        self, client: Client, key: str, start: IncidentStart, batch: AlertBatch, labelled: bool
    ) -> str:
        from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

        from fireline.incident import (
            INCIDENT_WORKFLOW,
            SIGNAL_ALERTS,
            incident_workflow_id,
            search_attributes,
        )

        handle = await client.start_workflow(
            INCIDENT_WORKFLOW,
            start,
            id=incident_workflow_id(key),
            task_queue=self.task_queue,
            start_signal=SIGNAL_ALERTS,
            start_signal_args=[batch],
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=search_attributes(start) if labelled else None,
        )
        return handle.result_run_id or ""


def attribute_refusal(exc: Exception) -> Literal["unregistered", "refused"] | None:
    """Why Temporal refused a start for its search attributes, if it did: the namespace does
    not have them ("unregistered"), or refused these values ("refused", a size limit)."""
    from temporalio.service import RPCError, RPCStatusCode

    if not isinstance(exc, RPCError) or exc.status != RPCStatusCode.INVALID_ARGUMENT:
        return None
    message = exc.message.lower()
    if "search attribute" not in message:
        return None
    unregistered = "no mapping defined" in message or "is not defined" in message
    return "unregistered" if unregistered else "refused"


class Ingress:
    def __init__(
        self,
        settings: Settings,
        config: IngressSettings,
        starter: Starter,
        table: RoutingTable | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.starter = starter
        self.table = table or RoutingTable(settings, config.reload_seconds)
        self.unrouted = UnroutedStore(settings.data_dir, config.unrouted_max_bytes)
        self.incidents: GroupCommitter[Routed] = GroupCommitter(
            self._flush,
            max_pending=config.max_pending,
            max_batch=config.max_batch,
            max_batch_bytes=config.max_batch_bytes,
            max_in_flight=config.max_in_flight,
            spacing=config.key_spacing_seconds,
            retry_after=config.retry_after_seconds,
        )
        self.unrouted_log: GroupCommitter[Alert] = GroupCommitter(
            self._flush_unrouted,
            max_pending=config.max_pending,
            max_batch=config.max_batch,
            max_batch_bytes=config.max_batch_bytes,
            max_in_flight=1,
            retry_after=config.retry_after_seconds,
        )
        self.runs: OrderedDict[str, str] = OrderedDict()
        self._notifications: Counter[str] = Counter()
        self._alerts: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._routed = 0
        self._unrouted = 0
        self._refresh_lock = asyncio.Lock()

    # --- the two writers -------------------------------------------------------------------

    async def _flush(self, key: str, items: list[Routed]) -> None:
        first = items[0]
        unique: dict[str, Alert] = {}
        for item in items:  # an HA pair's two copies often share a batch: send one
            unique.setdefault(item.alert.notification_id, item.alert)
        from fireline.incident import AlertBatch

        start = self.table.start(first.match, first.alert, previous=self.runs.get(key))
        batch = AlertBatch(batch_id=uuid.uuid4().hex, alerts=list(unique.values()))
        run_id = await self.starter(key, start, batch)
        if run_id:
            self.runs[key] = run_id
            self.runs.move_to_end(key)
            while len(self.runs) > MAX_REMEMBERED_RUNS:
                self.runs.popitem(last=False)

    async def _flush_unrouted(self, _: str, alerts: list[Alert]) -> None:
        await self.unrouted.append(alerts, datetime.now(UTC))

    # --- the door ---------------------------------------------------------------------------

    async def refresh(self) -> None:
        if not self.table.due():
            return
        async with self._refresh_lock:
            await asyncio.to_thread(self.table.refresh)

    def refused(self, code: int) -> None:
        self._refused[str(code)] += 1

    async def accept(
        self, source: str, alerts: list[Alert], deadline: float, size: int = 0
    ) -> Accepted:
        """Durable on return; raises Overloaded or CommitTimeout (answer 503) otherwise.

        ``deadline`` is a ``time.monotonic()`` instant; ``size`` the body's bytes, which
        bounds how much one signal carries.
        """
        await self.refresh()
        self._notifications[source] += 1
        self._alerts[source] += len(alerts)
        by_key: dict[str, list[Routed]] = {}
        unrouted: list[Alert] = []
        for alert in alerts:
            match = self.table.route(alert)
            if match is None:
                unrouted.append(alert)
            else:
                by_key.setdefault(match.incident_key, []).append(Routed(alert, match))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CommitTimeout("the deadline passed before the alerts could be written")
        share = size // max(len(alerts), 1)
        waits = [
            self.incidents.submit(key, items, remaining, share * len(items))
            for key, items in by_key.items()
        ]
        if unrouted:
            waits.append(
                self.unrouted_log.submit(UNROUTED_KEY, unrouted, remaining, share * len(unrouted))
            )
        if len(waits) == 1:  # the usual notification: one incident key, no task to gather
            await waits[0]
        else:
            results = await asyncio.gather(*waits, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        self._routed += sum(len(v) for v in by_key.values())
        self._unrouted += len(unrouted)
        if unrouted:
            log.info("unrouted alerts stored", source=source, count=len(unrouted))
        from fireline.incident import incident_workflow_id

        return Accepted(
            alerts=len(alerts),
            incidents=[
                IncidentRef(
                    key=key,
                    workflow_id=incident_workflow_id(key),
                    service=items[0].match.service,
                    playbook=items[0].match.playbook,
                    alerts=len(items),
                )
                for key, items in by_key.items()
            ],
            unrouted=len(unrouted),
            notification_ids=[a.notification_id for a in alerts],
        )

    def stats(self) -> IngressStats:
        commit = self.incidents.stats
        return IngressStats(
            notifications=dict(self._notifications),
            alerts=dict(self._alerts),
            routed=self._routed,
            unrouted=self._unrouted,
            refused=dict(self._refused),
            signals=commit.flushes,
            signalled_alerts=commit.flushed_items,
            largest_batch=commit.largest_batch,
            shed=commit.shed,
            waiting=self.incidents.waiting + self.unrouted_log.waiting,
            route_problems=list(self.table.problems),
        )

    async def aclose(self) -> None:
        await self.incidents.aclose()
        await self.unrouted_log.aclose()
