"""PlaybookWorkflow end to end: a real dev server, real workers, a real HTTP target.

Every step here is ``core.http_request`` or ``core.http_probe`` against the recording HTTP
server in tests/support/target.py, so what the assertions read is what a remediation API
would have received, in the order it received it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError, CancelledError

from fireline import errors
from fireline.messages import (
    QUERY_STATUS,
    SA_PHASE,
    SA_PLAYBOOK,
    DecisionAction,
    RunPhase,
    RunState,
    StepStatus,
)
from tests.support.target import Reply, Target
from tests.support.workers import (
    approve,
    compile_playbooks,
    decide,
    fireline_workers,
    reject,
    start_run,
)

PHASE = SearchAttributeKey.for_keyword(SA_PHASE)

THREE_STEPS = """
name: three-steps
inputs:
  base: {type: string, required: true}
steps:
  - id: first
    uses: core.http_request
    with:
      url: "${{ inputs.base }}/first"
      compensation: {url: "${{ inputs.base }}/undo/first"}
  - id: second
    uses: core.http_request
    with:
      url: "${{ inputs.base }}/second"
      json: {from_first: "${{ steps.first.outputs.body.token }}"}
      health_url: "${{ inputs.base }}/health/second"
      compensation: {url: "${{ inputs.base }}/undo/second"}
  - id: third
    uses: core.http_request
    with:
      url: "${{ inputs.base }}/third"
      compensation: {url: "${{ inputs.base }}/undo/third"}
    postconditions:
      - check: core.http_probe
        with: {url: "${{ inputs.base }}/health/third", expect_status: [200]}
        deadline: 2s
        interval: 200ms
outputs:
  token: "${{ steps.first.outputs.body.token }}"
"""


async def status(handle: WorkflowHandle[Any, Any]) -> RunState:
    return await handle.query(QUERY_STATUS, result_type=RunState)


async def until(
    handle: WorkflowHandle[Any, Any], predicate: Callable[[RunState], bool], timeout_s: float = 30
) -> RunState:
    """Poll the status query until ``predicate`` holds (the run is observed, never timed)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        state = await status(handle)
        if predicate(state):
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"condition not reached; last state: {state.model_dump_json(indent=1)}"
            )
        await asyncio.sleep(0.1)


def waiting(step: str, for_: StepStatus) -> Callable[[RunState], bool]:
    return lambda s: s.step(step).status is for_


async def failure_of(handle: WorkflowHandle[Any, Any]) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as caught:
        await handle.result()
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError), cause
    return cause


def paths(target: Target) -> list[str]:
    return [f"{r.method} {r.path}" for r in target.hits()]


@pytest.fixture
def run_playbook(
    client: Client, task_queue_prefix: str, tmp_path: Path
) -> Callable[..., Awaitable[WorkflowHandle[Any, Any]]]:
    async def start(files: dict[str, str], name: str, inputs: dict[str, Any], **kw: Any):
        plan = compile_playbooks(tmp_path, files, name)
        return await start_run(client, task_queue_prefix, plan, inputs, **kw)

    return start


class TestHappyPath:
    async def test_steps_run_in_order_and_outputs_flow(
        self, client, task_queue_prefix, target, run_playbook
    ):
        """Each step runs once, in order, later steps see earlier outputs, checks are recorded."""
        target.route("POST", "/first", Reply(200, {"token": "t-42"}))
        target.route("POST", "/second", Reply(200, {}))
        target.route("POST", "/third", Reply(200, {}))
        target.route("GET", "/health/second", Reply(200, {}))
        target.route("GET", "/health/third", Reply(200, {}))
        async with fireline_workers(client, task_queue_prefix):
            handle = await run_playbook(
                {"p.yaml": THREE_STEPS}, "three-steps", {"base": target.base_url}
            )
            result = await handle.result()
            state = await status(handle)
            described = await handle.describe()

        assert result.phase is RunPhase.succeeded
        assert described.typed_search_attributes.get(PHASE) == "succeeded"  # the UI's filter
        assert result.outputs == {"token": "t-42"}
        assert [p for p in paths(target) if p.startswith("POST")] == [
            "POST /first",
            "POST /second",
            "POST /third",
        ]
        assert target.hits("POST", "/second")[0].json == {"from_first": "t-42"}
        keys = {r.headers["idempotency-key"] for r in target.hits("POST")}
        assert keys == {f"{handle.id}/first", f"{handle.id}/second", f"{handle.id}/third"}
        assert [s.status for s in state.steps] == [StepStatus.succeeded] * 3
        # second: the module's own postcondition (health_url); third: the playbook's.
        for step in ("second", "third"):
            checks = state.step(step).checks
            assert [(c.check, c.stage, c.satisfied) for c in checks] == [
                ("core.http_probe", "post", True)
            ]
        assert state.step("second").checks[0].observed["status"] == 200
        assert state.phase is RunPhase.succeeded
        assert state.events[0].kind == "run_started"
        assert state.events[-1].kind == "run_finished"
        # Nothing was rolled back, and the result offers the pushed undo steps to a parent.
        assert not state.compensations
        assert [c.step for c in result.compensations] == ["first", "second", "third"]


class TestFailures:
    async def test_postcondition_failure_compensates_in_exact_reverse_order(
        self, client, task_queue_prefix, target, run_playbook
    ):
        """A postcondition that never holds rolls back third, second, first — in that order."""
        for path in ("/first", "/second", "/third", "/undo/first", "/undo/second", "/undo/third"):
            target.route("POST", path, Reply(200, {"token": "x"}))
        target.route("GET", "/health/second", Reply(200, {}))
        target.route("GET", "/health/third", Reply(503, {"state": "down"}))
        async with fireline_workers(client, task_queue_prefix):
            handle = await run_playbook(
                {"p.yaml": THREE_STEPS}, "three-steps", {"base": target.base_url}
            )
            failure = await failure_of(handle)
            state = await status(handle)

        assert failure.type == errors.PLAYBOOK_COMPENSATED
        assert "postcondition" in str(failure)
        assert [p for p in paths(target) if p.startswith("POST")] == [
            "POST /first",
            "POST /second",
            "POST /third",
            "POST /undo/third",
            "POST /undo/second",
            "POST /undo/first",
        ]
        assert state.phase is RunPhase.compensated
        assert [c.step for c in state.compensations] == ["third", "second", "first"]
        assert all(c.status == "succeeded" for c in state.compensations)
        assert [s.status for s in state.steps] == [StepStatus.compensated] * 3
        post = state.step("third").checks[-1]
        assert (post.satisfied, post.observed["status"]) == (False, 503)
        assert post.attempts >= 2  # polled until its deadline, not judged once

    async def test_precondition_refusal_never_acts(
        self, client, task_queue_prefix, target, run_playbook
    ):
        """An unmet precondition stops the step before its action; earlier steps roll back."""
        playbook = """
        name: guarded
        inputs: {base: {type: string, required: true}}
        steps:
          - id: prepare
            uses: core.http_request
            with: {url: "${{ inputs.base }}/prepare", compensation: {url: "${{ inputs.base }}/unprepare"}}
          - id: act
            uses: core.http_request
            with: {url: "${{ inputs.base }}/act", compensation: {url: "${{ inputs.base }}/unact"}}
            preconditions:
              - check: core.http_probe
                with: {url: "${{ inputs.base }}/replica", json_field: lag_s, json_equals: 0}
        """
        target.route("POST", "/prepare", Reply(200))
        target.route("POST", "/unprepare", Reply(200))
        target.route("GET", "/replica", Reply(200, {"lag_s": 12}))
        async with fireline_workers(client, task_queue_prefix):
            handle = await run_playbook({"g.yaml": playbook}, "guarded", {"base": target.base_url})
            failure = await failure_of(handle)
            state = await status(handle)

        assert failure.type == errors.PLAYBOOK_COMPENSATED
        assert "precondition" in str(failure)
        assert target.hits("POST", "/act") == []
        assert paths(target) == ["POST /prepare", "GET /replica", "POST /unprepare"]
        pre = state.step("act").checks[0]
        assert (pre.stage, pre.satisfied, pre.observed.get("json_value")) == ("pre", False, 12)

    async def test_failed_compensation_surfaces_as_compensation_failed(
        self, client, task_queue_prefix, target, run_playbook
    ):
        """An undo that fails is recorded and ends the run compensation_failed; others still run."""
        playbook = """
        name: bad-undo
        inputs: {base: {type: string, required: true}}
        steps:
          - id: one
            uses: core.http_request
            with: {url: "${{ inputs.base }}/one", compensation: {url: "${{ inputs.base }}/undo/one"}}
          - id: two
            uses: core.http_request
            with: {url: "${{ inputs.base }}/two", compensation: {url: "${{ inputs.base }}/undo/two"}}
          - id: three
            uses: core.http_request
            with: {url: "${{ inputs.base }}/three"}
            approval: {role: anyone, timeout: 1h}
        """
        target.route("POST", "/one", Reply(200))
        target.route("POST", "/two", Reply(200))
        target.route("POST", "/undo/two", Reply(403, {"error": "locked by change freeze"}))
        target.route("POST", "/undo/one", Reply(200))
        target.route("POST", "/three", Reply(422, {"error": "pool drained already"}))
        async with fireline_workers(client, task_queue_prefix):
            handle = await run_playbook({"b.yaml": playbook}, "bad-undo", {"base": target.base_url})
            await until(handle, waiting("three", StepStatus.awaiting_approval))
            await approve(handle, "three", "zoe")
            failure = await failure_of(handle)
            state = await status(handle)

        assert failure.type == errors.PLAYBOOK_COMPENSATION_FAILED
        assert "NOT rolled back: two" in str(failure)
        assert state.phase is RunPhase.compensation_failed
        by_step = {c.step: c for c in state.compensations}
        assert by_step["two"].status == "failed"
        assert "403" in (by_step["two"].error or "")
        assert by_step["one"].status == "succeeded"  # the rollback went on past the failure
        assert state.step("two").status is StepStatus.compensation_failed
        assert len(target.hits("POST", "/undo/two")) == 1  # a refusal (4xx) is not retried


class TestHalt:
    async def test_halt_stops_without_rolling_back(
        self, client, task_queue_prefix, target, run_playbook
    ):
        """on_failure: halt leaves what ran in place; an out-of-range wait fails before sleeping."""
        playbook = """
        name: halting
        inputs: {base: {type: string, required: true}, delay: {type: number, default: 5}}
        steps:
          - id: one
            uses: core.http_request
            with: {url: "${{ inputs.base }}/one", compensation: {url: "${{ inputs.base }}/undo/one"}}
          - id: pause
            uses: core.wait
            on_failure: halt
            with: {seconds: "${{ inputs.delay }}"}
        """
        target.route("POST", "/one", Reply(200))
        async with fireline_workers(client, task_queue_prefix):
            handle = await run_playbook(
                {"h.yaml": playbook}, "halting", {"base": target.base_url, "delay": 10**9}
            )
            failure = await failure_of(handle)
            state = await status(handle)

        assert failure.type == errors.PLAYBOOK_FAILED
        assert "seconds must be 0..604800, got 1000000000" in str(failure)
        assert paths(target) == ["POST /one"]
        assert (state.phase, state.step("pause").status) == (RunPhase.failed, StepStatus.failed)
        assert state.step("one").status is StepStatus.succeeded
        assert not state.compensations


class TestRollbackVerification:
    PLAYBOOK = """
    name: verified
    inputs: {base: {type: string, required: true}}
    steps:
      - id: switch
        uses: core.http_request
        with: {url: "${{ inputs.base }}/switch", compensation: {url: "${{ inputs.base }}/unswitch"}}
        preconditions:
          - {check: core.http_probe, with: {url: "${{ inputs.base }}/health"}, deadline: 2s, interval: 200ms}
      - id: boom
        uses: core.http_request
        with: {url: "${{ inputs.base }}/boom"}
        approval: {role: anyone}
    """

    async def run_to_rollback(self, client, prefix, target, run_playbook):
        target.route("POST", "/switch", Reply(200))
        target.route("POST", "/unswitch", Reply(200))
        target.route("POST", "/boom", Reply(400, {"error": "no"}))
        async with fireline_workers(client, prefix):
            handle = await run_playbook(
                {"v.yaml": self.PLAYBOOK}, "verified", {"base": target.base_url}
            )
            await until(handle, waiting("boom", StepStatus.awaiting_approval))
            await approve(handle, "boom", "zoe")
            failure = await failure_of(handle)
            return failure, await status(handle)

    async def test_rollback_is_verified_by_the_forward_preconditions(
        self, client, task_queue_prefix, target, run_playbook
    ):
        """After the undo, the step's precondition is checked again and recorded as verified."""
        target.route("GET", "/health", Reply(200))
        failure, state = await self.run_to_rollback(client, task_queue_prefix, target, run_playbook)

        assert failure.type == errors.PLAYBOOK_COMPENSATED
        (record,) = state.compensations
        assert (record.step, record.status, record.verified) == ("switch", "succeeded", True)
        stages = [c.stage for c in state.step("switch").checks]
        assert stages == ["pre", "rollback"]
        assert paths(target) == [
            "GET /health",
            "POST /switch",
            "POST /boom",
            "POST /unswitch",
            "GET /health",
        ]

    async def test_an_undo_that_does_not_restore_health_is_a_failed_rollback(
        self, client, task_queue_prefix, target, run_playbook
    ):
        """The undo call succeeded but health never returns: the run ends compensation_failed."""
        target.route("GET", "/health", Reply(200), Reply(503, {"state": "still broken"}))
        failure, state = await self.run_to_rollback(client, task_queue_prefix, target, run_playbook)

        assert failure.type == errors.PLAYBOOK_COMPENSATION_FAILED
        (record,) = state.compensations
        assert (record.status, record.verified) == ("succeeded", False)
        assert "preconditions do not hold again" in (record.error or "")
        rollback = state.step("switch").checks[-1]
        assert (rollback.stage, rollback.satisfied, rollback.observed["status"]) == (
            "rollback",
            False,
            503,
        )
        assert rollback.attempts >= 2  # polled until its deadline
        assert state.phase is RunPhase.compensation_failed


class TestAskOnFailure:
    PLAYBOOK = """
    name: ask-me
    inputs: {base: {type: string, required: true}}
    steps:
      - id: before
        uses: core.http_request
        with: {url: "${{ inputs.base }}/before", compensation: {url: "${{ inputs.base }}/undo/before"}}
      - id: flaky
        uses: core.http_request
        on_failure: ask
        with: {url: "${{ inputs.base }}/wrong", compensation: {url: "${{ inputs.base }}/undo/flaky"}}
      - id: after
        uses: core.http_request
        with: {url: "${{ inputs.base }}/after", compensation: {url: "${{ inputs.base }}/undo/after"}}
    """

    def routes(self, target: Target) -> None:
        for path in ("/before", "/right", "/after", "/undo/before", "/undo/flaky", "/undo/after"):
            target.route("POST", path, Reply(200))
        target.route("POST", "/wrong", Reply(404, {"error": "no such pool"}))

    async def test_retry_with_corrected_inputs(
        self, client, task_queue_prefix, target, run_playbook
    ):
        """A failed step waits; retry with a corrected URL runs it again and the run succeeds."""
        self.routes(target)
        async with fireline_workers(client, task_queue_prefix):
            handle = await run_playbook(
                {"a.yaml": self.PLAYBOOK}, "ask-me", {"base": target.base_url}
            )
            state = await until(handle, waiting("flaky", StepStatus.awaiting_decision))
            assert state.phase is RunPhase.awaiting_decision
            assert "404" in (state.step("flaky").error or "")
            answer = await decide(
                handle,
                "flaky",
                DecisionAction.retry,
                "alice",
                inputs={"url": f"{target.base_url}/right"},
            )
            assert answer.id == "flaky"
            result = await handle.result()
            state = await status(handle)

        assert result.phase is RunPhase.succeeded
        assert [p for p in paths(target)] == [
            "POST /before",
            "POST /wrong",
            "POST /right",
            "POST /after",
        ]
        flaky = state.step("flaky")
        assert (flaky.status, flaky.attempts, flaky.inputs["url"]) == (
            StepStatus.succeeded,
            2,
            f"{target.base_url}/right",
        )
        assert target.hits("POST", "/right")[0].headers["idempotency-key"] == f"{handle.id}/flaky#2"
        assert any(e.kind == "decided_retry" and e.actor == "alice" for e in state.events)

    async def test_skip_moves_on(self, client, task_queue_prefix, target, run_playbook):
        """Skip leaves the failed step behind and runs the rest."""
        self.routes(target)
        async with fireline_workers(client, task_queue_prefix):
            handle = await run_playbook(
                {"a.yaml": self.PLAYBOOK}, "ask-me", {"base": target.base_url}
            )
            await until(handle, waiting("flaky", StepStatus.awaiting_decision))
            await decide(handle, "flaky", DecisionAction.skip, "bob")
            result = await handle.result()
            state = await status(handle)

        assert result.phase is RunPhase.succeeded
        assert paths(target) == ["POST /before", "POST /wrong", "POST /after"]
        assert state.step("flaky").status is StepStatus.skipped

    async def test_compensate_rolls_back(self, client, task_queue_prefix, target, run_playbook):
        """Choosing compensate rolls back what ran; the failed step itself had no effect."""
        self.routes(target)
        async with fireline_workers(client, task_queue_prefix):
            handle = await run_playbook(
                {"a.yaml": self.PLAYBOOK}, "ask-me", {"base": target.base_url}
            )
            await until(handle, waiting("flaky", StepStatus.awaiting_decision))
            # A decision for a step that is not waiting is refused by the update's validator,
            # before anything is recorded.
            with pytest.raises(WorkflowUpdateFailedError) as refused:
                await decide(handle, "after", DecisionAction.skip, "bob")
            assert "not waiting for a decision" in str(refused.value.cause)
            await decide(handle, "flaky", DecisionAction.compensate, "bob")
            failure = await failure_of(handle)
            state = await status(handle)

        assert failure.type == errors.PLAYBOOK_COMPENSATED
        assert "bob chose to compensate" in str(failure)
        assert paths(target) == ["POST /before", "POST /wrong", "POST /undo/before"]
        assert not any(e.kind == "decision_refused" for e in state.events)


class TestApprovalGates:
    PLAYBOOK = """
    name: gated
    inputs: {base: {type: string, required: true}}
    steps:
      - id: prepare
        uses: core.http_request
        with: {url: "${{ inputs.base }}/prepare", compensation: {url: "${{ inputs.base }}/unprepare"}}
      - id: failover
        uses: core.http_request
        with: {url: "${{ inputs.base }}/failover", compensation: {url: "${{ inputs.base }}/failback"}}
        approval: {role: sre-senior, tier: 2, timeout: 1h, min_approvals: 2}
    """

    async def test_two_distinct_approvers_open_the_gate(
        self, client, task_queue_prefix, target, run_playbook
    ):
        """The step waits for two different members of its role; others are refused, audited."""
        for path in ("/prepare", "/failover"):
            target.route("POST", path, Reply(200))
        async with fireline_workers(client, task_queue_prefix):
            handle = await run_playbook(
                {"g.yaml": self.PLAYBOOK}, "gated", {"base": target.base_url}
            )
            state = await until(handle, waiting("failover", StepStatus.awaiting_approval))
            assert state.phase is RunPhase.awaiting_approval
            assert state.step("failover").gate_deadline is not None
            described = await handle.describe()
            assert described.typed_search_attributes.get(PHASE) == "awaiting_approval"

            with pytest.raises(WorkflowUpdateFailedError) as outsider:
                await approve(handle, "failover", "mallory")
            assert "mallory is not in the catalog" in str(outsider.value.cause)
            with pytest.raises(WorkflowUpdateFailedError) as other_role:
                await approve(handle, "failover", "bob")
            assert "may not decide for role sre-senior" in str(other_role.value.cause)

            await approve(handle, "failover", "carol")
            with pytest.raises(WorkflowUpdateFailedError) as twice:
                await approve(handle, "failover", "carol")
            assert "already approved" in str(twice.value.cause)
            assert target.hits("POST", "/failover") == []  # one approval of two is not enough

            await approve(handle, "failover", "erin", "go", signal=True)
            result = await handle.result()
            state = await status(handle)

        assert result.phase is RunPhase.succeeded
        assert paths(target) == ["POST /prepare", "POST /failover"]
        approvals = state.step("failover").approvals
        assert [(a.by, a.decision) for a in approvals] == [
            ("carol", "approved"),
            ("erin", "approved"),
        ]
        # mallory is unknown to the catalog: refused by the validator, nothing recorded;
        # bob and carol are known, so their refusals are audited.
        refused = [e for e in state.events if e.kind == "approval_refused"]
        assert [e.actor for e in refused] == ["bob", "carol"]

    async def test_rejection_compensates(self, client, task_queue_prefix, target, run_playbook):
        """A rejection never runs the step and rolls back what came before."""
        for path in ("/prepare", "/unprepare"):
            target.route("POST", path, Reply(200))
        async with fireline_workers(client, task_queue_prefix):
            handle = await run_playbook(
                {"g.yaml": self.PLAYBOOK}, "gated", {"base": target.base_url}
            )
            await until(handle, waiting("failover", StepStatus.awaiting_approval))
            await reject(handle, "failover", "carol", "replica is behind")
            failure = await failure_of(handle)
            state = await status(handle)

        assert failure.type == errors.PLAYBOOK_COMPENSATED
        assert "rejected by carol (replica is behind)" in str(failure)
        assert paths(target) == ["POST /prepare", "POST /unprepare"]
        assert state.step("failover").status is StepStatus.rejected


class TestParallelAndIncludes:
    async def test_partial_failure_in_parallel_group_compensates_completed_members(
        self, client, task_queue_prefix, target, run_playbook
    ):
        """One branch failing rolls back the branches that completed and the steps before."""
        playbook = """
        name: fan-out
        inputs: {base: {type: string, required: true}}
        steps:
          - id: start
            uses: core.http_request
            with: {url: "${{ inputs.base }}/start", compensation: {url: "${{ inputs.base }}/undo/start"}}
          - id: group
            parallel:
              - id: left
                uses: core.http_request
                with: {url: "${{ inputs.base }}/left", compensation: {url: "${{ inputs.base }}/undo/left"}}
              - id: right
                uses: core.http_request
                with: {url: "${{ inputs.base }}/right", compensation: {url: "${{ inputs.base }}/undo/right"}}
          - id: never
            uses: core.http_request
            with: {url: "${{ inputs.base }}/never", compensation: {url: "${{ inputs.base }}/undo/never"}}
        """
        for path in ("/start", "/left", "/undo/start", "/undo/left", "/undo/right", "/never"):
            target.route("POST", path, Reply(200))
        target.route("POST", "/right", Reply(409, {"error": "pool is locked"}))
        async with fireline_workers(client, task_queue_prefix):
            handle = await run_playbook({"f.yaml": playbook}, "fan-out", {"base": target.base_url})
            failure = await failure_of(handle)
            state = await status(handle)

        assert failure.type == errors.PLAYBOOK_COMPENSATED
        assert "step 'right'" in str(failure)
        undo = [p for p in paths(target) if "/undo/" in p]
        assert undo == ["POST /undo/left", "POST /undo/start"]
        assert target.hits("POST", "/never") == []
        assert state.step("group").status is StepStatus.failed
        assert state.step("left").status is StepStatus.compensated
        assert state.step("right").status is StepStatus.failed

    async def test_included_playbook_runs_as_child_and_is_rolled_back_by_parent(
        self, client, task_queue_prefix, target, run_playbook
    ):
        """An include runs as a child workflow; its undo steps run when the parent fails later."""
        child = """
        name: drain
        inputs: {base: {type: string, required: true}, node: {type: string, required: true}}
        steps:
          - id: drain
            uses: core.http_request
            with:
              url: "${{ inputs.base }}/drain/${{ inputs.node }}"
              compensation: {url: "${{ inputs.base }}/undrain/${{ inputs.node }}"}
        outputs:
          drained: "${{ steps.drain.outputs.body.node }}"
        """
        parent = """
        name: parent
        inputs: {base: {type: string, required: true}}
        steps:
          - id: drain_web1
            playbook: drain
            with: {base: "${{ inputs.base }}", node: web1}
          - id: restart
            uses: core.http_request
            with:
              url: "${{ inputs.base }}/restart/${{ steps.drain_web1.outputs.drained }}"
              compensation: {url: "${{ inputs.base }}/unrestart"}
            postconditions:
              - {check: core.http_probe, with: {url: "${{ inputs.base }}/health"}, deadline: 500ms, interval: 100ms}
        """
        target.route("POST", "/drain/web1", Reply(200, {"node": "web1"}))
        target.route("POST", "/restart/web1", Reply(200))
        target.route("POST", "/unrestart", Reply(200))
        target.route("POST", "/undrain/web1", Reply(200))
        target.route("GET", "/health", Reply(500))
        async with fireline_workers(client, task_queue_prefix):
            handle = await run_playbook(
                {"child.yaml": child, "parent.yaml": parent}, "parent", {"base": target.base_url}
            )
            failure = await failure_of(handle)
            state = await status(handle)
            child = client.get_workflow_handle(f"{handle.id}.drain_web1")
            child_state = await status(child)
            child_attributes = (await child.describe()).typed_search_attributes

        assert failure.type == errors.PLAYBOOK_COMPENSATED, str(failure)
        posts = [p for p in paths(target) if p.startswith("POST")]
        assert posts == [
            "POST /drain/web1",
            "POST /restart/web1",
            "POST /unrestart",
            "POST /undrain/web1",
        ]
        assert child_state.phase is RunPhase.succeeded
        assert child_attributes.get(SearchAttributeKey.for_keyword(SA_PLAYBOOK)) == "drain"
        assert child_attributes.get(PHASE) == "succeeded"
        assert state.step("drain_web1").child_workflow_id == f"{handle.id}.drain_web1"
        assert state.step("drain_web1").status is StepStatus.compensated
        assert [c.step for c in state.compensations] == ["restart", "drain_web1/drain"]


class TestCancellation:
    async def test_cancel_mid_run_compensates_then_cancels(
        self, client, task_queue_prefix, target, run_playbook
    ):
        """Cancelling a run waiting at a gate rolls back what ran and ends it cancelled."""
        for path in ("/prepare", "/unprepare"):
            target.route("POST", path, Reply(200))
        async with fireline_workers(client, task_queue_prefix):
            handle = await run_playbook(
                {"g.yaml": TestApprovalGates.PLAYBOOK}, "gated", {"base": target.base_url}
            )
            await until(handle, waiting("failover", StepStatus.awaiting_approval))
            await handle.cancel()
            with pytest.raises(WorkflowFailureError) as caught:
                await handle.result()
            state = await status(handle)

        assert isinstance(caught.value.cause, CancelledError)
        assert paths(target) == ["POST /prepare", "POST /unprepare"]
        assert state.phase is RunPhase.cancelled
        assert state.step("failover").status is StepStatus.cancelled
        assert state.step("prepare").status is StepStatus.compensated
        assert [e.kind for e in state.events if e.kind.startswith("run_")] == [
            "run_started",
            "run_cancelled",
            "run_finished",
        ]

    async def test_cancel_during_rollback_does_not_stop_the_rollback(
        self, client, task_queue_prefix, target, run_playbook
    ):
        """A cancel that arrives mid-rollback is recorded; every undo still runs and succeeds."""
        playbook = """
        name: undo-slowly
        inputs: {base: {type: string, required: true}}
        steps:
          - id: one
            uses: core.http_request
            with: {url: "${{ inputs.base }}/one", compensation: {url: "${{ inputs.base }}/undo/one"}}
          - id: two
            uses: core.http_request
            with: {url: "${{ inputs.base }}/two", compensation: {url: "${{ inputs.base }}/undo/two"}}
          - id: three
            uses: core.http_request
            with: {url: "${{ inputs.base }}/three", compensation: {url: "${{ inputs.base }}/undo/three"}}
        """
        for path in ("/one", "/two", "/undo/one", "/undo/two"):
            target.route("POST", path, Reply(200))
        target.route("POST", "/three", Reply(400, {"error": "refused"}))
        release = target.hold("POST", "/undo/two")
        async with fireline_workers(client, task_queue_prefix):
            handle = await run_playbook(
                {"u.yaml": playbook}, "undo-slowly", {"base": target.base_url}
            )
            await target.wait_for_hits_async("POST", "/undo/two", 1)
            await handle.cancel()
            await until(handle, lambda s: any(e.kind == "cancel_during_rollback" for e in s.events))
            release.set()
            failure = await failure_of(handle)
            state = await status(handle)

        assert failure.type == errors.PLAYBOOK_COMPENSATED
        assert [p for p in paths(target) if "/undo/" in p] == ["POST /undo/two", "POST /undo/one"]
        assert [(c.step, c.status) for c in state.compensations] == [
            ("two", "succeeded"),
            ("one", "succeeded"),
        ]
        assert state.phase is RunPhase.compensated
