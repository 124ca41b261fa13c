"""Decision rights end to end, on real Temporal servers with real workers.

The stand-in modules here (registered under their own names, as the Temporal samples do) only
record that they ran, so each test can say exactly which changes happened and which did not.
Every run is started as the API starts one: with the API's public key in ``trusted_keys``.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
import uuid
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel
from temporalio import activity
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from fireline.catalog.embargo import zone_offsets
from fireline.catalog.model import Catalog
from fireline.compile.compiler import PlaybookLibrary
from fireline.identity.signing import DecisionClaim, generate_key, inputs_digest, sign_decision
from fireline.messages import (
    QUERY_STATUS,
    SIGNAL_APPROVE,
    UPDATE_APPROVE,
    UPDATE_CANCEL,
    UPDATE_DECIDE,
    WORKFLOW_NAME,
    Approval,
    CancelRun,
    Decision,
    DecisionAction,
    RunPhase,
    RunRequest,
    RunResult,
    RunState,
    StepStatus,
)
from fireline.modules import CompensationRef, Registry, load_registry, module, preview
from fireline.operator import operations
from fireline.plan import Change, EmbargoWindow, Plan, Preview, RetrySpec, Risk, WeeklyWindow
from tests.support.legacy_run import LegacyRunWorkflow
from tests.support.workers import fireline_workers
from tests.support.zoned import ZonedEmbargoWorkflow
from workflows.journal import render_banner

PRIVATE, PUBLIC = generate_key()
KEYS = {"api-test": PUBLIC}
CALLS: list[tuple[str, str, dict[str, Any]]] = []
"""(workflow id, activity, input) of every stand-in call, in order."""
UNDO_ATTEMPTS: dict[str, int] = {}


class ChangeInput(BaseModel):
    name: str
    fail: bool = False


class ChangeOutput(BaseModel):
    changed: str


class UndoInput(BaseModel):
    name: str


class UndoOutput(BaseModel):
    undone: str


def _record(name: str, data: BaseModel) -> None:
    CALLS.append((activity.info().workflow_id or "", name, data.model_dump()))


@module(
    "rights.undo",
    domain="core",
    risk=Risk.low,
    heartbeat=timedelta(seconds=2),
    timeout=timedelta(seconds=100),
    retry=RetrySpec(max_attempts=4, initial_interval_s=0.1),
)
async def undo(request: UndoInput) -> UndoOutput:
    """The undo; for a name starting "hang" its first attempt hangs without heartbeating,
    as a worker that died mid-rollback would."""
    key = activity.info().workflow_id or ""
    UNDO_ATTEMPTS[key] = UNDO_ATTEMPTS.get(key, 0) + 1
    if request.name.startswith("hang") and activity.info().attempt == 1:
        await asyncio.sleep(90)
    _record("rights.undo", request)
    return UndoOutput(undone=request.name)


_UNDO = CompensationRef(
    module="rights.undo",
    with_={"name": "${{ input.name }}"},
)


async def _change(name: str, request: ChangeInput) -> ChangeOutput:
    _record(name, request)
    if request.fail:
        raise RuntimeError(f"{request.name} failed")
    return ChangeOutput(changed=request.name)


@module(
    "rights.high",
    domain="core",
    risk=Risk.high,
    mutates=True,
    compensation=_UNDO,
    retry=RetrySpec(max_attempts=1),
)
async def high_change(request: ChangeInput) -> ChangeOutput:
    return await _change("rights.high", request)


@preview("rights.high")
async def high_preview(request: ChangeInput) -> Preview:
    return Preview(
        mutates=True,
        summary=f"would change {request.name}",
        changes=[Change(target=request.name, attribute="state", before="old", after="new")],
        rollback="rights.undo",
    )


@module(
    "rights.critical",
    domain="core",
    risk=Risk.critical,
    mutates=True,
    compensation=_UNDO,
    retry=RetrySpec(max_attempts=1),
)
async def critical_change(request: ChangeInput) -> ChangeOutput:
    return await _change("rights.critical", request)


@preview("rights.critical")
async def critical_preview(request: ChangeInput) -> Preview:
    raise RuntimeError("state store unreachable")


@module("rights.db", domain="database", risk=Risk.medium, mutates=True, compensation=_UNDO)
async def db_change(request: ChangeInput) -> ChangeOutput:
    return await _change("rights.db", request)


MODULES = [undo, high_change, high_preview, critical_change, critical_preview, db_change]
REGISTRY: Registry = load_registry(["core"]).extended(sys.modules[__name__])
DOMAINS = ("core", "database")

CATALOG: dict[str, Any] = {
    "people": {
        "alice": {"tier": 1},
        "carol": {"tier": 2},
        "erin": {"tier": 2},
        "dana": {"tier": 3},
    },
    "roles": {
        "oncall": {"tier": 1, "members": ["alice"]},
        "senior": {"tier": 2, "members": ["carol", "erin", "dana"]},
    },
    "decision_rights": {
        "risks": {"medium": {"min_tier": 1}, "high": {"min_tier": 2}, "critical": {"min_tier": 2}},
        "owners": {"team": "senior"},
    },
}


def compile_plan(tmp_path: Path, text: str, catalog: dict[str, Any] | None = None) -> Plan:
    folder = tmp_path / f"pb-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "p.yaml").write_text(textwrap.dedent(text))
    library = PlaybookLibrary.load(
        folder, catalog=Catalog.model_validate(catalog or CATALOG), registry=REGISTRY
    )
    return library.compile("p")


async def start(
    client: Client, prefix: str, plan: Plan, *, requested_by: str = "alice"
) -> WorkflowHandle[Any, Any]:
    return await client.start_workflow(
        WORKFLOW_NAME,
        RunRequest(
            plan=plan,
            requested_by=requested_by,
            requested_by_verified=True,
            task_queue_prefix=prefix,
            trusted_keys=KEYS,
        ),
        id=f"rights-{uuid.uuid4().hex[:10]}",
        task_queue=prefix,
        result_type=RunResult,
    )


async def status(handle: WorkflowHandle[Any, Any]) -> RunState:
    return await handle.query(QUERY_STATUS, result_type=RunState)


async def until_status(handle: WorkflowHandle[Any, Any], step: str, want: StepStatus) -> RunState:
    for _ in range(600):
        state = await status(handle)
        if state.step(step).status is want:
            return state
        if state.phase.terminal:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"{step} never reached {want}: {state.step(step).status}")


def sign(
    handle: WorkflowHandle[Any, Any],
    step: str,
    person: str,
    action: str,
    inputs: dict[str, Any],
    *,
    now: datetime | None = None,
) -> Any:
    claim = DecisionClaim(
        workflow_id=handle.id,
        step=step,
        action=action,  # type: ignore[arg-type]
        person=person,
        inputs_digest=inputs_digest(inputs),
        expires_at=(now or datetime.now(ZoneInfo("UTC"))) + timedelta(hours=6),
    )
    return sign_decision(claim, PRIVATE, "api-test")


async def approve(
    handle: WorkflowHandle[Any, Any], step: str, person: str, *, now: datetime | None = None
) -> None:
    inputs = (await status(handle)).step(step).inputs or {}
    signed = sign(handle, step, person, "approve", inputs, now=now)
    await handle.execute_update(UPDATE_APPROVE, Approval(step=step, approver=person, signed=signed))


def ran(handle: WorkflowHandle[Any, Any], name: str) -> list[dict[str, Any]]:
    return [data for wid, mod, data in CALLS if wid == handle.id and mod == name]


GATED_HIGH = """
name: p
owner: team
steps:
  - id: change
    uses: rights.high
    with: {name: web}
    approval: {role: senior}
"""


class TestSignedDecisions:
    async def test_forged_unsigned_signal_is_refused_and_audited(
        self, client: Client, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        """A signal claiming carol without a signature does not pass a high step's gate;
        the attempt is in the timeline, unverified; carol's signed approval then passes."""
        plan = compile_plan(tmp_path, GATED_HIGH)
        async with fireline_workers(client, task_queue_prefix, domains=DOMAINS, registry=REGISTRY):
            handle = await start(client, task_queue_prefix, plan)
            state = await until_status(handle, "change", StepStatus.awaiting_approval)
            # The preview ran on the step's queue before the gate opened, and is shown.
            assert state.step("change").preview is not None
            assert state.step("change").preview.summary == "would change web"
            assert "**Would change:** would change web" in render_banner(state)

            await handle.signal(SIGNAL_APPROVE, Approval(step="change", approver="carol"))
            state = await status(handle)
            while not any(e.kind == "approval_refused" for e in state.events):
                await asyncio.sleep(0.05)
                state = await status(handle)
            assert state.step("change").status is StepStatus.awaiting_approval
            assert state.step("change").approvals == []
            refused = [e for e in state.events if e.kind == "approval_refused"]
            assert [(e.actor, e.verified) for e in refused] == [("carol", False)]
            assert "unsigned decision claiming carol refused" in refused[0].message
            assert ran(handle, "rights.high") == []

            await approve(handle, "change", "carol")
            result = await handle.result()
            state = await status(handle)

        assert result.phase is RunPhase.succeeded
        assert [(a.by, a.verified) for a in state.step("change").approvals] == [("carol", True)]
        assert ran(handle, "rights.high") == [{"name": "web", "fail": False}]

    async def test_a_flood_of_forged_signals_is_recorded_only_up_to_a_bound(
        self, client: Client, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        """Hostile input: 130 forged signals leave 99 audited refusals and one note, not 130;
        a signal with a 1 MB comment never reaches the run; the gate still works."""
        plan = compile_plan(tmp_path, GATED_HIGH)
        async with fireline_workers(client, task_queue_prefix, domains=DOMAINS, registry=REGISTRY):
            handle = await start(client, task_queue_prefix, plan)
            await until_status(handle, "change", StepStatus.awaiting_approval)
            huge = Approval.model_construct(step="change", approver="carol", comment="x" * 2**20)
            await handle.signal(SIGNAL_APPROVE, huge)
            for _ in range(130):
                await handle.signal(SIGNAL_APPROVE, Approval(step="change", approver="carol"))
            state = await status(handle)
            while not any(e.kind == "refusals_capped" for e in state.events):
                await asyncio.sleep(0.05)
                state = await status(handle)
            await approve(handle, "change", "erin")
            result = await handle.result()
            state = await status(handle)

        assert result.phase is RunPhase.succeeded
        kinds = [e.kind for e in state.events]
        assert kinds.count("approval_refused") == 99
        assert kinds.count("refusals_capped") == 1
        assert all(len(e.message) < 1000 for e in state.events)

    async def test_requester_may_not_approve_her_own_high_step(
        self, client: Client, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        """Separation of duties: carol started the run, so erin must approve."""
        plan = compile_plan(tmp_path, GATED_HIGH)
        async with fireline_workers(client, task_queue_prefix, domains=DOMAINS, registry=REGISTRY):
            handle = await start(client, task_queue_prefix, plan, requested_by="carol")
            await until_status(handle, "change", StepStatus.awaiting_approval)
            with pytest.raises(WorkflowUpdateFailedError) as own:
                await approve(handle, "change", "carol")
            assert "carol started this run" in str(own.value.cause)
            with pytest.raises(WorkflowUpdateFailedError) as stranger:
                await handle.execute_update(
                    UPDATE_APPROVE, Approval(step="change", approver="mallory")
                )
            assert "mallory is not in the catalog" in str(stranger.value.cause)
            await approve(handle, "change", "erin")
            result = await handle.result()
            state = await status(handle)

        assert result.phase is RunPhase.succeeded
        refused = [e.actor for e in state.events if e.kind == "approval_refused"]
        assert refused == ["carol"], "the known person is audited, the stranger is not"

    async def test_critical_needs_two_distinct_people(
        self, client: Client, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        """A critical gate asking one approval is raised to two; one person cannot give both.
        Its preview fails: the gate shows why and still works."""
        plan = compile_plan(
            tmp_path,
            """
            name: p
            owner: team
            steps:
              - id: restore
                uses: rights.critical
                with: {name: db}
                approval: {role: senior, min_approvals: 1}
            """,
        )
        gate = plan.nodes[0].gate  # type: ignore[union-attr]
        assert gate is not None
        assert gate.min_approvals == 2
        async with fireline_workers(client, task_queue_prefix, domains=DOMAINS, registry=REGISTRY):
            handle = await start(client, task_queue_prefix, plan)
            state = await until_status(handle, "restore", StepStatus.awaiting_approval)
            assert "state store unreachable" in (state.step("restore").preview_error or "")
            await approve(handle, "restore", "carol")
            with pytest.raises(WorkflowUpdateFailedError) as twice:
                await approve(handle, "restore", "carol")
            assert "carol already approved 'restore'" in str(twice.value.cause)
            assert (await status(handle)).step("restore").status is StepStatus.awaiting_approval
            assert ran(handle, "rights.critical") == []
            await approve(handle, "restore", "dana")
            result = await handle.result()

        assert result.phase is RunPhase.succeeded
        assert len(ran(handle, "rights.critical")) == 1


def sign_cancel(handle: WorkflowHandle[Any, Any], person: str) -> Any:
    claim = DecisionClaim(
        workflow_id=handle.id,
        step="",
        action="cancel",
        person=person,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    return sign_decision(claim, PRIVATE, "api-test")


class TestCancel:
    """A cancel is a decision: judged, signed, recorded with who and why, then Temporal's
    own cancel rolls the run back as any cancel does."""

    async def test_only_a_signed_cancel_by_someone_with_a_say_stops_the_run(
        self, client: Client, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        catalog = CATALOG | {"people": {**CATALOG["people"], "oscar": {"tier": 1}}}
        plan = compile_plan(
            tmp_path,
            """
            name: p
            owner: team
            steps:
              - id: first
                uses: rights.db
                with: {name: ledger}
              - id: change
                uses: rights.high
                with: {name: web}
                approval: {role: senior}
            """,
            catalog,
        )
        async with fireline_workers(client, task_queue_prefix, domains=DOMAINS, registry=REGISTRY):
            handle = await start(client, task_queue_prefix, plan)
            await until_status(handle, "change", StepStatus.awaiting_approval)

            with pytest.raises(WorkflowUpdateFailedError) as forged:
                await handle.execute_update(UPDATE_CANCEL, CancelRun(by="carol"))
            assert "unsigned cancel claiming carol refused" in str(forged.value.cause)
            with pytest.raises(operations.OperationRefused, match="oscar may not cancel"):
                await operations.cancel(
                    client, handle.id, "mine now", by="oscar", signed=sign_cancel(handle, "oscar")
                )
            with pytest.raises(operations.OperationRefused, match="zed is not in the catalog"):
                await operations.cancel(
                    client, handle.id, by="zed", signed=sign_cancel(handle, "zed")
                )
            stolen = sign_cancel(handle, "carol")
            with pytest.raises(operations.OperationRefused, match="not 'dana'"):
                await operations.cancel(client, handle.id, by="dana", signed=stolen)
            assert (await status(handle)).phase is RunPhase.awaiting_approval

            answer = await operations.cancel(
                client, handle.id, "wrong service", by="carol", signed=stolen
            )
            assert answer is not None
            assert answer.cancel_requested_by == "carol"
            with pytest.raises(WorkflowFailureError) as ended:
                await handle.result()
            state = await status(handle)

        assert isinstance(ended.value.cause, CancelledError)
        assert state.phase is RunPhase.cancelled
        assert state.cancel_requested_by == "carol"
        described = await handle.describe()
        assert described.status is WorkflowExecutionStatus.CANCELED
        kinds = [
            (e.kind, e.actor, e.verified)
            for e in state.events
            if e.kind.startswith("cancel_") or e.kind == "run_cancelled"
        ]
        assert kinds == [
            ("cancel_refused", "carol", False),
            ("cancel_refused", "oscar", True),
            ("cancel_refused", "dana", True),
            ("cancel_requested", "carol", True),
            ("run_cancelled", "carol", True),
        ]
        requested = next(e for e in state.events if e.kind == "cancel_requested")
        assert requested.message == "wrong service"
        assert ran(handle, "rights.undo") == [{"name": "ledger"}]
        assert ran(handle, "rights.high") == []

    async def test_a_cancel_through_temporal_directly_says_nobody_was_recorded(
        self, client: Client, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        plan = compile_plan(tmp_path, GATED_HIGH)
        async with fireline_workers(client, task_queue_prefix, domains=DOMAINS, registry=REGISTRY):
            handle = await start(client, task_queue_prefix, plan)
            await until_status(handle, "change", StepStatus.awaiting_approval)
            await handle.cancel()
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            state = await status(handle)
        assert state.phase is RunPhase.cancelled
        assert state.cancel_requested_by is None
        (event,) = [e for e in state.events if e.kind == "run_cancelled"]
        assert event.actor == "fireline"
        assert "through Temporal directly (nobody recorded who)" in event.message

    async def test_a_run_without_the_cancel_update_gets_temporals_cancel(
        self, client: Client, task_queue_prefix: str
    ) -> None:
        """Runs started before cancels were judged have no handler: the plain cancel."""
        async with Worker(client, task_queue=task_queue_prefix, workflows=[LegacyRunWorkflow]):
            handle = await client.start_workflow(
                LegacyRunWorkflow.run,
                id=f"legacy-{uuid.uuid4().hex[:8]}",
                task_queue=task_queue_prefix,
            )
            assert await operations.cancel(client, handle.id, "old", by="carol") is None
            with pytest.raises(WorkflowFailureError) as ended:
                await handle.result()
        assert isinstance(ended.value.cause, CancelledError)


class TestRetryReopensTheGate:
    async def test_retry_with_changed_inputs_needs_a_new_approval(
        self, client: Client, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        """Finding 3: a retry that changes an input reopens the gate with the new inputs; the
        old approval is superseded, and decide itself needs the gate's role."""
        plan = compile_plan(
            tmp_path,
            """
            name: p
            owner: team
            steps:
              - id: change
                uses: rights.high
                with: {name: web, fail: true}
                approval: {role: senior}
                on_failure: ask
            """,
        )
        async with fireline_workers(client, task_queue_prefix, domains=DOMAINS, registry=REGISTRY):
            handle = await start(client, task_queue_prefix, plan)
            await until_status(handle, "change", StepStatus.awaiting_approval)
            await approve(handle, "change", "carol")
            state = await until_status(handle, "change", StepStatus.awaiting_decision)
            current = state.step("change").inputs or {}
            new = {"name": "web", "fail": False}

            # alice is on call but not in the gate's role: refused, audited.
            with pytest.raises(WorkflowUpdateFailedError) as outsider:
                await handle.execute_update(
                    UPDATE_DECIDE,
                    Decision(
                        step="change",
                        action=DecisionAction.retry,
                        by="alice",
                        inputs={"fail": False},
                        signed=sign(handle, "change", "alice", "retry", {**current, **new}),
                    ),
                )
            assert "alice may not decide for role senior" in str(outsider.value.cause)

            await handle.execute_update(
                UPDATE_DECIDE,
                Decision(
                    step="change",
                    action=DecisionAction.retry,
                    by="erin",
                    inputs={"fail": False},
                    signed=sign(handle, "change", "erin", "retry", {**current, **new}),
                ),
            )
            state = await until_status(handle, "change", StepStatus.awaiting_approval)
            step = state.step("change")
            assert step.inputs == {"name": "web", "fail": False}
            assert [a.by for a in step.superseded] == ["carol"]
            assert step.approvals == []
            reopened = [e for e in state.events if e.kind == "gate_reopened"]
            assert len(reopened) == 1
            assert "'fail': False" in reopened[0].message
            assert len(ran(handle, "rights.high")) == 1  # only the failed first attempt

            await approve(handle, "change", "dana")
            result = await handle.result()

        assert result.phase is RunPhase.succeeded
        assert [c["fail"] for c in ran(handle, "rights.high")] == [True, False]


class TestCompensationCall:
    async def test_undo_runs_with_its_heartbeat_and_retry(
        self, client: Client, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        """Finding 6: the undo's first attempt hangs without heartbeating; its 2 s heartbeat
        timeout (not the 100 s start-to-close) ends it and the retry policy runs it again."""
        plan = compile_plan(
            tmp_path,
            """
            name: p
            owner: team
            steps:
              - id: change
                uses: rights.db
                with: {name: hang-web}
              - id: broken
                uses: rights.db
                with: {name: other, fail: true}
            """,
        )
        async with fireline_workers(client, task_queue_prefix, domains=DOMAINS, registry=REGISTRY):
            handle = await start(client, task_queue_prefix, plan)
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            state = await status(handle)

        record = state.compensations[0]
        assert record.call is not None
        assert (record.call.heartbeat_s, record.call.retry.max_attempts) == (2.0, 5)
        assert record.status == "succeeded"
        assert UNDO_ATTEMPTS[handle.id] == 2
        assert ran(handle, "rights.undo") == [{"name": "hang-web"}]


def _embargo_catalog(
    mode: str, start: datetime, end: datetime, zone: str = "Europe/Berlin"
) -> dict[str, Any]:
    local = ZoneInfo(zone)
    return CATALOG | {
        "embargoes": {
            "freeze": {
                "mode": mode,
                "domains": ["database"],
                "timezone": zone,
                "start": start.astimezone(local).replace(tzinfo=None).isoformat(),
                "end": end.astimezone(local).replace(tzinfo=None).isoformat(),
                "reason": "migration",
            }
        }
    }


GATED_DB = """
name: p
owner: team
steps:
  - id: change
    uses: rights.db
    with: {name: ledger}
    approval: {role: senior, timeout: 6h}
"""


ZONES = ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]


class TestZoneOffsets:
    """The offsets frozen at compile time give the wall-clock time the zone database gives."""

    @pytest.mark.parametrize("zone", ZONES)
    def test_local_time_matches_zoneinfo_across_the_horizon(self, zone: str) -> None:
        compiled = datetime(2026, 6, 1, tzinfo=UTC)
        window = EmbargoWindow(
            name="w",
            domains=["database"],
            timezone=zone,
            offsets=zone_offsets(zone, compiled),
            weekly=[WeeklyWindow(days=["sun"], start=time(1, 30), end=time(3, 0))],
        )
        tz = ZoneInfo(zone)
        instant = datetime(2025, 1, 1, tzinfo=UTC)
        mismatches = []
        while instant < datetime(2037, 1, 1, tzinfo=UTC):
            expected = instant.astimezone(tz).replace(tzinfo=None)
            if window.local_time(instant) != expected:
                mismatches.append(instant)
            # 7 h 13 min steps land on every hour of every weekday, transitions included.
            instant += timedelta(hours=7, minutes=13)
        assert mismatches == []
        transitions = [o.since for o in window.offsets[1:]]
        for since in transitions:
            before, after = since - timedelta(seconds=1), since
            assert window.local_time(before) == before.astimezone(tz).replace(tzinfo=None)
            assert window.local_time(after) == after.astimezone(tz).replace(tzinfo=None)
        if zone in ("America/New_York", "Europe/Berlin", "Australia/Lord_Howe"):
            assert len(transitions) >= 2 * 11
        else:
            assert transitions == []

    def test_compiled_plans_carry_the_offsets(self, tmp_path: Path) -> None:
        start = datetime(2027, 3, 31, 18, 0)
        catalog = CATALOG | {
            "embargoes": {
                "quarter-close": {
                    "domains": ["database"],
                    "timezone": "America/New_York",
                    "start": start.isoformat(),
                    "end": datetime(2027, 4, 2, 8, 0).isoformat(),
                }
            }
        }
        plan = compile_plan(tmp_path, GATED_DB, catalog)
        assert plan.rights is not None
        (window,) = plan.rights.embargoes
        assert window.offsets
        assert window.offsets[0].seconds in (-18000, -14400)
        # 18:00 EDT is 22:00 UTC.
        assert not window.active_at(datetime(2027, 3, 31, 21, 59, 59, tzinfo=UTC))
        assert window.active_at(datetime(2027, 3, 31, 22, 0, tzinfo=UTC))
        assert window.active_at(datetime(2027, 4, 2, 11, 59, 59, tzinfo=UTC))
        assert not window.active_at(datetime(2027, 4, 2, 12, 0, tzinfo=UTC))

    async def test_a_sandboxed_workflow_judges_a_named_zone_across_the_window(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        """Regression: with ``fireline.plan`` imported inside the sandbox (not passed
        through), judging a window in a named zone used to build a ``ZoneInfo`` there, a
        restricted proxy that ``astimezone`` refused with a TypeError on every task."""
        env = time_skipping_env
        now = await env.get_current_time()
        catalog = _embargo_catalog(
            "soft", now + timedelta(hours=1), now + timedelta(hours=3), zone="America/New_York"
        )
        plan = compile_plan(tmp_path, GATED_DB, catalog)
        assert plan.rights is not None
        windows = plan.rights.embargoes
        new_york = ZoneInfo("America/New_York")

        async def judged() -> list[Any]:
            return await env.client.execute_workflow(
                ZonedEmbargoWorkflow.run,
                windows,
                id=f"zoned-{uuid.uuid4().hex[:8]}",
                task_queue=task_queue_prefix,
                task_timeout=timedelta(seconds=5),
                execution_timeout=timedelta(seconds=30),
            )

        async with Worker(
            env.client,
            task_queue=task_queue_prefix,
            workflows=[ZonedEmbargoWorkflow],
            workflow_runner=SandboxedWorkflowRunner(),
        ):
            before = await judged()
            await env.sleep(timedelta(hours=1, minutes=5))
            inside_at = await env.get_current_time()
            inside = await judged()
            await env.sleep(timedelta(hours=2))
            after = await judged()

        assert [active for active, _ in before] == [False]
        assert [active for active, _ in inside] == [True]
        assert [active for active, _ in after] == [False]
        local = datetime.fromisoformat(inside[0][1])
        assert abs(local - inside_at.astimezone(new_york).replace(tzinfo=None)) < timedelta(
            minutes=1
        )


class TestEmbargo:
    """The time-skipping server moves the run's clock across the window's start."""

    async def test_soft_embargo_gate_opened_before_follows_the_window(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        env = time_skipping_env
        now = await env.get_current_time()
        catalog = _embargo_catalog("soft", now + timedelta(hours=1), now + timedelta(hours=3))
        plan = compile_plan(tmp_path, GATED_DB, catalog)
        async with fireline_workers(
            env.client, task_queue_prefix, domains=DOMAINS, registry=REGISTRY
        ):
            handle = await start(env.client, task_queue_prefix, plan)
            await until_status(handle, "change", StepStatus.awaiting_approval)
            await env.sleep(timedelta(hours=1, minutes=5))
            inside = await env.get_current_time()
            with pytest.raises(WorkflowUpdateFailedError) as senior:
                await approve(handle, "change", "carol", now=inside)
            assert "embargo 'freeze' (migration) is in force" in str(senior.value.cause)
            assert "carol is tier 2" in str(senior.value.cause)
            await approve(handle, "change", "dana", now=inside)
            result = await handle.result()

        assert result.phase is RunPhase.succeeded
        assert len(ran(handle, "rights.db")) == 1

    async def test_hard_embargo_refuses_a_change_reached_during_it(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        """Before the window the first change runs; the one reached inside it is refused and
        the run rolls back; nobody, not even Tier 3, can approve during it. The window is in
        the shipped catalog's zone (America/New_York), judged from the offsets frozen into
        the plan."""
        env = time_skipping_env
        now = await env.get_current_time()
        catalog = _embargo_catalog(
            "hard", now + timedelta(hours=1), now + timedelta(hours=3), zone="America/New_York"
        )
        plan = compile_plan(
            tmp_path,
            """
            name: p
            owner: team
            steps:
              - id: before
                uses: rights.db
                with: {name: early}
              - id: settle
                uses: core.wait
                with: {seconds: 7200}
              - id: inside
                uses: rights.db
                with: {name: late}
            """,
            catalog,
        )
        async with fireline_workers(
            env.client, task_queue_prefix, domains=DOMAINS, registry=REGISTRY
        ):
            handle = await start(env.client, task_queue_prefix, plan)
            with pytest.raises(WorkflowFailureError) as failed:
                await handle.result()
            state = await status(handle)

        assert "embargo 'freeze' (migration) forbids this change now" in str(failed.value.cause)
        assert [c["name"] for c in ran(handle, "rights.db")] == ["early"]
        assert state.phase is RunPhase.compensated
        assert any(e.kind == "embargo_refused" for e in state.events)

    async def test_hard_embargo_refuses_every_approval(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        env = time_skipping_env
        now = await env.get_current_time()
        catalog = _embargo_catalog("hard", now + timedelta(hours=1), now + timedelta(hours=3))
        plan = compile_plan(tmp_path, GATED_DB, catalog)
        async with fireline_workers(
            env.client, task_queue_prefix, domains=DOMAINS, registry=REGISTRY
        ):
            handle = await start(env.client, task_queue_prefix, plan)
            await until_status(handle, "change", StepStatus.awaiting_approval)
            await env.sleep(timedelta(hours=1, minutes=5))
            inside = await env.get_current_time()
            with pytest.raises(WorkflowUpdateFailedError) as lead:
                await approve(handle, "change", "dana", now=inside)
            assert "changes to this target are refused" in str(lead.value.cause)
            state = await status(handle)
            await handle.cancel()

        assert [e.actor for e in state.events if e.kind == "approval_refused"] == ["dana"]
        assert ran(handle, "rights.db") == []

    async def test_soft_embargo_puts_a_tier_3_gate_before_an_ungated_change(
        self, time_skipping_env: WorkflowEnvironment, task_queue_prefix: str, tmp_path: Path
    ) -> None:
        """An ungated change reached inside a soft window waits for a Tier 3 approval; a
        signed signal (fire-and-forget) from dana passes it."""
        env = time_skipping_env
        now = await env.get_current_time()
        catalog = _embargo_catalog("soft", now + timedelta(hours=1), now + timedelta(hours=5))
        plan = compile_plan(
            tmp_path,
            """
            name: p
            owner: team
            steps:
              - id: settle
                uses: core.wait
                with: {seconds: 7200}
              - id: inside
                uses: rights.db
                with: {name: late}
            """,
            catalog,
        )
        async with fireline_workers(
            env.client, task_queue_prefix, domains=DOMAINS, registry=REGISTRY
        ):
            handle = await start(env.client, task_queue_prefix, plan)
            await until_status(handle, "settle", StepStatus.running)
            await env.sleep(timedelta(hours=2, minutes=5))
            state = await until_status(handle, "inside", StepStatus.awaiting_approval)
            gate = state.step("inside").gate
            assert gate is not None
            assert (gate.role, gate.tier) == ("embargo", 3)
            assert "a Tier 3 person, an embargo is in force" in render_banner(state)
            inside = await env.get_current_time()
            with pytest.raises(WorkflowUpdateFailedError) as senior:
                await approve(handle, "inside", "carol", now=inside)
            assert "approvals need a Tier 3 person; carol is tier 2" in str(senior.value.cause)
            inputs = state.step("inside").inputs or {}
            await handle.signal(
                SIGNAL_APPROVE,
                Approval(
                    step="inside",
                    approver="dana",
                    signed=sign(handle, "inside", "dana", "approve", inputs, now=inside),
                ),
            )
            result = await handle.result()
            state = await status(handle)

        assert result.phase is RunPhase.succeeded
        assert [c["name"] for c in ran(handle, "rights.db")] == ["late"]
        assert [(a.by, a.verified) for a in state.step("inside").approvals] == [("dana", True)]
