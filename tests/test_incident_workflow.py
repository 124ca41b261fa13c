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
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from fireline.catalog.model import Catalog
from fireline.catalog.services import GuardPolicy
from fireline.identity.signing import DecisionClaim, SignedDecision, inputs_digest, sign_decision
from fireline.incident import (
    GUARD_QUEUE_SUFFIX,
    GUARD_UPDATE_ADMIT_BATCH,
    GUARD_WORKFLOW,
    INCIDENT_WORKFLOW,
    QUERY_STATUS,
    SIGNAL_ALERTS,
    SIGNAL_APPROVE,
    UPDATE_ACK,
    UPDATE_APPROVE,
    UPDATE_CANCEL,
    UPDATE_COMMAND,
    Ack,
    AlertBatch,
    Command,
    IncidentPhase,
    IncidentStart,
    IncidentState,
    Resolve,
    incident_start,
    incident_workflow_id,
    pin_rights,
)
from fireline.ingress.alert import Alert, AlertSource, AlertStatus
from fireline.messages import QUERY_STATUS as RUN_STATUS
from fireline.messages import SIGNAL_RUN_STATUS, Approval, RunRequest, RunState
from fireline.messages import UPDATE_APPROVE as RUN_APPROVE
from fireline.run_view import RunReport, RunStatusView, RunStepView
from tests.support.target import Reply, Target
from tests.support.workers import (
    TEST_KEY_ID,
    TEST_KEYS,
    TEST_PRIVATE,
    compile_playbooks,
    fireline_workers,
)
from workflows import WORKFLOWS
from workflows.gate import (
    IncidentAttempt,
    IncidentFacts,
    judge_incident,
    may_ack,
    may_cancel,
    may_command,
    may_decide_guard,
)
from workflows.guard import MAX_BATCH, QUERY_LEDGER, AdmitRequest, GuardLedger, guard_workflow_id
from workflows.incident import GUARD_ATTEMPTS

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
    """Signal-with-start, as ingress does it (the time-skipping server has no search attributes)."""
    return await client.start_workflow(
        INCIDENT_WORKFLOW,
        start.model_copy(update={"upsert_search_attributes": False}),
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
    """Poll the status query until ``pred`` holds: a guard against hanging, not a timing.

    A query that times out on a loaded machine is asked again.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    state: IncidentState | None = None
    while loop.time() < deadline:
        try:
            state = await state_of(handle)
        except RPCError:
            await asyncio.sleep(0.2)
            continue
        if pred(state):
            return state
        await asyncio.sleep(0.05)
    shown = state.model_dump_json(indent=1) if state else "none"
    raise AssertionError(f"never saw: {what}; last state: {shown}")


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
        assert "carol" in bodies[-1]["text"]
        assert "tier 2" in bodies[-1]["text"]
        kinds = [e.kind for e in final.timeline]
        assert kinds.count("page") == 3
        assert "ack" in kinds
        assert kinds[-1] == "resolved"

    async def test_ack_timeout_returns_to_triggered(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, paging: Target
    ) -> None:
        """An ack that lapses (30m, nothing resolved) pages tier 1 again, marked retrigger."""
        env = time_skipping_env
        start = incident_start(
            catalog(LADDER), "payments", key(), task_queue_prefix=task_queue_prefix
        )
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            await until(handle, lambda s: len(s.pages) == 2, "tier 1 paged")
            await handle.execute_update(UPDATE_ACK, Ack(by="alice"), result_type=IncidentState)
            await env.sleep(timedelta(minutes=20))
            assert len((await state_of(handle)).pages) == 2, "acknowledged: nobody else paged"
            await env.sleep(timedelta(minutes=11))
            state = await until(handle, lambda s: len(s.pages) == 4, "tier 1 paged again")

        assert [p.reason for p in state.pages[2:]] == ["retrigger", "retrigger"]
        assert {p.tier for p in state.pages[2:]} == {1}
        assert any(e.kind == "ack_timeout" for e in state.timeline)
        assert state.escalation.state == "triggered"

    async def test_round_robin_takes_turns_and_repeats(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, paging: Target
    ) -> None:
        """One level, round robin over three people, repeated twice: one person per visit."""
        env = time_skipping_env
        service = {
            "escalation": {
                "levels": [
                    {
                        "delay": "5m",
                        "strategy": "round_robin",
                        "targets": [{"person": "alice"}, {"person": "bob"}, {"person": "erin"}],
                    }
                ],
                "repeat": 3,
            }
        }
        start = incident_start(
            catalog(service), "payments", key(), task_queue_prefix=task_queue_prefix
        )
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            for n in range(1, 4):
                await until(handle, lambda s, n=n: len(s.pages) == n, f"page {n}")
                await env.sleep(timedelta(minutes=5, seconds=1))
            state = await until(handle, lambda s: len(s.pages) == 4, "page 4")
            await env.sleep(timedelta(minutes=6))
            state = await state_of(handle)

        assert paged(state) == ["alice", "bob", "erin", "alice"]
        assert state.escalation.state == "exhausted"
        assert any(e.kind == "escalation_exhausted" for e in state.timeline)

    async def test_rotation_resolved_at_paging_time_across_a_handoff(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, paging: Target
    ) -> None:
        """The rotation hands off from alice to bob between two pages; an override wins later."""
        env = time_skipping_env
        now = await current_time(env, task_queue_prefix)
        handoff = now - timedelta(hours=23, minutes=55)  # alice's day ends in five minutes
        service = {
            "rotation": {
                "people": ["alice", "bob"],
                "handoff": handoff.isoformat(),
                "period": "1d",
                "overrides": [
                    {
                        "person": "erin",
                        "start": (now + timedelta(minutes=15)).isoformat(),
                        "end": (now + timedelta(hours=2)).isoformat(),
                    }
                ],
            },
            "escalation": {
                "levels": [{"delay": "10m", "targets": [{"rotation": True}]}],
                "repeat": 2,
            },
        }
        start = incident_start(
            catalog(service), "payments", key(), task_queue_prefix=task_queue_prefix
        )
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            await until(handle, lambda s: len(s.pages) == 1, "first page")
            await env.sleep(timedelta(minutes=10, seconds=1))
            await until(handle, lambda s: len(s.pages) == 2, "second page")
            await env.sleep(timedelta(minutes=10, seconds=1))
            state = await until(handle, lambda s: len(s.pages) == 3, "third page")

        assert paged(state) == ["alice", "bob", "erin"]


async def current_time(env: WorkflowEnvironment, prefix: str) -> datetime:
    """The environment's clock (the time-skipping server's, not the machine's)."""
    return await env.get_current_time()


class TestCommander:
    async def test_command_stops_climbing_handover_and_hand_back_restarts(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, paging: Target
    ) -> None:
        """alice takes command (no more pages), hands to bob, bob hands back: tier 1 again."""
        env = time_skipping_env
        start = incident_start(
            catalog(LADDER), "payments", key(), task_queue_prefix=task_queue_prefix
        )
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            await until(handle, lambda s: len(s.pages) == 2, "tier 1 paged")
            state = await handle.execute_update(
                UPDATE_COMMAND, Command(action="take", by="alice"), result_type=IncidentState
            )
            assert state.commander == "alice"
            await env.sleep(timedelta(hours=2))
            assert len((await state_of(handle)).pages) == 2, "a commander holds it: no climbing"
            with pytest.raises(WorkflowUpdateFailedError):
                await handle.execute_update(
                    UPDATE_COMMAND, Command(action="handover", by="mallory", to="eve")
                )
            state = await handle.execute_update(
                UPDATE_COMMAND,
                Command(action="handover", by="alice", to="bob"),
                result_type=IncidentState,
            )
            assert state.commander == "bob"
            await handle.execute_update(
                UPDATE_COMMAND, Command(action="release", by="bob"), result_type=IncidentState
            )
            state = await until(handle, lambda s: len(s.pages) == 4, "ladder restarted")

        assert state.commander is None
        assert [p.tier for p in state.pages] == [1, 1, 1, 1]
        commands = [e.message for e in state.timeline if e.kind == "command"]
        assert commands[0].startswith("alice took command")
        assert commands[1].startswith("alice handed command to bob")
        assert "ladder restarts" in commands[2]
        assert all(e.kind != "page" or e.at for e in state.timeline)


GATED = """
name: fix-payments
inputs: {base: {type: string, required: true}}
steps:
  - id: restart
    uses: core.http_request
    with: {url: "${{ inputs.base }}/restart", compensation: {url: "${{ inputs.base }}/unrestart"}}
    approval: {role: sre-senior, timeout: 2h}
"""

PLAIN = """
name: fix-payments
inputs: {base: {type: string, required: true}}
steps:
  - id: restart
    uses: core.http_request
    with: {url: "${{ inputs.base }}/restart", compensation: {url: "${{ inputs.base }}/unrestart"}}
"""

DRAIN = """
  - id: drain
    uses: core.http_request
    with: {url: "${{ inputs.base }}/drain", compensation: {url: "${{ inputs.base }}/undrain"}}
    approval: {role: sre-oncall, timeout: 2h}"""
TWO_GATES = GATED.replace("steps:", "steps:" + DRAIN, 1)
"""GATED with a gated ``drain`` step before its ``restart``."""

VERIFIED = """
name: fix-payments
inputs: {base: {type: string, required: true}}
steps:
  - id: restart
    uses: core.http_request
    with: {url: "${{ inputs.base }}/restart", compensation: {url: "${{ inputs.base }}/unrestart"}}
    postconditions:
      - {check: core.http_probe, with: {url: "${{ inputs.base }}/health"}, deadline: 1s, interval: 200ms}
"""


def with_plan(
    tmp_path: Path, playbook: str, service: dict[str, Any], prefix: str, base: str, k: str
) -> IncidentStart:
    plan = compile_playbooks(tmp_path, {"p.yaml": playbook}, "fix-payments")
    return incident_start(
        catalog(service),
        "payments",
        k,
        plan=plan,
        inputs={"base": base},
        task_queue_prefix=prefix,
    ).model_copy(update={"run_poll_s": 1.0, "run_poll_max_s": 2.0})


async def deliver(handle: WorkflowHandle[Any, Any], batch: AlertBatch) -> None:
    """Signal ``batch`` as a sender would, sending again while the incident continues as new.

    The time-skipping test server's continue-as-new is not atomic (temporalio/sdk-java#1538):
    a signal sent in that window is refused NOT_FOUND, where Temporal's own server takes it.
    Sending again is safe: the incident dedupes a batch by its id.
    """
    for attempt in range(40):
        try:
            await handle.signal(SIGNAL_ALERTS, batch)
            return
        except RPCError as exc:
            if exc.status is not RPCStatusCode.NOT_FOUND or attempt == 39:
                raise
            await asyncio.sleep(0.05)


async def open_planned(
    client: Client,
    prefix: str,
    tmp_path: Path,
    playbook: str,
    service: dict[str, Any],
    paging: Target,
) -> WorkflowHandle[Any, Any]:
    """A new incident routed to ``playbook`` against ``paging``, opened by one alert."""
    start = with_plan(tmp_path, playbook, service, prefix, paging.base_url, key())
    return await open_incident(client, prefix, start, alert())


class TestGateLadder:
    async def test_gate_pages_its_tier_then_the_next(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """A tier-2 gate nobody decides pages carol (tier 2), then dana (tier 3) after 10m."""
        env = time_skipping_env
        paging.route("POST", "/restart", Reply(200))
        start = with_plan(tmp_path, GATED, LADDER, task_queue_prefix, paging.base_url, key())
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            state = await until(handle, lambda s: "carol" in paged(s), "gate pages tier 2")
            assert state.phase is IncidentPhase.awaiting_approval
            assert state.escalation.gate_step == "restart"
            await env.sleep(timedelta(minutes=10, seconds=1))
            state = await until(handle, lambda s: "dana" in paged(s), "gate pages tier 3")
            run = env.client.get_workflow_handle(state.run.workflow_id or "")
            await run.execute_update(RUN_APPROVE, Approval(step="restart", approver="carol"))
            state = await until(handle, lambda s: s.run.phase == "succeeded", "run succeeded")
            await handle.signal(SIGNAL_ALERTS, AlertBatch(batch_id="r", alerts=[alert("resolved")]))
            final = await handle.result()

        gate_pages = [p for p in final.pages if p.reason == "gate"]
        assert [(p.person, p.tier) for p in gate_pages] == [("carol", 2), ("dana", 3)]
        assert final.phase is IncidentPhase.resolved
        assert final.contained_at is not None
        assert final.run.mutated is True
        assert [e.kind for e in final.timeline].count("gate_opened") == 1
        assert any(e.kind == "gate_closed" for e in final.timeline)


class TestResolved:
    async def test_resolved_before_a_mutating_step_closes_auto_resolved(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """The alert resolves while the run waits at its gate: run cancelled, nothing changed."""
        env = time_skipping_env
        start = with_plan(tmp_path, GATED, LADDER, task_queue_prefix, paging.base_url, key())
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            await until(handle, lambda s: s.escalation.gate_step == "restart", "gate open")
            await handle.signal(SIGNAL_ALERTS, AlertBatch(batch_id="r", alerts=[alert("resolved")]))
            final = await handle.result()
            run = await env.client.get_workflow_handle(final.run.workflow_id or "").query(
                RUN_STATUS, result_type=RunState
            )

        assert final.phase is IncidentPhase.resolved
        assert final.auto_resolved is True
        assert final.resolved_by == "alert"
        assert final.run.mutated is False
        assert run.phase.value == "cancelled"
        assert paging.hits("POST", "/restart") == []

    async def test_resolved_after_a_mutating_step_carries_on_to_verification(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """The alert resolves while the change is in flight: recorded, the run finishes."""
        env = time_skipping_env
        release = paging.hold("POST", "/restart")
        paging.route("POST", "/restart", Reply(200))
        paging.route("GET", "/health", Reply(200))
        start = with_plan(tmp_path, VERIFIED, LADDER, task_queue_prefix, paging.base_url, key())
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            await until(handle, lambda s: s.run.mutated, "mutating step started")
            await handle.signal(SIGNAL_ALERTS, AlertBatch(batch_id="r", alerts=[alert("resolved")]))
            await until(
                handle,
                lambda s: any(e.kind == "resolution_recorded" for e in s.timeline),
                "resolution recorded",
            )
            assert (await state_of(handle)).resolved_at is None, "the run is still going"
            release.set()
            final = await handle.result()

        assert final.phase is IncidentPhase.resolved
        assert final.auto_resolved is False
        assert final.run.phase == "succeeded"
        assert final.run.verified is True
        assert len(paging.hits("POST", "/restart")) == 1


class TestDedupe:
    async def test_redelivered_batch_and_notifications_change_nothing(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, paging: Target
    ) -> None:
        """The same batch again, and its notifications in a new batch: counted as duplicates."""
        env = time_skipping_env
        start = incident_start(
            catalog(LADDER), "payments", key(), task_queue_prefix=task_queue_prefix
        )
        first = AlertBatch(batch_id="b1", alerts=[alert(n=1), alert(n=2, name="Latency")])
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await env.client.start_workflow(
                INCIDENT_WORKFLOW,
                start.model_copy(update={"upsert_search_attributes": False}),
                id=incident_workflow_id(start.key),
                task_queue=task_queue_prefix,
                start_signal=SIGNAL_ALERTS,
                start_signal_args=[first],
            )
            before = await until(handle, lambda s: s.alerts.total == 2, "two alerts")
            await handle.signal(SIGNAL_ALERTS, first)
            await handle.signal(
                SIGNAL_ALERTS,
                AlertBatch(batch_id="b2", alerts=[alert(n=1), alert(n=2, name="Latency")]),
            )
            after = await until(handle, lambda s: s.alerts.duplicates == 4, "duplicates counted")

        assert after.alerts.total == before.alerts.total == 2
        assert after.alerts.by_name == {"HighErrorRate": 1, "Latency": 1}
        assert len(after.firing) == 2
        assert [e.kind for e in after.timeline].count("alert") == 2


class TestWakeTimer:
    async def test_a_burst_of_alert_batches_starts_no_new_timers(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, paging: Target
    ) -> None:
        """While the next escalation stays due at the same instant, batches of alerts wake the
        incident without a new timer (and a cancelled one) each: in a storm those were a third
        of the incident's history."""
        env = time_skipping_env
        start = incident_start(
            catalog(LADDER), "payments", key(), task_queue_prefix=task_queue_prefix
        )

        def timers(events: Any) -> int:
            return sum(1 for e in events if e.HasField("timer_started_event_attributes"))

        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert(n=0))
            await until(handle, lambda s: len(s.pages) == 2, "tier 1 paged")
            before = timers((await handle.fetch_history()).events)
            for n in range(1, 11):
                batch = AlertBatch(batch_id=f"b{n}", alerts=[alert(n=n)])
                await handle.signal(SIGNAL_ALERTS, batch)
                await until(handle, lambda s, n=n: s.alerts.total == n + 1, f"batch {n}")
            events = (await handle.fetch_history()).events

        signalled = sum(
            1 for e in events if e.HasField("workflow_execution_signaled_event_attributes")
        )
        assert signalled >= 10
        assert timers(events) == before
        assert not any(e.HasField("timer_canceled_event_attributes") for e in events)


def guarded(**guard: Any) -> dict[str, Any]:
    return {**LADDER, "guard": guard}


async def ledger(env: WorkflowEnvironment, prefix: str) -> GuardLedger:
    handle = env.client.get_workflow_handle(guard_workflow_id("payments", prefix))
    return await handle.query(QUERY_LEDGER, result_type=GuardLedger)


@workflow.defn(name=GUARD_WORKFLOW, sandboxed=False)
class SilentGuard:
    """A guard that takes admission requests and never answers (a hung or broken guard)."""

    @workflow.run
    async def run(self, ledger: GuardLedger) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.update(name=GUARD_UPDATE_ADMIT_BATCH)
    async def admit_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        await workflow.wait_condition(lambda: False)
        return []


class TestRunReports:
    async def test_a_forged_final_report_does_not_close_the_incident(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """A run's report that it succeeded is checked against the run's own status: one sent
        in the run's name while it waits at its gate closes nothing."""
        env = time_skipping_env
        start = with_plan(tmp_path, GATED, LADDER, task_queue_prefix, paging.base_url, key())
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            gated = await until(
                handle, lambda s: s.phase is IncidentPhase.awaiting_approval, "run at its gate"
            )
            assert gated.run.workflow_id is not None
            forged = RunReport(
                run_id=gated.run.workflow_id, view=RunStatusView(found=True, phase="succeeded")
            )
            await handle.signal(SIGNAL_RUN_STATUS, forged)
            await asyncio.sleep(1.0)
            after = await state_of(handle)

        assert after.run.phase == "awaiting_approval" or after.run.phase == "running"
        assert after.phase is IncidentPhase.awaiting_approval
        assert after.resolution is None

    async def test_a_final_report_after_the_run_ended_changes_nothing(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """A final report that comes after the incident has read that its run ended (the read
        overtook it, or it was sent again) asks for a read there is no run left for: the
        incident must not spin on it, and still closes when its alert resolves."""
        env = time_skipping_env
        paging.route("POST", "/restart", Reply(200))
        start = with_plan(tmp_path, PLAIN, LADDER, task_queue_prefix, paging.base_url, key())
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            done = await until(handle, lambda s: s.run.phase == "succeeded", "run succeeded")
            assert done.run.workflow_id is not None
            late = RunReport(
                run_id=done.run.workflow_id, view=RunStatusView(found=True, phase="succeeded")
            )
            await handle.signal(SIGNAL_RUN_STATUS, late)
            # A query is answered once the task that took the signal is done: with a spin,
            # that task never is.
            between = await asyncio.wait_for(state_of(handle), timeout=20)
            await handle.signal(SIGNAL_ALERTS, AlertBatch(batch_id="r", alerts=[alert("resolved")]))
            final = await asyncio.wait_for(handle.result(), timeout=30)

        assert between.run.phase == "succeeded"
        assert final.phase is IncidentPhase.resolved
        assert final.run.phase == "succeeded"

    async def test_a_forged_report_of_a_change_does_not_stop_auto_resolve(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """While the run waits at its first gate, a report in its name says its second
        mutating step is running (the gate left as it is). Believed, the incident would think
        something had changed, and its resolved alert would no longer close it: the report is
        checked against the run's own status first, which shows nothing changed."""
        env = time_skipping_env
        start = with_plan(tmp_path, TWO_GATES, LADDER, task_queue_prefix, paging.base_url, key())
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            gated = await until(
                handle, lambda s: s.escalation.gate_step == "drain", "run at its first gate"
            )
            assert gated.run.workflow_id is not None
            steps = [
                RunStepView(id="drain", status="awaiting_approval", gate_tier=1, mutates=True),
                RunStepView(id="restart", status="running", mutates=True),
            ]
            view = RunStatusView(found=True, phase="running", steps=steps)
            await handle.signal(
                SIGNAL_RUN_STATUS, RunReport(run_id=gated.run.workflow_id, view=view)
            )
            await asyncio.sleep(1.0)
            between = await state_of(handle)
            await handle.signal(SIGNAL_ALERTS, AlertBatch(batch_id="r", alerts=[alert("resolved")]))
            final = await asyncio.wait_for(handle.result(), timeout=30)

        assert between.run.mutated is False
        assert "remediating" not in [e.kind for e in between.timeline]
        assert final.phase is IncidentPhase.resolved
        assert final.auto_resolved is True
        assert not paging.hits("POST", "/restart")

    async def test_a_forged_report_neither_opens_nor_closes_a_gate(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """Reports sent in the run's name while it waits at `restart`: one that invents a
        tier-3 gate pages nobody for it, one that says `restart` was decided silences nothing,
        one that claims a failed check leaves the verification open. Each is checked against
        the run's own status first."""
        env = time_skipping_env
        start = with_plan(tmp_path, GATED, LADDER, task_queue_prefix, paging.base_url, key())
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            gated = await until(
                handle,
                lambda s: (
                    s.escalation.gate_step == "restart" and any(p.reason == "gate" for p in s.pages)
                ),
                "run at its gate, its tier paged",
            )
            run_id = gated.run.workflow_id
            assert run_id is not None
            invented = RunStepView(
                id="drop-db", status="awaiting_approval", gate_tier=3, gate_role="dba"
            )
            waiting = RunStepView(id="restart", status="awaiting_approval", gate_tier=2)
            forgeries = [
                [waiting, invented],
                [RunStepView(id="restart", status="running", mutates=True)],
                [RunStepView(id="restart", status="running", mutates=True, post_failed=True)],
            ]
            for steps in forgeries:
                view = RunStatusView(found=True, phase="running", steps=steps)
                await handle.signal(SIGNAL_RUN_STATUS, RunReport(run_id=run_id, view=view))
            await asyncio.sleep(1.0)
            after = await state_of(handle)

        kinds = [e.kind for e in after.timeline]
        assert after.escalation.gate_step == "restart"
        assert kinds.count("gate_opened") == 1
        assert "gate_closed" not in kinds
        assert len(after.pages) == len(gated.pages)
        assert not any("drop-db" in (p.reason or "") or p.tier == 3 for p in after.pages)
        assert after.run.verified is None
        assert after.phase is IncidentPhase.awaiting_approval


class TestGuard:
    async def test_rate_limit_holds_the_second_run_for_a_human(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """One automatic run per hour: the second incident's run waits until a person lets it."""
        env = time_skipping_env
        paging.route("POST", "/restart", Reply(200))
        service = guarded(max_runs=1, window="1h")
        async with fireline_workers(env.client, task_queue_prefix):
            one = await open_planned(
                env.client, task_queue_prefix, tmp_path, PLAIN, service, paging
            )
            first = await until(one, lambda s: s.run.phase == "succeeded", "first run done")
            two = await open_planned(
                env.client, task_queue_prefix, tmp_path, PLAIN, service, paging
            )
            held = await until(
                two, lambda s: s.escalation.gate_step == "guard" and len(s.pages) == 2, "held"
            )
            assert held.run.workflow_id is None
            answer = await two.execute_update(
                UPDATE_APPROVE, Approval(step="guard", approver="alice"), result_type=IncidentState
            )
            assert any(e.kind == "approval" and e.actor == "alice" for e in answer.timeline)
            done = await until(two, lambda s: s.run.phase == "succeeded", "second run done")
            book = await ledger(env, task_queue_prefix)

        assert first.guard.allowed is True
        assert held.guard.allowed is False
        assert held.phase is IncidentPhase.awaiting_approval
        assert any("rate limit" in r for r in held.guard.reasons)
        assert any(p.reason == "guard" for p in held.pages)
        assert done.guard_approved_by == "alice"
        assert done.run.workflow_id is not None
        assert len(paging.hits("POST", "/restart")) == 2
        assert [e.automatic for e in book.entries] == [True, True]
        assert any(e.kind == "guard" for e in held.timeline)

    async def test_blast_budget_holds_a_run_that_would_exceed_it(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """A budget of zero changed targets: even the first mutating run needs a person."""
        env = time_skipping_env
        paging.route("POST", "/restart", Reply(200))
        service = guarded(blast_budget=0)
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_planned(
                env.client, task_queue_prefix, tmp_path, PLAIN, service, paging
            )
            held = await until(handle, lambda s: s.escalation.gate_step == "guard", "held")
            await handle.execute_update(
                UPDATE_APPROVE, Approval(step="guard", approver="bob", comment="go")
            )
            await until(handle, lambda s: s.run.phase == "succeeded", "run done")
            await handle.signal(SIGNAL_ALERTS, AlertBatch(batch_id="r", alerts=[alert("resolved")]))
            final = await handle.result()

        assert any("blast-radius budget" in r for r in held.guard.reasons)
        assert held.guard.blast_budget == 0
        assert final.guard_approved_by == "bob"
        assert final.phase is IncidentPhase.resolved

    async def test_breaker_after_failed_verification(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """A failed verification opens the breaker; the next run waits; a passing one closes it."""
        env = time_skipping_env
        paging.route("POST", "/restart", Reply(200))
        paging.route("POST", "/unrestart", Reply(200))
        paging.route("GET", "/health", Reply(500))
        service = guarded(max_runs=10)
        async with fireline_workers(env.client, task_queue_prefix):
            one = await open_planned(
                env.client, task_queue_prefix, tmp_path, VERIFIED, service, paging
            )
            failed = await until(one, lambda s: s.phase is IncidentPhase.failed, "run failed")
            opened = await ledger(env, task_queue_prefix)
            paging.route("GET", "/health", Reply(200))
            two = await open_planned(
                env.client, task_queue_prefix, tmp_path, VERIFIED, service, paging
            )
            held = await until(two, lambda s: s.escalation.gate_step == "guard", "held")
            await two.execute_update(UPDATE_APPROVE, Approval(step="guard", approver="carol"))
            await until(two, lambda s: s.run.verified is True, "verified")
            await asyncio.sleep(0.5)
            closed = await ledger(env, task_queue_prefix)

        assert failed.run.verified is False
        assert opened.breaker_open is True
        assert any("breaker open" in r for r in held.guard.reasons)
        assert closed.breaker_open is False

    async def test_a_storm_on_one_service_is_admitted_exactly(
        self, client: Client, task_queue_prefix: str, paging: Target, tmp_path: Path
    ) -> None:
        """30 incidents open at once on one service allowed 20 automatic runs: exactly 20 run
        and 10 wait for a person. On the dev server, which refuses more than ten in-flight
        updates per workflow: one update per ask made such a storm retry and back off."""
        paging.route("POST", "/restart", Reply(200))
        service = guarded(max_runs=20, blast_budget=100)
        playbook = PLAIN.replace("inputs: {", "inputs: {target: {type: string}, ")
        starts = [
            with_plan(tmp_path, playbook, service, task_queue_prefix, paging.base_url, key())
            for _ in range(30)
        ]
        # Thirty different hosts: none is busy with another run (that rule holds one back too).
        starts = [
            s.model_copy(update={"inputs": {**s.inputs, "target": f"host-{i}"}})
            for i, s in enumerate(starts)
        ]
        async with fireline_workers(client, task_queue_prefix):
            handles = await asyncio.gather(
                *(open_incident(client, task_queue_prefix, s, alert()) for s in starts)
            )
            states = await asyncio.gather(
                *(
                    until(
                        h,
                        lambda s: (
                            s.run.workflow_id is not None or s.escalation.gate_step == "guard"
                        ),
                        "admitted or held",
                    )
                    for h in handles
                )
            )
            guard = client.get_workflow_handle(guard_workflow_id("payments", task_queue_prefix))
            book = await guard.query(QUERY_LEDGER, result_type=GuardLedger)
            updates = [
                e
                for e in (await guard.fetch_history()).events
                if e.HasField("workflow_execution_update_accepted_event_attributes")
            ]
            run_id = next(s.run.workflow_id for s in states if s.run.workflow_id)
            run = await client.get_workflow_handle(run_id).describe()
            for h in handles:
                await h.terminate()
            await guard.terminate()

        ran = [s for s in states if s.run.workflow_id is not None]
        held = [s for s in states if s.escalation.gate_step == "guard"]
        assert (len(ran), len(held)) == (20, 10)
        assert all(s.guard.allowed for s in ran)
        assert all(any("rate limit" in r for r in s.guard.reasons) for s in held)
        assert sorted(s.guard.runs_in_window for s in ran) == list(range(1, 21))
        assert sum(e.automatic for e in book.entries) == 20
        assert len(book.entries) == 30
        assert len(updates) < 30, "concurrent asks for one guard went together"
        # Remediation goes first when the queues are backlogged (Temporal's default key is 3).
        assert run.raw_description.workflow_execution_info.priority.priority_key == 1

    async def test_an_incident_closed_before_its_run_frees_its_guard_entry(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """Held by the guard, then cancelled: no run came of it, so the ledger forgets it."""
        env = time_skipping_env
        service = guarded(max_runs=0)
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_planned(
                env.client, task_queue_prefix, tmp_path, PLAIN, service, paging
            )
            await until(handle, lambda s: s.escalation.gate_step == "guard", "held")
            held = await ledger(env, task_queue_prefix)
            await handle.execute_update(UPDATE_ACK, Ack(by="alice"), result_type=IncidentState)
            await handle.execute_update(
                UPDATE_CANCEL, Resolve(by="alice", comment="false alarm"), result_type=IncidentState
            )
            final = await handle.result()
            await asyncio.sleep(0.5)
            after = await ledger(env, task_queue_prefix)

        assert final.run.workflow_id is None
        assert [e.automatic for e in held.entries] == [False]
        assert after.entries == []

    async def test_an_oversized_admission_batch_is_refused_and_records_nothing(
        self, client: Client, task_queue_prefix: str
    ) -> None:
        """A batch past the limit (a hostile or broken caller) is refused before the ledger
        changes; a batch within it is decided."""
        guard = await client.start_workflow(
            GUARD_WORKFLOW,
            GuardLedger(),
            id=guard_workflow_id("payments", task_queue_prefix),
            task_queue=task_queue_prefix + GUARD_QUEUE_SUFFIX,
        )
        request = AdmitRequest(service="payments", incident_id="i", policy=GuardPolicy())
        async with fireline_workers(client, task_queue_prefix):
            with pytest.raises(WorkflowUpdateFailedError):
                await guard.execute_update(
                    GUARD_UPDATE_ADMIT_BATCH, [request] * (MAX_BATCH + 1), result_type=list
                )
            refused = await guard.query(QUERY_LEDGER, result_type=GuardLedger)
            answers = await guard.execute_update(
                GUARD_UPDATE_ADMIT_BATCH, [request], result_type=list
            )
            await guard.terminate()

        assert refused.entries == []
        assert len(answers) == 1

    async def test_a_guard_that_never_answers_holds_the_run_for_a_person(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """A guard that never answers: the incident asks a few times, then fails closed to the
        guard's human gate instead of hanging (or running unguarded)."""
        env = time_skipping_env
        paging.route("POST", "/restart", Reply(200))
        guard_id = guard_workflow_id("payments", task_queue_prefix)
        silent_queue = f"{task_queue_prefix}-silent"
        start = with_plan(tmp_path, PLAIN, guarded(), task_queue_prefix, paging.base_url, key())
        async with (
            fireline_workers(env.client, task_queue_prefix),
            Worker(env.client, task_queue=silent_queue, workflows=[SilentGuard]),
        ):
            # The guard's id taken by a guard that takes requests and never answers them.
            silent = await env.client.start_workflow(
                GUARD_WORKFLOW, GuardLedger(), id=guard_id, task_queue=silent_queue
            )
            handle = await open_incident(
                env.client,
                task_queue_prefix,
                start.model_copy(update={"guard_timeout_s": 0.5}),
                alert(),
            )
            held = await until(handle, lambda s: s.escalation.gate_step == "guard", "held")
            asked = await silent.fetch_history()
            await silent.terminate()

        assert held.run.workflow_id is None
        assert held.phase is IncidentPhase.awaiting_approval
        assert any("did not answer" in r for r in held.guard.reasons)
        accepted = [
            e
            for e in asked.events
            if e.HasField("workflow_execution_update_accepted_event_attributes")
        ]
        assert 1 <= len(accepted) <= GUARD_ATTEMPTS
        assert len(paging.hits("POST", "/restart")) == 0


class TestLongLived:
    async def test_continue_as_new_carries_counts_dedupe_and_the_ladder(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, paging: Target
    ) -> None:
        """A flapping alert: history stays small, counts add up, a redelivery still dedupes."""
        env = time_skipping_env
        start = incident_start(
            catalog(LADDER), "payments", key(), task_queue_prefix=task_queue_prefix
        ).model_copy(update={"history_limit": 60})
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert(n=0))
            await until(handle, lambda s: len(s.pages) == 2, "tier 1 paged")
            for n in range(1, 41):
                status = "resolved" if n % 2 else "firing"
                await deliver(handle, AlertBatch(batch_id=f"b{n}", alerts=[alert(status, n=n)]))
            await deliver(handle, AlertBatch(batch_id="again", alerts=[alert(n=40)]))
            latest = env.client.get_workflow_handle(handle.id)  # the newest run, not the first
            state = await until(
                latest,
                lambda s: s.runs > 1 and s.alerts.total == 41 and s.alerts.duplicates == 1,
                "all counted in a continued run",
            )
            history = await latest.fetch_history()

        assert len(history.events) < 200
        assert state.alerts.firing == 21
        assert state.alerts.resolved == 20
        assert len(state.pages) == 2, "the ladder position survived: tier 1 not paged again"
        assert any(e.kind == "continued" for e in state.timeline)

    async def test_large_alert_batches_continue_as_new_by_size(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, paging: Target
    ) -> None:
        """Few events but large ones (a storm's batches): the history is cut by its size."""
        env = time_skipping_env
        start = incident_start(
            catalog(LADDER), "payments", key(), task_queue_prefix=task_queue_prefix
        ).model_copy(update={"history_bytes_limit": 16 * 1024})
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert(n=0))
            await until(handle, lambda s: len(s.pages) == 2, "tier 1 paged")
            for n in range(1, 21):
                big = [
                    alert(n=n * 10 + i).model_copy(update={"summary": "x" * 3000}) for i in range(4)
                ]
                await deliver(handle, AlertBatch(batch_id=f"b{n}", alerts=big))
            latest = env.client.get_workflow_handle(handle.id)
            state = await until(
                latest,
                lambda s: s.runs > 1 and s.alerts.total == 81,
                "all counted in a continued run",
            )
            history = await latest.fetch_history()

        assert len(history.events) < start.history_limit
        assert any(e.kind == "continued" for e in state.timeline)
        assert state.alerts.duplicates == 0

    async def test_failed_page_is_retried_then_shown(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        target: Target,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A receiver answering 503 gets four attempts; then the page is recorded as failed."""
        env = time_skipping_env
        target.route("POST", "/page", Reply(503))
        monkeypatch.setenv(
            "FIRELINE_TARGETS", json.dumps({"webhook": {"default": {"url": target.url("/page")}}})
        )
        service = {"escalation": {"levels": [{"delay": "5m", "targets": [{"person": "alice"}]}]}}
        start = incident_start(
            catalog(service), "payments", key(), task_queue_prefix=task_queue_prefix
        )
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            await env.sleep(timedelta(seconds=30))
            state = await until(handle, lambda s: len(s.pages) == 1, "page recorded")

        page = state.pages[0]
        assert page.delivered is False
        assert "503" in (page.error or "")
        assert len(target.hits("POST", "/page")) == 4
        assert any(e.kind == "page_failed" for e in state.timeline)

    async def test_history_replays(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, paging: Target
    ) -> None:
        """The recorded history of an incident replays on the current code (determinism)."""
        env = time_skipping_env
        start = incident_start(
            catalog(LADDER), "payments", key(), task_queue_prefix=task_queue_prefix
        )
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            await until(handle, lambda s: len(s.pages) == 2, "tier 1 paged")
            await handle.execute_update(UPDATE_COMMAND, Command(action="take", by="alice"))
            await handle.signal(SIGNAL_ALERTS, AlertBatch(batch_id="r", alerts=[alert("resolved")]))
            await handle.result()
            history = await handle.fetch_history()
        replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
        await replayer.replay_workflow(history)


# ----------------------------------------------------------------------------- rights

RIGHTS_CATALOG = Catalog.model_validate(
    {
        "people": {"erin": {"tier": 1}, "zed": {"tier": 0}},
        "roles": {
            "sre-oncall": {"tier": 1, "members": ["alice", "bob"]},
            "sre-senior": {"tier": 2, "members": ["carol"]},
            "incident-commander": {"tier": 3, "members": ["dana"]},
            "api-team": {"tier": 1, "members": ["olga"]},
            "intern": {"tier": 0, "members": ["ivan"]},
        },
        "decision_rights": {"owners": {"team-api": "api-team"}},
        "services": {
            "payments": {
                "owner_team": "team-api",
                "responders": ["ivan"],
                "escalation": {
                    "levels": [
                        {"tier": 1, "delay": "5m", "targets": [{"role": "sre-oncall"}]},
                        {"tier": 2, "delay": "5m", "targets": [{"person": "carol"}]},
                    ]
                },
            }
        },
    }
)
RIGHTS = pin_rights(RIGHTS_CATALOG, RIGHTS_CATALOG.services["payments"])
FACTS = IncidentFacts(workflow_id="incident-x", rights=RIGHTS)
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def signed_for(
    action: str,
    person: str,
    *,
    step: str = "",
    digest: str = "",
    workflow_id: str = "incident-x",
    live: bool = False,
) -> SignedDecision:
    """A decision signed with the test key; ``live``: valid on the server's clock, not NOW's."""
    expires = (datetime.now(UTC) + timedelta(hours=1)) if live else NOW + timedelta(minutes=5)
    claim = DecisionClaim(
        workflow_id=workflow_id,
        step=step,
        action=action,  # type: ignore[arg-type]
        person=person,
        inputs_digest=digest,
        expires_at=expires,
    )
    return sign_decision(claim, TEST_PRIVATE, TEST_KEY_ID)


class TestIncidentRights:
    """Who may ack, command and cancel: pure functions over the pinned rights."""

    def test_pinned_from_the_catalog(self) -> None:
        """Responders, ladder people, owner team and commanders resolved at opening."""
        assert RIGHTS.responders == ["ivan", "alice", "bob", "carol"]
        assert RIGHTS.owners == ["olga"]
        assert RIGHTS.commanders == ["dana"]
        assert RIGHTS.open is False
        # ack is low risk (unsigned by default), command medium; cancel takes the playbook's
        # highest risk, and an incident without a playbook has nothing to roll back.
        assert RIGHTS.unsigned == ["ack", "cancel", "approve", "reject"]

    @pytest.mark.parametrize(
        ("action", "person", "facts", "allowed"),
        [
            ("ack", "alice", FACTS, True),  # on the ladder
            ("ack", "ivan", FACTS, True),  # a service responder
            ("ack", "olga", FACTS, True),  # the owner team
            ("ack", "dana", FACTS, True),  # incident commander
            ("ack", "erin", FACTS, False),  # known, nothing to do with payments
            ("ack", "erin", replace(FACTS, paged=("erin",)), True),  # paged (an override)
            ("take", "alice", FACTS, True),  # tier 1 responder
            ("take", "ivan", FACTS, False),  # responder, but tier 0
            ("take", "dana", FACTS, True),  # incident commander, not on the ladder
            ("take", "erin", FACTS, False),  # tier 1 but not a responder
            ("cancel", "olga", FACTS, True),  # owner team
            ("cancel", "dana", FACTS, True),  # incident commander
            ("cancel", "bob", FACTS, False),  # a responder who has done nothing
            ("cancel", "bob", replace(FACTS, acknowledgers=("bob",)), True),
            ("cancel", "bob", replace(FACTS, commander="bob"), True),
            ("cancel", "erin", replace(FACTS, rights=None), True),  # no rights: old rule
            ("guard", "alice", FACTS, True),  # the guard's gate: as command
            ("guard", "ivan", FACTS, False),
            ("guard", "dana", FACTS, True),
            ("take", "zed", replace(FACTS, rights=RIGHTS.model_copy(update={"open": True})), True),
        ],
    )
    def test_table(self, action: str, person: str, facts: IncidentFacts, allowed: bool) -> None:
        check = {
            "ack": may_ack,
            "take": may_command,
            "cancel": may_cancel,
            "guard": may_decide_guard,
        }[action]
        assert (check(person, facts) is None) is allowed

    @pytest.mark.parametrize(
        ("attempt", "trusted", "reason", "audited"),
        [
            (IncidentAttempt("ack", "mallory"), {}, "not in the catalog", False),
            (IncidentAttempt("ack", "erin"), {}, "may not acknowledge", True),
            (IncidentAttempt("ack", "alice"), TEST_KEYS, None, None),  # ack may go unsigned
            (
                IncidentAttempt("command", "alice", step="take"),
                TEST_KEYS,
                "unsigned command claiming alice refused",
                True,
            ),
            (
                IncidentAttempt(
                    "command",
                    "alice",
                    step="take",
                    signed=signed_for("command", "alice", step="take"),
                ),
                TEST_KEYS,
                None,
                None,
            ),
            (  # a signature for another incident
                IncidentAttempt(
                    "ack", "alice", signed=signed_for("ack", "alice", workflow_id="incident-y")
                ),
                TEST_KEYS,
                "signed decision is for workflow_id 'incident-y'",
                True,
            ),
            (  # a signature by a key the incident does not trust
                IncidentAttempt("ack", "alice", signed=signed_for("ack", "alice")),
                {"other": TEST_KEYS[TEST_KEY_ID][::-1]},
                "does not trust",
                True,
            ),
            (  # signed for alice, claimed by bob
                IncidentAttempt("ack", "bob", signed=signed_for("ack", "alice")),
                TEST_KEYS,
                "person 'alice', not 'bob'",
                True,
            ),
            (  # a signed handover binds its successor
                IncidentAttempt(
                    "command",
                    "alice",
                    step="handover",
                    to="dana",
                    inputs={"to": "dana"},
                    signed=signed_for(
                        "command", "alice", step="handover", digest=inputs_digest({"to": "erin"})
                    ),
                ),
                TEST_KEYS,
                "signed decision is for inputs_digest",
                True,
            ),
            (
                IncidentAttempt(
                    "command", "alice", step="handover", to="ivan", inputs={"to": "ivan"}
                ),
                {},
                "command cannot go to ivan",
                True,
            ),
            (IncidentAttempt("cancel", "bob"), {}, "may not cancel", True),
            (IncidentAttempt("cancel", "olga"), TEST_KEYS, None, None),
        ],
    )
    def test_judge(
        self,
        attempt: IncidentAttempt,
        trusted: dict[str, str],
        reason: str | None,
        audited: bool | None,
    ) -> None:
        """Signatures bind incident, action, person and successor; refusals say why."""
        refusal = judge_incident(attempt, replace(FACTS, trusted_keys=trusted), NOW)
        if reason is None:
            assert refusal is None
        else:
            assert refusal is not None
            assert reason in refusal.reason
            assert refusal.audited is audited


class TestIncidentRightsEnforced:
    def test_cancelling_a_risky_playbook_needs_a_signature(self, tmp_path: Path) -> None:
        """Cancel rolls the run back: with a medium-risk playbook it is no longer unsigned."""
        plan = compile_playbooks(tmp_path, {"p.yaml": PLAIN}, "fix-payments")
        assert plan.max_risk().value != "low"
        rights = pin_rights(RIGHTS_CATALOG, RIGHTS_CATALOG.services["payments"], plan)
        assert rights.unsigned == ["ack"], "the guard's gate and cancel need signatures too"
        facts = replace(FACTS, rights=rights, trusted_keys=TEST_KEYS)
        refusal = judge_incident(IncidentAttempt("cancel", "olga"), facts, NOW)
        assert refusal is not None
        assert "unsigned cancel claiming olga" in refusal.reason
        signed = IncidentAttempt("cancel", "olga", signed=signed_for("cancel", "olga"))
        assert judge_incident(signed, facts, NOW) is None

    async def test_refusals_answered_and_a_known_persons_audited(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, paging: Target
    ) -> None:
        """Unknown: refused, nothing recorded; known without the right: refused and in the
        timeline; an unsigned command where keys are trusted: refused; signed: accepted."""
        env = time_skipping_env
        start = incident_start(
            RIGHTS_CATALOG,
            "payments",
            key(),
            task_queue_prefix=task_queue_prefix,
            trusted_keys=TEST_KEYS,
        )
        workflow_id = incident_workflow_id(start.key)
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            await until(handle, lambda s: len(s.pages) == 2, "tier 1 paged")
            with pytest.raises(WorkflowUpdateFailedError) as unknown:
                await handle.execute_update(UPDATE_ACK, Ack(by="mallory"))
            assert "not in the catalog" in str(unknown.value.cause)
            with pytest.raises(WorkflowUpdateFailedError) as stranger:
                await handle.execute_update(UPDATE_ACK, Ack(by="erin"))
            assert "may not acknowledge" in str(stranger.value.cause)
            with pytest.raises(WorkflowUpdateFailedError) as unsigned:
                await handle.execute_update(UPDATE_COMMAND, Command(action="take", by="alice"))
            assert "unsigned command claiming alice" in str(unsigned.value.cause)
            still = await state_of(handle)
            assert still.acknowledged_by is None
            assert still.commander is None
            acked = await handle.execute_update(
                UPDATE_ACK,
                Ack(by="bob", signed=signed_for("ack", "bob", workflow_id=workflow_id, live=True)),
                result_type=IncidentState,
            )
            took = await handle.execute_update(
                UPDATE_COMMAND,
                Command(
                    action="take",
                    by="dana",
                    signed=signed_for(
                        "command", "dana", step="take", workflow_id=workflow_id, live=True
                    ),
                ),
                result_type=IncidentState,
            )
            with pytest.raises(WorkflowUpdateFailedError) as no_cancel:
                await handle.execute_update(
                    UPDATE_CANCEL,
                    Resolve(
                        by="carol",
                        signed=signed_for("cancel", "carol", workflow_id=workflow_id, live=True),
                    ),
                )
            assert "carol may not cancel" in str(no_cancel.value.cause)
            cancelled = await handle.execute_update(
                UPDATE_CANCEL,
                Resolve(
                    by="bob", signed=signed_for("cancel", "bob", workflow_id=workflow_id, live=True)
                ),
                result_type=IncidentState,
            )
            final = await handle.result()

        assert acked.acknowledged_by == "bob"
        assert acked.acks[-1].verified is True
        assert took.commander == "dana"
        assert any(e.kind == "command" and e.actor == "dana" for e in cancelled.timeline)
        assert final.phase is IncidentPhase.failed
        assert final.resolved_by == "bob"
        refused = [(e.kind, e.actor) for e in final.timeline if e.kind.endswith("_refused")]
        assert refused == [
            ("ack_refused", "erin"),
            ("command_refused", "alice"),
            ("cancel_refused", "carol"),
        ], "the known people without the right are audited; mallory is not"
        assert all(e.actor != "mallory" for e in final.timeline)

    async def test_the_guards_gate_is_judged(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """At the guard's gate: an unknown name is refused unrecorded, a tier-0 responder is
        refused and audited (by update and by signal alike), a tier-1 responder lets it run."""
        env = time_skipping_env
        paging.route("POST", "/restart", Reply(200))
        raw = RIGHTS_CATALOG.model_dump(mode="json", exclude_none=True)
        raw["services"]["payments"]["guard"] = {"blast_budget": 0}
        plan = compile_playbooks(tmp_path, {"p.yaml": PLAIN}, "fix-payments")
        start = incident_start(
            Catalog.model_validate(raw),
            "payments",
            key(),
            plan=plan,
            inputs={"base": paging.base_url},
            task_queue_prefix=task_queue_prefix,
        ).model_copy(update={"run_poll_s": 1.0, "run_poll_max_s": 2.0})
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            await until(handle, lambda s: s.escalation.gate_step == "guard", "held")
            with pytest.raises(WorkflowUpdateFailedError) as unknown:
                await handle.execute_update(
                    UPDATE_APPROVE, Approval(step="guard", approver="mallory")
                )
            assert "not in the catalog" in str(unknown.value.cause)
            with pytest.raises(WorkflowUpdateFailedError) as junior:
                await handle.execute_update(UPDATE_APPROVE, Approval(step="guard", approver="ivan"))
            assert "ivan (tier 0) may not decide at the guard's gate" in str(junior.value.cause)
            await handle.signal(SIGNAL_APPROVE, Approval(step="guard", approver="ivan"))
            await handle.execute_update(UPDATE_APPROVE, Approval(step="guard", approver="alice"))
            done = await until(handle, lambda s: s.run.phase == "succeeded", "run done")

        assert done.guard_approved_by == "alice"
        refused = [(e.kind, e.actor) for e in done.timeline if "refused" in e.kind]
        assert refused == [("approve_refused", "ivan"), ("approve_refused", "ivan")]

    async def test_the_acknowledger_is_separated_from_the_runs_riskiest_approvals(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """A run started after bob acknowledged (the guard held it) names bob in
        ``separated_from``, so he may not also approve its high/critical steps."""
        env = time_skipping_env
        paging.route("POST", "/restart", Reply(200))
        service = guarded(blast_budget=0)
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_planned(
                env.client, task_queue_prefix, tmp_path, PLAIN, service, paging
            )
            await until(handle, lambda s: s.escalation.gate_step == "guard", "held")
            await handle.execute_update(UPDATE_ACK, Ack(by="bob", comment="looking"))
            await handle.execute_update(UPDATE_APPROVE, Approval(step="guard", approver="alice"))
            state = await until(handle, lambda s: s.run.workflow_id is not None, "run started")
            run = env.client.get_workflow_handle(state.run.workflow_id or "")
            history = await run.fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        (payload,) = started.input.payloads
        request = pydantic_data_converter.payload_converter.from_payload(payload, RunRequest)
        assert request.separated_from == ["bob"]

    async def test_an_ack_after_the_run_started_reaches_the_run(
        self,
        time_skipping_env: WorkflowEnvironment,
        task_queue_prefix: str,
        paging: Target,
        tmp_path: Path,
    ) -> None:
        """Bob acknowledges while the run already waits at its gate: the run is told, so bob
        is barred from its high/critical approvals from then on (the timeline says so)."""
        env = time_skipping_env
        paging.route("POST", "/restart", Reply(200))
        start = with_plan(tmp_path, GATED, LADDER, task_queue_prefix, paging.base_url, key())
        async with fireline_workers(env.client, task_queue_prefix):
            handle = await open_incident(env.client, task_queue_prefix, start, alert())
            state = await until(handle, lambda s: s.escalation.gate_step == "restart", "at gate")
            await handle.execute_update(UPDATE_ACK, Ack(by="bob", comment="on it"))
            run = env.client.get_workflow_handle(state.run.workflow_id or "")

            async def separated() -> RunState:
                for _ in range(100):
                    got: RunState = await run.query(RUN_STATUS, result_type=RunState)
                    if any(e.kind == "separated" for e in got.events):
                        return got
                    await asyncio.sleep(0.1)
                raise AssertionError("the run never heard of the acknowledger")

            got = await separated()
            await run.cancel()
        [event] = [e for e in got.events if e.kind == "separated"]
        assert event.message.startswith("bob may not approve high/critical steps")
