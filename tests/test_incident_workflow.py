"""IncidentWorkflow on the time-skipping server: ladders, pages, acks, commander, guard, resolve.

Pages go to a real local HTTP server (``target``) through ``core.page``; the environment's
clock is moved with ``env.sleep`` so a ten-minute escalation delay costs nothing. Each test
has its own time-skipping server because skipping is global.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from fireline.catalog.model import Catalog
from fireline.incident import (
    INCIDENT_WORKFLOW,
    QUERY_STATUS,
    SIGNAL_ALERTS,
    UPDATE_ACK,
    UPDATE_APPROVE,
    UPDATE_COMMAND,
    Ack,
    AlertBatch,
    Command,
    IncidentPhase,
    IncidentStart,
    IncidentState,
    incident_start,
    incident_workflow_id,
)
from fireline.ingress.alert import Alert, AlertSource, AlertStatus
from fireline.messages import QUERY_STATUS as RUN_STATUS
from fireline.messages import UPDATE_APPROVE as RUN_APPROVE
from fireline.messages import Approval, RunState
from fireline.plan import Plan
from tests.support.target import Reply, Target
from tests.support.workers import compile_playbooks, fireline_workers
from workflows.guard import QUERY_LEDGER, GuardLedger, guard_workflow_id

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def catalog(service: dict[str, Any]) -> Catalog:
    return Catalog.model_validate(
        {
            "roles": {
                "sre-oncall": {"tier": 1, "members": ["alice", "bob"]},
                "sre-senior": {"tier": 2, "members": ["carol"]},
                "lead": {"tier": 3, "members": ["dana"]},
            },
            "services": {"payments": service},
        }
    )


LADDER = {
    "escalation": {
        "levels": [
            {"tier": 1, "delay": "5m", "targets": [{"role": "sre-oncall"}]},
            {"tier": 2, "delay": "10m", "targets": [{"person": "carol"}]},
            {"tier": 3, "delay": "10m", "targets": [{"role": "lead"}]},
        ],
        "ack_timeout": "30m",
    }
}


def alert(status: str = "firing", n: int = 1, name: str = "HighErrorRate") -> Alert:
    return Alert(
        source=AlertSource.alertmanager,
        notification_id=f"{name}-{status}-{n}",
        group_key="payments",
        status=AlertStatus(status),
        name=name,
        fingerprint=f"fp-{name}",
        received_at=T0,
    )


async def open_incident(
    client: Client, prefix: str, start: IncidentStart, *alerts: Alert
) -> WorkflowHandle[Any, Any]:
    """Signal-with-start, as ingress does it."""
    return await client.start_workflow(
        INCIDENT_WORKFLOW,
        start,
        id=incident_workflow_id(start.key),
        task_queue=prefix,
        start_signal=SIGNAL_ALERTS,
        start_signal_args=[AlertBatch(batch_id=uuid.uuid4().hex, alerts=list(alerts))],
        result_type=IncidentState,
    )


async def state_of(handle: WorkflowHandle[Any, Any]) -> IncidentState:
    return await handle.query(QUERY_STATUS, result_type=IncidentState)


async def until(
    handle: WorkflowHandle[Any, Any], pred: Callable[[IncidentState], bool], what: str
) -> IncidentState:
    for _ in range(400):
        state = await state_of(handle)
        if pred(state):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"never saw: {what}; last state: {state.model_dump_json(indent=1)}")


def paged(state: IncidentState) -> list[str]:
    return [p.person for p in state.pages if p.delivered]


@pytest.fixture
def paging(monkeypatch: pytest.MonkeyPatch, target: Target) -> Target:
    target.route("POST", "/page", Reply(200))
    monkeypatch.setenv(
        "FIRELINE_TARGETS", json.dumps({"webhook": {"default": {"url": target.url("/page")}}})
    )
    return target


def key() -> str:
    return f"am/payments/{uuid.uuid4().hex[:8]}"


class TestLadder:
    async def test_whole_ladder_then_ack_stops_it(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, paging: Target
    ) -> None:
        """Tier 1 (both on-call), then tier 2 after 5m, then an ack: nobody else is paged."""
        env = time_skipping_env
        start = incident_start(
            catalog(LADDER),
            "payments",
            key(),
            severity="critical",
            task_queue_prefix=task_queue_prefix,
        )
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            state = await until(handle, lambda s: len(s.pages) == 2, "tier 1 paged")
            assert sorted(paged(state)) == ["alice", "bob"]
            assert state.escalation.tier == 1
            await env.sleep(timedelta(minutes=5, seconds=5))
            state = await until(handle, lambda s: len(s.pages) == 3, "tier 2 paged")
            assert paged(state)[-1] == "carol"
            assert state.pages[-1].tier == 2
            state = await handle.execute_update(
                UPDATE_ACK, Ack(by="carol", comment="looking"), result_type=IncidentState
            )
            assert state.acknowledged_by == "carol"
            await env.sleep(timedelta(minutes=25))
            state = await state_of(handle)
            assert paged(state) == ["alice", "bob", "carol"] or sorted(paged(state)[:2]) == [
                "alice",
                "bob",
            ]
            assert len(state.pages) == 3, "an ack stops the clock"
            await handle.signal(SIGNAL_ALERTS, AlertBatch(batch_id="r", alerts=[alert("resolved")]))
            final = await handle.result()

        assert final.phase is IncidentPhase.resolved
        assert final.resolved_by == "alert"
        assert final.escalations_per_tier == {"1": 1, "2": 1}
        bodies = [hit.json for hit in paging.hits("POST", "/page")]
        assert len(bodies) == 3
        assert {b["thread_key"] for b in bodies} == {handle.id}
        assert "carol" in bodies[-1]["text"] and "tier 2" in bodies[-1]["text"]
        kinds = [e.kind for e in final.timeline]
        assert kinds.count("page") == 3 and "ack" in kinds and kinds[-1] == "resolved"
