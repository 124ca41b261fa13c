"""Incidents and approvals at scale: alert -> first step, storms, waiting incidents, timers,
approvals in bulk; each against a raw twin on the same server, in the same run.

Incidents are opened as ingress opens them (``fireline.ingress.delivery``): signal-with-start
of IncidentWorkflow, id :func:`incident_workflow_id` of the key, input from
:func:`incident_start` with the catalog's pinned policy, signal :data:`SIGNAL_ALERTS`. Pages
are real webhooks to a loopback sink (:mod:`bench.sink`); approvals are signed as the API
signs them and go through the run's judge and its Ed25519 check.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError

from bench import clock, playbooks, raw
from bench.sink import PageSink
from fireline.catalog.model import Catalog
from fireline.identity.signing import (
    DecisionClaim,
    SignedDecision,
    generate_key,
    inputs_digest,
    sign_decision,
)
from fireline.incident import (
    INCIDENT_WORKFLOW,
    QUERY_STATUS,
    SIGNAL_ALERTS,
    AlertBatch,
    IncidentState,
    incident_start,
    incident_workflow_id,
    search_attributes,
)
from fireline.ingress.alert import Alert, AlertSource, AlertStatus
from fireline.messages import (
    QUERY_STATUS as RUN_QUERY_STATUS,
)
from fireline.messages import (
    UPDATE_APPROVE,
    Approval,
    RunState,
    StepState,
    StepStatus,
)
from fireline.plan import Plan

KEY_ID = "bench-api"
PRIVATE, PUBLIC = generate_key()
TRUSTED = {KEY_ID: PUBLIC}
"""The key the bench signs decisions with, as the API's; every Fireline run trusts it."""
APPROVER = "alice"
SERVICES = 20
"""A storm spreads over this many services (each has its own guard workflow)."""
TIMEOUT_S = 600.0
T = TypeVar("T")


def catalog(escalation_delay_s: float) -> Catalog:
    """The bench's services: alice then bob paged by webhook, a guard that lets storms run."""
    ladder = {
        "levels": [
            {"tier": 1, "delay": escalation_delay_s, "targets": [{"person": "alice"}]},
            {"tier": 2, "delay": escalation_delay_s, "targets": [{"person": "bob"}]},
        ],
        "ack_timeout": None,
    }
    service = {
        "escalation": ladder,
        "paging": [{"kind": "webhook", "target": "default"}],
        "guard": {"max_runs": 1000, "blast_budget": 100_000, "breaker": False},
    }
    return Catalog.model_validate(
        {
            **playbooks.CATALOG.model_dump(mode="json", exclude={"services"}),
            "services": {service_name(i): service for i in range(SERVICES)},
        }
    )


def service_name(i: int) -> str:
    return f"bench-svc-{i % SERVICES}"


def sign(workflow_id: str, step: str, inputs: dict[str, Any]) -> SignedDecision:
    """A decision signed as the API signs it: over the step's inputs, valid for an hour."""
    claim = DecisionClaim(
        workflow_id=workflow_id,
        step=step,
        action="approve",
        person=APPROVER,
        inputs_digest=inputs_digest(inputs),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    return sign_decision(claim, PRIVATE, KEY_ID)


def signed_approval(workflow_id: str, step: str, inputs: dict[str, Any]) -> Approval:
    return Approval(step=step, approver=APPROVER, signed=sign(workflow_id, step, inputs))


async def bounded(limit: int, jobs: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the jobs with at most ``limit`` in flight, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(j) for j in jobs))


def _alert(key: str) -> AlertBatch:
    return AlertBatch(
        batch_id=uuid.uuid4().hex,
        alerts=[
            Alert(
                source=AlertSource.alertmanager,
                notification_id=f"{key}-1",
                group_key=key,
                status=AlertStatus.firing,
                name="BenchDown",
                fingerprint=f"fp-{key}",
                received_at=datetime.now(UTC),
            )
        ],
    )


@dataclass
class Incidents:
    """Opens incidents and their raw twins on one server."""

    client: Client
    fireline_queue: str
    raw_queue: str
    catalog: Catalog
    sink: PageSink

    async def open(self, key: str, plan: Plan | None) -> WorkflowHandle[Any, Any]:
        """Signal-with-start, exactly as ingress delivers a routed alert."""
        start = incident_start(
            self.catalog,
            service_name(hash(key)),
            key,
            severity="critical",
            title=key,
            plan=plan,
            inputs={"target": key} if plan is not None else None,
            task_queue_prefix=self.fireline_queue,
            trusted_keys=TRUSTED,
        )
        return await self.client.start_workflow(
            INCIDENT_WORKFLOW,
            start,
            id=incident_workflow_id(key),
            task_queue=self.fireline_queue,
            start_signal=SIGNAL_ALERTS,
            start_signal_args=[_alert(key)],
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=search_attributes(start),
        )

    async def open_raw(self, key: str) -> WorkflowHandle[Any, Any]:
        return await self.client.start_workflow(
            raw.INCIDENT,
            raw.RawRequest(steps=1, task_queue=f"{self.raw_queue}-core"),
            id=f"raw-{key}",
            task_queue=self.raw_queue,
            start_signal=raw.SIGNAL_ALERTS,
            start_signal_args=[raw.RawAlerts(batch_id=uuid.uuid4().hex, alerts=[key])],
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        )

    async def open_ladder_raw(self, key: str, delay_s: float) -> WorkflowHandle[Any, Any]:
        return await self.client.start_workflow(
            raw.LADDER,
            raw.RawLadderRequest(
                url=self.sink.url, delay_s=delay_s, task_queue=f"{self.raw_queue}-core"
            ),
            id=f"raw-{key}",
            task_queue=self.raw_queue,
        )


async def until_started(ids: list[str], prefix: bool, deadline_s: float = TIMEOUT_S) -> list[float]:
    """Wait until each id (or the run under each incident id) has started an activity."""
    deadline = time.monotonic() + deadline_s
    found: dict[str, float] = {}
    while time.monotonic() < deadline:
        for workflow_id in ids:
            if workflow_id in found:
                continue
            at = clock.first_run_start(workflow_id) if prefix else clock.first_start(workflow_id)
            if at is not None:
                found[workflow_id] = at
        if len(found) == len(ids):
            return [found[i] for i in ids]
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{len(ids) - len(found)} of {len(ids)} never started their first step")


async def until_paged(sink: PageSink, ids: list[str], n: int) -> list[float]:
    """Wait until each id has had its ``n``-th page delivered; the arrival times."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        times = [sink.nth(i, n) for i in ids]
        if all(t is not None for t in times):
            return [t for t in times if t is not None]
        await asyncio.sleep(0.01)
    missing = sum(1 for i in ids if sink.nth(i, n) is None)
    raise RuntimeError(f"{missing} of {len(ids)} never had page {n} delivered")


async def until_incident(
    handle: WorkflowHandle[Any, Any], pred: Callable[[IncidentState], bool]
) -> IncidentState:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            state = await handle.query(QUERY_STATUS, result_type=IncidentState)
        except RPCError:
            state = None
        if state is not None and pred(state):
            return state
        await asyncio.sleep(0.25)
    raise RuntimeError(f"{handle.id} never reached the state waited for")


async def until_run_gate(handle: WorkflowHandle[Any, Any], step: str) -> StepState:
    """Poll the run's status until ``step`` awaits approval; the step as the run shows it."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            state = await handle.query(RUN_QUERY_STATUS, result_type=RunState)
            if state.step(step).status is StepStatus.awaiting_approval:
                return state.step(step)
        except RPCError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{handle.id} never reached its gate")


async def approve_update(handle: WorkflowHandle[Any, Any], inputs: dict[str, Any]) -> float:
    """One signed approval by update (as ``POST .../approve`` sends it); its latency in ms."""
    approval = signed_approval(handle.id, playbooks.GATED_STEP, inputs)
    began = time.monotonic()
    await handle.execute_update(UPDATE_APPROVE, approval, result_type=StepState)
    return (time.monotonic() - began) * 1000.0


async def approve_raw_update(handle: WorkflowHandle[Any, Any]) -> float:
    began = time.monotonic()
    await handle.execute_update(
        raw.UPDATE_APPROVE, raw.RawApproval(approver=APPROVER), result_type=bool
    )
    return (time.monotonic() - began) * 1000.0


async def terminate_all(handles: list[WorkflowHandle[Any, Any]], limit: int = 50) -> None:
    """End what a scenario left open, so the next one starts with an empty worker cache."""

    async def end(handle: WorkflowHandle[Any, Any]) -> None:
        with contextlib.suppress(RPCError):  # already closed
            await handle.terminate(reason="bench scenario over")

    await bounded(limit, [partial(end, h) for h in handles])


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc (no dependency needed)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until_quiet(
    pid: int | None, below: float = 0.1, window: float = 1.0, limit: float = 180.0
) -> float:
    """Wait until process ``pid`` uses under ``below`` of a core over ``window`` seconds.

    What one measurement leaves behind (the runs, pages and guard asks of the incidents it
    opened) must not slow the next one down: each figure is taken on a server at rest.
    Returns the seconds waited (``limit`` at most)."""
    began = time.monotonic()
    if pid is None:
        return 0.0
    while time.monotonic() - began < limit:
        before = cpu_seconds(pid)
        await asyncio.sleep(window)
        if cpu_seconds(pid) - before < below * window:
            break
    return time.monotonic() - began


def server_pid() -> int | None:
    """The dev server this process started: our child named ``temporal``."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        if ppid == me and name.startswith("temporal"):
            return int(entry.name)
    return None
